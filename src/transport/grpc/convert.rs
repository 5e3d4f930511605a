//! proto ⇄ domain conversion. Requests are parsed here, once, into the domain's checked types.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::app::ports::ListCursor;
use crate::app::{
    CreatePaymentCommand, CreatedPayment, ListPaymentsQuery, ReturnQuery, VerifiedReturn,
};
use crate::app::{DEFAULT_PAGE_SIZE, EventOutcome, MAX_PAGE_SIZE};
use crate::domain::{
    Customer, CustomerName, Description, Email, FieldViolation, IdempotencyKey, InvoiceId,
    Metadata, Money, Payment, PaymentId, PaymentStatus, RedirectUrl, ReturnOutcome,
    StripeCustomerId, ValidationError, Violations,
};
use crate::pb::v1 as pb;
use crate::tenants::Tenant;

/// Parses CreateInvoicePayment, reporting every bad field at once.
pub(super) fn create_command(
    request: pb::CreateInvoicePaymentRequest,
    tenant: &Tenant,
) -> Result<CreatePaymentCommand, ValidationError> {
    let mut violations = Violations::new();
    let idempotency_key = violations.check(IdempotencyKey::parse(&request.idempotency_key));
    let invoice_id = violations.check(InvoiceId::parse(&request.invoice_id));
    let money = violations.check(Money::parse(request.amount, &request.currency));
    let customer = violations.check(customer(request.customer));
    let description = violations.check(Description::parse_optional(&request.description));
    let metadata = violations.check(Metadata::parse(request.metadata));
    let allowed = tenant.allowed_redirect_origins();
    let success_url = violations.check(optional_redirect(
        "success_url",
        &request.success_url,
        allowed,
    ));
    let failure_url = violations.check(optional_redirect(
        "failure_url",
        &request.failure_url,
        allowed,
    ));
    violations.finish()?;
    match (
        idempotency_key,
        invoice_id,
        money,
        customer,
        description,
        metadata,
        success_url,
        failure_url,
    ) {
        (
            Some(idempotency_key),
            Some(invoice_id),
            Some(money),
            Some(customer),
            Some(description),
            Some(metadata),
            Some(success_url),
            Some(failure_url),
        ) => Ok(CreatePaymentCommand {
            idempotency_key,
            invoice_id,
            money,
            customer,
            description,
            metadata,
            success_url,
            failure_url,
        }),
        // `finish` returned Ok, so every field parsed; this arm only satisfies the compiler.
        _ => Err(FieldViolation::new("request", "could not be parsed").into()),
    }
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

/// Parses ListPayments.
pub(super) fn list_query(
    request: pb::ListPaymentsRequest,
) -> Result<ListPaymentsQuery, ValidationError> {
    let mut violations = Violations::new();
    let invoice_id = if request.invoice_id.is_empty() {
        Some(None)
    } else {
        violations
            .check(InvoiceId::parse(&request.invoice_id).map(|id| Some(id.as_str().to_owned())))
    };
    let status = violations.check(status_filter(request.status));
    let page_size = violations.check(page_size(request.page_size));
    let after = violations.check(decode_page_token(&request.page_token));
    violations.finish()?;
    match (invoice_id, status, page_size, after) {
        (Some(invoice_id), Some(status), Some(page_size), Some(after)) => Ok(ListPaymentsQuery {
            invoice_id,
            status,
            page_size,
            after,
        }),
        _ => Err(FieldViolation::new("request", "could not be parsed").into()),
    }
}

fn status_filter(raw: i32) -> Result<Option<PaymentStatus>, FieldViolation> {
    match pb::PaymentStatus::try_from(raw) {
        Ok(pb::PaymentStatus::Unspecified) => Ok(None),
        Ok(status) => Ok(Some(status_from_proto(status))),
        Err(_) => Err(FieldViolation::new("status", "unknown payment status")),
    }
}

fn page_size(raw: i32) -> Result<u32, FieldViolation> {
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
        cursor.created_at, cursor.payment_id
    ))
}

fn decode_page_token(token: &str) -> Result<Option<ListCursor>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldViolation::new("page_token", "not a token this service issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    let (created_at, payment_id) = rest.split_once(':').ok_or_else(invalid)?;
    let created_at = created_at.parse().map_err(|_| invalid())?;
    let payment_id = PaymentId::parse(payment_id).map_err(|_| invalid())?;
    Ok(Some(ListCursor {
        created_at,
        payment_id: payment_id.as_str().to_owned(),
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

fn status_from_proto(status: pb::PaymentStatus) -> PaymentStatus {
    match status {
        // Callers map UNSPECIFIED to "no filter" before they get here.
        pb::PaymentStatus::Unspecified | pb::PaymentStatus::Creating => PaymentStatus::Creating,
        pb::PaymentStatus::RequiresPaymentMethod => PaymentStatus::RequiresPaymentMethod,
        pb::PaymentStatus::RequiresConfirmation => PaymentStatus::RequiresConfirmation,
        pb::PaymentStatus::RequiresAction => PaymentStatus::RequiresAction,
        pb::PaymentStatus::Processing => PaymentStatus::Processing,
        pb::PaymentStatus::RequiresCapture => PaymentStatus::RequiresCapture,
        pb::PaymentStatus::Succeeded => PaymentStatus::Succeeded,
        pb::PaymentStatus::Canceled => PaymentStatus::Canceled,
    }
}

fn timestamp(millis: i64) -> prost_types::Timestamp {
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
    }
}

pub(super) fn created_to_proto(created: CreatedPayment) -> pb::CreateInvoicePaymentResponse {
    pb::CreateInvoicePaymentResponse {
        payment: Some(payment_to_proto(created.payment)),
        client_secret: created.client_secret,
        publishable_key: created.publishable_key,
        return_url: created.return_url,
        created: created.created,
    }
}

/// Checks the shape of a return query: a `pi_` id, a client secret of that intent's form, and a
/// short hint. Anything else is INVALID_ARGUMENT before any lookup.
pub(super) fn return_query(
    request: pb::VerifyReturnRequest,
) -> Result<ReturnQuery, ValidationError> {
    let mut violations = Violations::new();
    let is_id_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let intent_ok = request.payment_intent.len() <= 255
        && request
            .payment_intent
            .strip_prefix("pi_")
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(is_id_char));
    if !intent_ok {
        violations.push(FieldViolation::new(
            "payment_intent",
            "must be a PaymentIntent id (pi_…)",
        ));
    }
    let secret_ok = request.payment_intent_client_secret.len() <= 500
        && request
            .payment_intent_client_secret
            .strip_prefix(&format!("{}_secret_", request.payment_intent))
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(is_id_char));
    if !secret_ok {
        violations.push(FieldViolation::new(
            "payment_intent_client_secret",
            "must be the client secret of payment_intent",
        ));
    }
    if request.redirect_status.len() > 32
        || !request
            .redirect_status
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_')
    {
        violations.push(FieldViolation::new(
            "redirect_status",
            "must be a short lowercase word",
        ));
    }
    violations.finish()?;
    Ok(ReturnQuery {
        payment_intent: request.payment_intent,
        client_secret: request.payment_intent_client_secret,
        redirect_status: request.redirect_status,
    })
}

fn outcome_to_proto(outcome: ReturnOutcome) -> pb::ReturnOutcome {
    match outcome {
        ReturnOutcome::Succeeded => pb::ReturnOutcome::Succeeded,
        ReturnOutcome::Processing => pb::ReturnOutcome::Processing,
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
