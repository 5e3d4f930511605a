//! Bearer-token authentication of tenants.

use tonic::{Request, Status};

use crate::tenants::{Tenant, Tenants};

/// The tenant whose bearer token the request carries; `UNAUTHENTICATED` otherwise.
pub(super) fn authenticate<'t, T>(
    tenants: &'t Tenants,
    request: &Request<T>,
) -> Result<&'t Tenant, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
    tenants
        .authenticate(token)
        .ok_or_else(|| Status::unauthenticated("invalid bearer token"))
}
