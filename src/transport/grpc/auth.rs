//! Authentication: tenants (a bearer token, or a client certificate over TLS), and the return
//! gateway's own credential (a bearer token).

use tonic::{Request, Status};

use super::incoming::CoreConnectInfo;
use crate::tenants::{Tenant, Tenants, TokenHash};

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub(super) enum Caller<'t> {
    Tenant(&'t Tenant),
    /// The return gateway (`PAYBRIDGE_GATEWAY_TOKEN`): may verify any payment's return and hand
    /// in webhooks, nothing else.
    Gateway,
}

/// The credential a request carries: its bearer token when it has an `authorization` header,
/// else the client certificate its TLS connection verified.
enum Credential<'r> {
    Token(&'r str),
    ClientCert(&'r rustls::pki_types::CertificateDer<'static>),
}

fn credential<T>(request: &Request<T>) -> Result<Credential<'_>, Status> {
    if let Some(header) = request.metadata().get("authorization") {
        return header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(Credential::Token)
            .ok_or_else(|| Status::unauthenticated("missing bearer token"));
    }
    request
        .extensions()
        .get::<CoreConnectInfo>()
        .and_then(|info| info.client_cert.as_ref())
        .map(Credential::ClientCert)
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

fn tenant_of_cert<'t>(
    tenants: &'t Tenants,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> Result<&'t Tenant, Status> {
    tenants
        .authenticate_client_cert(cert)
        .ok_or_else(|| Status::unauthenticated("the client certificate is no tenant's"))
}

/// The caller of the request; `UNAUTHENTICATED` for a missing or unknown credential.
pub(super) fn authenticate_caller<'t, T>(
    tenants: &'t Tenants,
    gateway: Option<&TokenHash>,
    request: &Request<T>,
) -> Result<Caller<'t>, Status> {
    let token = match credential(request)? {
        Credential::Token(token) => token,
        Credential::ClientCert(cert) => return tenant_of_cert(tenants, cert).map(Caller::Tenant),
    };
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

/// The tenant whose bearer token (or client certificate) the request carries; `UNAUTHENTICATED`
/// otherwise (the gateway's credential included: it may not act as a tenant).
pub(super) fn authenticate<'t, T>(
    tenants: &'t Tenants,
    request: &Request<T>,
) -> Result<&'t Tenant, Status> {
    let tenant = match credential(request)? {
        Credential::Token(token) => tenants
            .authenticate(token)
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?,
        Credential::ClientCert(cert) => tenant_of_cert(tenants, cert)?,
    };
    record_tenant(tenant.id().as_str());
    Ok(tenant)
}

/// Names the caller on the call's span (its id, never its token).
fn record_tenant(tenant: &str) {
    tracing::Span::current().record("tenant", tenant);
}
