//! Every validation rule of CreateInvoicePayment, ListPayments, VerifyReturn and the payment ids: each bad
//! request is INVALID_ARGUMENT with a `BadRequest` violation naming the field, and reaches
//! neither the database nor Stripe.

use crate::support::{BILLING_TOKEN, Db, TestApp, as_tenant, create_request, violated_fields};
use paybridge::pb::v1 as pb;

type Mutation = fn(&mut pb::CreateInvoicePaymentRequest);

fn email_customer(email: &str, name: &str) -> Option<pb::Customer> {
    Some(pb::Customer {
        who: Some(pb::customer::Who::Email(email.to_owned())),
        name: name.to_owned(),
    })
}

/// (what is wrong, how to make it so, the field the violation must name)
fn bad_create_requests() -> Vec<(&'static str, Mutation, &'static str)> {
    vec![
        (
            "empty idempotency key",
            |r| r.idempotency_key.clear(),
            "idempotency_key",
        ),
        (
            "idempotency key of 256 chars",
            |r| r.idempotency_key = "k".repeat(256),
            "idempotency_key",
        ),
        (
            "idempotency key with a newline",
            |r| r.idempotency_key = "a\nb".into(),
            "idempotency_key",
        ),
        (
            "idempotency key with non-ASCII",
            |r| r.idempotency_key = "clé".into(),
            "idempotency_key",
        ),
        ("missing invoice id", |r| r.invoice_id.clear(), "invoice_id"),
        (
            "invoice id of 201 chars",
            |r| r.invoice_id = "i".repeat(201),
            "invoice_id",
        ),
        (
            "invoice id with a control char",
            |r| r.invoice_id = "inv\u{7}".into(),
            "invoice_id",
        ),
        ("zero amount", |r| r.amount = 0, "amount"),
        ("negative amount", |r| r.amount = -5, "amount"),
        (
            "amount above 99,999,999",
            |r| r.amount = 100_000_000,
            "amount",
        ),
        (
            "uppercase currency",
            |r| r.currency = "USD".into(),
            "currency",
        ),
        (
            "unknown currency",
            |r| r.currency = "xyz".into(),
            "currency",
        ),
        ("empty currency", |r| r.currency.clear(), "currency"),
        (
            "three-decimal currency not divisible by 10",
            |r| {
                r.currency = "kwd".into();
                r.amount = 1005;
            },
            "amount",
        ),
        (
            "metadata with 48 keys",
            |r| {
                r.metadata = (0..48).map(|i| (format!("k{i}"), "v".to_owned())).collect();
            },
            "metadata",
        ),
        (
            "metadata key of 41 chars",
            |r| {
                r.metadata = [("k".repeat(41), "v".to_owned())].into();
            },
            "metadata",
        ),
        (
            "metadata value of 501 chars",
            |r| {
                r.metadata = [("k".to_owned(), "v".repeat(501))].into();
            },
            "metadata",
        ),
        (
            "reserved metadata key paybridge_*",
            |r| {
                r.metadata = [("paybridge_payment_id".to_owned(), "pay_x".to_owned())].into();
            },
            "metadata",
        ),
        (
            "reserved metadata key tenant",
            |r| {
                r.metadata = [("tenant".to_owned(), "orders".to_owned())].into();
            },
            "metadata",
        ),
        (
            "description of 1001 chars",
            |r| r.description = "d".repeat(1001),
            "description",
        ),
        (
            "customer with neither id nor email",
            |r| {
                r.customer = Some(pb::Customer {
                    who: None,
                    name: String::new(),
                });
            },
            "customer",
        ),
        (
            "malformed email",
            |r| r.customer = email_customer("not-an-email", ""),
            "customer.email",
        ),
        (
            "name of 257 chars",
            |r| r.customer = email_customer("a@example.com", &"n".repeat(257)),
            "customer.name",
        ),
        (
            "malformed Stripe customer id",
            |r| {
                r.customer = Some(pb::Customer {
                    who: Some(pb::customer::Who::StripeCustomerId("cust_1".into())),
                    name: String::new(),
                });
            },
            "customer.stripe_customer_id",
        ),
        (
            "javascript: success URL",
            |r| r.success_url = "javascript:alert(1)".into(),
            "success_url",
        ),
        (
            "data: success URL",
            |r| r.success_url = "data:text/html,hi".into(),
            "success_url",
        ),
        (
            "foreign host",
            |r| r.success_url = "https://evil.example.net/paid".into(),
            "success_url",
        ),
        (
            "look-alike host",
            |r| r.success_url = "https://billing.example.com.evil.net/x".into(),
            "success_url",
        ),
        (
            "user-info trick",
            |r| r.success_url = "https://billing.example.com@evil.net/".into(),
            "success_url",
        ),
        (
            "plain http",
            |r| r.failure_url = "http://billing.example.com/failed".into(),
            "failure_url",
        ),
        (
            "another tenant's origin",
            |r| r.failure_url = "https://orders.example.com/sorry".into(),
            "failure_url",
        ),
        (
            "URL of 2049 chars",
            |r| {
                r.failure_url = format!("https://billing.example.com/{}", "a".repeat(2030));
            },
            "failure_url",
        ),
    ]
}

async fn each_bad_create_request_names_its_field_and_touches_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    for (what, mutate, field) in bad_create_requests() {
        let mut request = create_request("key-1", "inv-1");
        mutate(&mut request);
        let status = app.create(request).await.expect_err(what);
        let fields = violated_fields(&status);
        assert!(
            fields
                .iter()
                .any(|f| f == field || f.starts_with(&format!("{field}["))),
            "{what}: expected a violation of {field}, got {fields:?}"
        );
    }
    assert_eq!(app.stripe.requests().await["total"], 0);
    let listed = app
        .list(pb::ListPaymentsRequest::default())
        .await
        .expect("list");
    assert!(listed.payments.is_empty());
}

async fn several_bad_fields_are_reported_together(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut request = create_request("", "");
    request.amount = 0;
    request.currency = "EUR".into();
    let status = app.create(request).await.expect_err("invalid");
    let fields = violated_fields(&status);
    for field in ["idempotency_key", "invoice_id", "amount"] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} missing from {fields:?}"
        );
    }
}

async fn allowed_redirects_and_edge_values_are_accepted(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut request = create_request(&"k".repeat(255), "inv-edge");
    request.amount = 99_999_999;
    request.currency = "jpy".into();
    request.success_url = "https://billing.example.com/paid?from=checkout".into();
    request.failure_url = "billingapp://payment/failed".into();
    request.metadata = (0..47)
        .map(|i| (format!("k{i}"), "v".repeat(500)))
        .collect();
    let answer = app.create(request).await.expect("valid");
    assert_eq!(answer.payment.expect("payment").currency, "jpy");
}

async fn bad_ids_page_sizes_and_tokens_are_invalid_arguments(db: Db) {
    let app = TestApp::spawn(db).await;
    let status = app
        .get("not-a-payment-id", false)
        .await
        .expect_err("bad id");
    assert_eq!(violated_fields(&status), ["id"]);
    let status = app.cancel("").await.expect_err("empty id");
    assert_eq!(violated_fields(&status), ["id"]);
    for (request, field) in [
        (
            pb::ListPaymentsRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListPaymentsRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListPaymentsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListPaymentsRequest {
                status: 99,
                ..Default::default()
            },
            "status",
        ),
    ] {
        let status = app
            .client
            .clone()
            .list_payments(as_tenant(BILLING_TOKEN, request))
            .await
            .expect_err("invalid");
        assert_eq!(violated_fields(&status), [field]);
    }
}

/// The same rules as the gateway's check of the browser's query, for callers that skip the gateway.
async fn a_return_query_of_the_wrong_shape_names_its_fields(db: Db) {
    let app = TestApp::spawn(db).await;
    let intent = "pi_1";
    for (request, fields) in [
        (
            pb::VerifyReturnRequest {
                payment_intent: "pay_1".into(),
                payment_intent_client_secret: "secret".into(),
                redirect_status: "Succeeded!".into(),
            },
            vec![
                "payment_intent",
                "payment_intent_client_secret",
                "redirect_status",
            ],
        ),
        (
            pb::VerifyReturnRequest {
                payment_intent: intent.into(),
                payment_intent_client_secret: format!("{intent}_secret_{}", "a".repeat(500)),
                redirect_status: "succeeded".into(),
            },
            vec!["payment_intent_client_secret"],
        ),
    ] {
        let status = app
            .client
            .clone()
            .verify_return(as_tenant(BILLING_TOKEN, request))
            .await
            .expect_err("invalid");
        assert_eq!(violated_fields(&status), fields);
    }
}

on_both_databases!(
    a_return_query_of_the_wrong_shape_names_its_fields,
    each_bad_create_request_names_its_field_and_touches_nothing,
    several_bad_fields_are_reported_together,
    allowed_redirects_and_edge_values_are_accepted,
    bad_ids_page_sizes_and_tokens_are_invalid_arguments,
);
