//! proto ⇄ domain conversion. Requests are parsed here, once, into the domain's checked types.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::app::ports::ListCursor;
use crate::app::{
    CaptureCommand, CreatePaymentCommand, CreatedPayment, HostedPage, IssuedLink,
    ListPaymentsQuery, VerifiedReturn,
};
use crate::app::{DEFAULT_PAGE_SIZE, EventOutcome, MAX_PAGE_SIZE};
use crate::domain::{
    Amount, CancellationReason, CaptureMethod, Customer, CustomerName, Description, Dispute,
    DisputeStatus, Email, FieldViolation, IdempotencyKey, InvoiceId, LinkTtl, Metadata, Money,
    Payment, PaymentId, PaymentStatus, RedirectUrl, ReturnOutcome, ReturnQuery, ReturnQueryField,
    StripeCustomerId, ValidationError,
};
use crate::pb::v1 as pb;
use crate::tenants::Tenant;

/// Parses CreateInvoicePayment, reporting every bad field at once.
pub(super) fn create_command(
    request: pb::CreateInvoicePaymentRequest,
    tenant: &Tenant,
) -> Result<CreatePaymentCommand, ValidationError> {
    let allowed = tenant.allowed_redirect_origins();
    match (
        IdempotencyKey::parse(&request.idempotency_key),
        InvoiceId::parse(&request.invoice_id),
        Money::parse(request.amount, &request.currency),
        customer(request.customer),
        Description::parse_optional(&request.description),
        Metadata::parse(request.metadata),
        optional_redirect("success_url", &request.success_url, allowed),
        optional_redirect("failure_url", &request.failure_url, allowed),
        capture_method(request.capture_method),
        hosted_page(request.hosted_page, request.hosted_page_ttl),
    ) {
        (
            Ok(idempotency_key),
            Ok(invoice_id),
            Ok(money),
            Ok(customer),
            Ok(description),
            Ok(metadata),
            Ok(success_url),
            Ok(failure_url),
            Ok(capture_method),
            Ok(hosted_page),
        ) => Ok(CreatePaymentCommand {
            idempotency_key,
            invoice_id,
            money,
            customer,
            description,
            metadata,
            success_url,
            failure_url,
            capture_method,
            hosted_page,
        }),
        (
            idempotency_key,
            invoice_id,
            money,
            customer,
            description,
            metadata,
            success_url,
            failure_url,
            capture_method,
            hosted_page,
        ) => Err(ValidationError::collect([
            idempotency_key.err(),
            invoice_id.err(),
            money.err(),
            customer.err(),
            description.err(),
            metadata.err(),
            success_url.err(),
            failure_url.err(),
            capture_method.err(),
            hosted_page.err(),
        ])),
    }
}

/// Unspecified is automatic.
fn capture_method(raw: i32) -> Result<CaptureMethod, FieldViolation> {
    match pb::CaptureMethod::try_from(raw) {
        Ok(pb::CaptureMethod::Unspecified | pb::CaptureMethod::Automatic) => {
            Ok(CaptureMethod::Automatic)
        }
        Ok(pb::CaptureMethod::Manual) => Ok(CaptureMethod::Manual),
        Err(_) => Err(FieldViolation::new(
            "capture_method",
            "unknown capture method",
        )),
    }
}

fn capture_method_to_proto(method: CaptureMethod) -> pb::CaptureMethod {
    match method {
        CaptureMethod::Automatic => pb::CaptureMethod::Automatic,
        CaptureMethod::Manual => pb::CaptureMethod::Manual,
    }
}

fn cancellation_reason_to_proto(reason: Option<CancellationReason>) -> pb::CancellationReason {
    match reason {
        None => pb::CancellationReason::Unspecified,
        Some(CancellationReason::Requested) => pb::CancellationReason::Requested,
        Some(CancellationReason::AuthorizationExpired) => {
            pb::CancellationReason::AuthorizationExpired
        }
        Some(CancellationReason::Other) => pb::CancellationReason::Other,
    }
}

fn dispute_status_to_proto(status: DisputeStatus) -> pb::DisputeStatus {
    match status {
        DisputeStatus::WarningNeedsResponse => pb::DisputeStatus::WarningNeedsResponse,
        DisputeStatus::WarningUnderReview => pb::DisputeStatus::WarningUnderReview,
        DisputeStatus::WarningClosed => pb::DisputeStatus::WarningClosed,
        DisputeStatus::NeedsResponse => pb::DisputeStatus::NeedsResponse,
        DisputeStatus::UnderReview => pb::DisputeStatus::UnderReview,
        DisputeStatus::Won => pb::DisputeStatus::Won,
        DisputeStatus::Lost => pb::DisputeStatus::Lost,
        DisputeStatus::Prevented => pb::DisputeStatus::Prevented,
    }
}

fn dispute_to_proto(dispute: Dispute) -> pb::Dispute {
    pb::Dispute {
        status: dispute_status_to_proto(dispute.status).into(),
        evidence_due_by: dispute.evidence_due_by.map(timestamp),
        id: dispute.id,
        reason: dispute.reason,
        amount: dispute.amount,
        is_charge_refundable: dispute.is_charge_refundable,
    }
}

/// Parses CapturePayment.
pub(super) fn capture_command(
    request: pb::CapturePaymentRequest,
) -> Result<CaptureCommand, ValidationError> {
    let amount = if request.amount == 0 {
        Ok(None)
    } else {
        Amount::parse(request.amount).map(Some)
    };
    match (
        IdempotencyKey::parse(&request.idempotency_key),
        PaymentId::parse_field(&request.payment_id, "payment_id"),
        amount,
    ) {
        (Ok(idempotency_key), Ok(payment_id), Ok(amount)) => Ok(CaptureCommand {
            idempotency_key,
            payment_id,
            amount,
        }),
        (key, id, amount) => Err(ValidationError::collect([
            key.err(),
            id.err(),
            amount.err(),
        ])),
    }
}

/// `hosted_page` with its optional `hosted_page_ttl`; a TTL without `hosted_page` is refused.
fn hosted_page(
    on: bool,
    ttl: Option<prost_types::Duration>,
) -> Result<Option<LinkTtl>, FieldViolation> {
    match (on, ttl) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(FieldViolation::new(
            "hosted_page_ttl",
            "is only for a request with hosted_page",
        )),
        (true, ttl) => {
            LinkTtl::parse("hosted_page_ttl", ttl.map(|d| (d.seconds, d.nanos))).map(Some)
        }
    }
}

/// CreatePaymentLink's `ttl`.
pub(super) fn link_ttl(ttl: Option<prost_types::Duration>) -> Result<LinkTtl, FieldViolation> {
    LinkTtl::parse("ttl", ttl.map(|d| (d.seconds, d.nanos)))
}

fn customer(customer: Option<pb::Customer>) -> Result<Option<Customer>, FieldViolation> {
    let Some(customer) = customer else {
        return Ok(None);
    };
    match customer.who {
        None => Err(FieldViolation::new(
            "customer",
            "set either stripe_customer_id or email",
        )),
        Some(pb::customer::Who::StripeCustomerId(id)) => {
            if !customer.name.is_empty() {
                return Err(FieldViolation::new(
                    "customer.name",
                    "only used with customer.email; the Stripe customer already has a name",
                ));
            }
            Ok(Some(Customer::Existing(StripeCustomerId::parse(&id)?)))
        }
        Some(pb::customer::Who::Email(email)) => Ok(Some(Customer::New {
            email: Email::parse(&email)?,
            name: CustomerName::parse_optional(&customer.name)?,
        })),
    }
}

fn optional_redirect(
    field: &str,
    raw: &str,
    allowed: &[crate::domain::RedirectOrigin],
) -> Result<Option<RedirectUrl>, FieldViolation> {
    if raw.is_empty() {
        return Ok(None);
    }
    RedirectUrl::parse(field, raw, allowed).map(Some)
}

/// Parses a payment id from a request's `id` field.
pub(super) fn payment_id(raw: &str) -> Result<PaymentId, ValidationError> {
    PaymentId::parse(raw).map_err(ValidationError::from)
}

/// Parses ListPayments, reporting every bad field at once.
pub(super) fn list_query(
    request: pb::ListPaymentsRequest,
) -> Result<ListPaymentsQuery, ValidationError> {
    let invoice_id = if request.invoice_id.is_empty() {
        Ok(None)
    } else {
        InvoiceId::parse(&request.invoice_id).map(|id| Some(id.as_str().to_owned()))
    };
    match (
        invoice_id,
        status_filter(request.status),
        page_size(request.page_size),
        decode_page_token(&request.page_token),
    ) {
        (Ok(invoice_id), Ok(status), Ok(page_size), Ok(after)) => Ok(ListPaymentsQuery {
            invoice_id,
            status,
            page_size,
            after,
        }),
        (invoice_id, status, page_size, after) => Err(ValidationError::collect([
            invoice_id.err(),
            status.err(),
            page_size.err(),
            after.err(),
        ])),
    }
}

/// UNSPECIFIED means "any status".
fn status_filter(raw: i32) -> Result<Option<PaymentStatus>, FieldViolation> {
    pb::PaymentStatus::try_from(raw)
        .map(status_from_proto)
        .map_err(|_| FieldViolation::new("status", "unknown payment status"))
}

pub(super) fn page_size(raw: i32) -> Result<u32, FieldViolation> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1.. if raw as u32 <= MAX_PAGE_SIZE => Ok(raw as u32),
        _ => Err(FieldViolation::new(
            "page_size",
            format!("must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
        )),
    }
}

const PAGE_TOKEN_PREFIX: &str = "v1:";

/// The opaque token for the page after `cursor`.
pub(super) fn encode_page_token(cursor: &ListCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{PAGE_TOKEN_PREFIX}{}:{}",
        cursor.created_at, cursor.id
    ))
}

fn decode_page_token(token: &str) -> Result<Option<ListCursor>, FieldViolation> {
    decode_cursor(token, |id| PaymentId::parse(id).is_ok())
}

/// Reads a token of [`encode_page_token`] whose id `well_formed` accepts.
pub(super) fn decode_cursor(
    token: &str,
    well_formed: fn(&str) -> bool,
) -> Result<Option<ListCursor>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldViolation::new("page_token", "not a token this service issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    let (created_at, id) = rest.split_once(':').ok_or_else(invalid)?;
    let created_at = created_at.parse().map_err(|_| invalid())?;
    if !well_formed(id) {
        return Err(invalid());
    }
    Ok(Some(ListCursor {
        created_at,
        id: id.to_owned(),
    }))
}

pub(super) fn status_to_proto(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Creating => pb::PaymentStatus::Creating,
        PaymentStatus::RequiresPaymentMethod => pb::PaymentStatus::RequiresPaymentMethod,
        PaymentStatus::RequiresConfirmation => pb::PaymentStatus::RequiresConfirmation,
        PaymentStatus::RequiresAction => pb::PaymentStatus::RequiresAction,
        PaymentStatus::Processing => pb::PaymentStatus::Processing,
        PaymentStatus::RequiresCapture => pb::PaymentStatus::RequiresCapture,
        PaymentStatus::Succeeded => pb::PaymentStatus::Succeeded,
        PaymentStatus::Canceled => pb::PaymentStatus::Canceled,
    }
}

/// `None` for UNSPECIFIED.
fn status_from_proto(status: pb::PaymentStatus) -> Option<PaymentStatus> {
    match status {
        pb::PaymentStatus::Unspecified => None,
        pb::PaymentStatus::Creating => Some(PaymentStatus::Creating),
        pb::PaymentStatus::RequiresPaymentMethod => Some(PaymentStatus::RequiresPaymentMethod),
        pb::PaymentStatus::RequiresConfirmation => Some(PaymentStatus::RequiresConfirmation),
        pb::PaymentStatus::RequiresAction => Some(PaymentStatus::RequiresAction),
        pb::PaymentStatus::Processing => Some(PaymentStatus::Processing),
        pb::PaymentStatus::RequiresCapture => Some(PaymentStatus::RequiresCapture),
        pb::PaymentStatus::Succeeded => Some(PaymentStatus::Succeeded),
        pb::PaymentStatus::Canceled => Some(PaymentStatus::Canceled),
    }
}

pub(super) fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub(super) fn payment_to_proto(payment: Payment) -> pb::Payment {
    pb::Payment {
        status: status_to_proto(payment.status).into(),
        created_at: Some(timestamp(payment.created_at)),
        updated_at: Some(timestamp(payment.updated_at)),
        last_payment_error: payment.last_payment_error.map(|error| pb::PaymentError {
            code: error.code.unwrap_or_default(),
            message: error.message.unwrap_or_default(),
        }),
        metadata: payment.metadata.into_iter().collect(),
        id: payment.id,
        tenant: payment.tenant,
        invoice_id: payment.invoice_id,
        amount: payment.amount,
        currency: payment.currency,
        stripe_payment_intent_id: payment.stripe_payment_intent_id.unwrap_or_default(),
        stripe_customer_id: payment.stripe_customer_id.unwrap_or_default(),
        description: payment.description.unwrap_or_default(),
        amount_received: payment.amount_received,
        amount_refunded: payment.amount_refunded,
        amount_refund_pending: payment.amount_refund_pending,
        capture_method: capture_method_to_proto(payment.capture_method).into(),
        amount_capturable: payment.amount_capturable,
        capture_before: payment.capture_before.map(timestamp),
        dispute: payment.dispute.map(dispute_to_proto),
        cancellation_reason: cancellation_reason_to_proto(payment.cancellation_reason).into(),
    }
}

pub(super) fn created_to_proto(created: CreatedPayment) -> pb::CreateInvoicePaymentResponse {
    pb::CreateInvoicePaymentResponse {
        payment: Some(payment_to_proto(created.payment)),
        client_secret: created.client_secret,
        publishable_key: created.publishable_key,
        return_url: created.return_url,
        created: created.created,
        hosted_url_expires_at: created.link.as_ref().map(|link| timestamp(link.expires_at)),
        hosted_url: created.link.map(|link| link.url).unwrap_or_default(),
    }
}

pub(super) fn link_to_proto(link: IssuedLink) -> pb::PaymentLink {
    pb::PaymentLink {
        expires_at: Some(timestamp(link.expires_at)),
        url: link.url,
    }
}

/// The page of a link, with what the tenants file says of its tenant.
pub(super) fn page_to_proto(page: HostedPage, tenant: Option<&Tenant>) -> pb::PaymentPage {
    pb::PaymentPage {
        tenant_display_name: tenant
            .map_or(page.payment.tenant.as_str(), |t| t.display_name())
            .to_owned(),
        tenant_logo_url: tenant
            .and_then(Tenant::logo_url)
            .map(|url| url.as_str().to_owned())
            .unwrap_or_default(),
        payment: Some(payment_to_proto(page.payment)),
        client_secret: page.client_secret.unwrap_or_default(),
        publishable_key: page.publishable_key,
        return_url: page.return_url,
    }
}

/// Checks the shape of a return query (the rules of [`ReturnQuery`]); anything else is
/// INVALID_ARGUMENT before any lookup.
pub(super) fn return_query(
    request: pb::VerifyReturnRequest,
) -> Result<ReturnQuery, ValidationError> {
    ReturnQuery::parse(
        &request.payment_intent,
        &request.payment_intent_client_secret,
        &request.redirect_status,
    )
    .map_err(|refused| ValidationError {
        violations: refused
            .into_iter()
            .map(ReturnQueryField::violation)
            .collect(),
    })
}

fn outcome_to_proto(outcome: ReturnOutcome) -> pb::ReturnOutcome {
    match outcome {
        ReturnOutcome::Succeeded => pb::ReturnOutcome::Succeeded,
        ReturnOutcome::Processing => pb::ReturnOutcome::Processing,
        ReturnOutcome::Authorized => pb::ReturnOutcome::Authorized,
        ReturnOutcome::Failed => pb::ReturnOutcome::Failed,
        ReturnOutcome::Canceled => pb::ReturnOutcome::Canceled,
        ReturnOutcome::Rejected => pb::ReturnOutcome::Rejected,
    }
}

pub(super) fn verified_return_to_proto(verified: VerifiedReturn) -> pb::VerifyReturnResponse {
    pb::VerifyReturnResponse {
        payment: verified.payment.map(payment_to_proto),
        outcome: outcome_to_proto(verified.outcome).into(),
        redirect_url: verified.redirect_url.unwrap_or_default(),
    }
}

pub(super) fn event_outcome_to_proto(outcome: EventOutcome) -> pb::StripeEventResult {
    match outcome {
        EventOutcome::Applied => pb::StripeEventResult::Applied,
        EventOutcome::Duplicate => pb::StripeEventResult::Duplicate,
        EventOutcome::Ignored(_) => pb::StripeEventResult::Ignored,
    }
}
