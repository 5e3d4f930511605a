//! Tenants authenticate with bearer tokens and see only their own payments.

use crate::support::{BILLING_TOKEN, Db, ORDERS_TOKEN, TestApp, as_tenant, create_request};
use paybridge::pb::v1 as pb;
use tonic::Code;

async fn calls_without_a_valid_token_are_unauthenticated(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut client = app.client.clone();
    let status = client
        .create_invoice_payment(tonic::Request::new(create_request("k", "inv")))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    for header in [
        "Bearer wrong-token",
        "Bearer ",
        BILLING_TOKEN,
        "Basic YmlsbGluZw==",
    ] {
        let mut request = tonic::Request::new(pb::ListPaymentsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", header.parse().expect("header"));
        let status = client.list_payments(request).await.expect_err(header);
        assert_eq!(status.code(), Code::Unauthenticated, "{header}");
    }
    assert_eq!(app.stripe.requests().await["total"], 0);
}

async fn another_tenants_payment_is_not_found(db: Db) {
    let app = TestApp::spawn(db).await;
    let answer = app
        .create(create_request("k", "inv-1"))
        .await
        .expect("created");
    let id = answer.payment.expect("payment").id;
    let mut client = app.client.clone();

    let status = client
        .get_payment(as_tenant(
            ORDERS_TOKEN,
            pb::GetPaymentRequest {
                id: id.clone(),
                refresh: true,
            },
        ))
        .await
        .expect_err("hidden");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .cancel_payment(as_tenant(
            ORDERS_TOKEN,
            pb::CancelPaymentRequest { id: id.clone() },
        ))
        .await
        .expect_err("hidden");
    assert_eq!(status.code(), Code::NotFound);
    let listed = client
        .list_payments(as_tenant(ORDERS_TOKEN, pb::ListPaymentsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.payments.is_empty());

    // A payment id that exists nowhere answers the same way.
    let status = app
        .get("pay_aaaaaaaaaaaaaaaaaaaaaaaaaa", false)
        .await
        .expect_err("absent");
    assert_eq!(status.code(), Code::NotFound);
    // And the owner still sees it, uncancelled.
    let payment = app.get(&id, false).await.expect("own payment");
    assert_eq!(payment.status(), pb::PaymentStatus::RequiresPaymentMethod);
}

async fn tenants_have_separate_idempotency_keys_and_invoices(db: Db) {
    let app = TestApp::spawn(db).await;
    let billing = app
        .create(create_request("same-key", "inv-1"))
        .await
        .expect("billing");
    let orders = app
        .client
        .clone()
        .create_invoice_payment(as_tenant(ORDERS_TOKEN, create_request("same-key", "inv-1")))
        .await
        .expect("orders")
        .into_inner();
    assert!(billing.created && orders.created);
    assert_ne!(
        billing.payment.expect("p").id,
        orders.payment.expect("p").id
    );
}

on_both_databases!(
    calls_without_a_valid_token_are_unauthenticated,
    another_tenants_payment_is_not_found,
    tenants_have_separate_idempotency_keys_and_invoices,
);
