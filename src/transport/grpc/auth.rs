//! Bearer-token authentication: tenants, and the return gateway's own credential.

use tonic::{Request, Status};

use crate::tenants::{Tenant, Tenants, TokenHash};

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub(super) enum Caller<'t> {
    Tenant(&'t Tenant),
    /// The return gateway (`PAYBRIDGE_GATEWAY_TOKEN`): may verify any payment's return and hand
    /// in webhooks, nothing else.
    Gateway,
}

fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

/// The caller of the request; `UNAUTHENTICATED` for a missing or unknown token.
pub(super) fn authenticate_caller<'t, T>(
    tenants: &'t Tenants,
    gateway: Option<&TokenHash>,
    request: &Request<T>,
) -> Result<Caller<'t>, Status> {
    let token = bearer_token(request)?;
    // Both checks always run, so the answer's timing does not tell which kind of token it was.
    let tenant = tenants.authenticate(token);
    let is_gateway = gateway.is_some_and(|hash| hash.matches(&TokenHash::of_token(token)));
    match (tenant, is_gateway) {
        (Some(tenant), _) => {
            record_tenant(tenant.id().as_str());
            Ok(Caller::Tenant(tenant))
        }
        (None, true) => {
            record_tenant("gateway");
            Ok(Caller::Gateway)
        }
        (None, false) => Err(Status::unauthenticated("invalid bearer token")),
    }
}

/// The tenant whose bearer token the request carries; `UNAUTHENTICATED` otherwise (the gateway's
/// credential included: it may not act as a tenant).
pub(super) fn authenticate<'t, T>(
    tenants: &'t Tenants,
    request: &Request<T>,
) -> Result<&'t Tenant, Status> {
    let token = bearer_token(request)?;
    let tenant = tenants
        .authenticate(token)
        .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
    record_tenant(tenant.id().as_str());
    Ok(tenant)
}

/// Names the caller on the call's span (its id, never its token).
fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}
