//! Stripe events signed the way Stripe signs them, built from the intent the fake holds, and
//! handed to the core as the gateway would.

use paybridge::adapters::stripe::webhook::sign;
use paybridge::pb::v1 as pb;
use serde_json::{Value, json};

use super::{GATEWAY_TOKEN, TestApp, WEBHOOK_SECRET, as_tenant};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An event envelope around `object`, as Stripe sends it.
pub fn event(id: &str, event_type: &str, created: i64, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "object": "event",
        "api_version": "2026-09-30.endive",
        "created": created,
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
    }))
    .expect("json")
}

impl TestApp {
    /// Hands a payload and signature header to HandleStripeEvent with the gateway's credential.
    pub async fn deliver(
        &self,
        payload: &[u8],
        signature: &str,
    ) -> Result<pb::HandleStripeEventResponse, tonic::Status> {
        self.client
            .clone()
            .handle_stripe_event(as_tenant(
                GATEWAY_TOKEN,
                pb::HandleStripeEventRequest {
                    payload: payload.to_vec(),
                    stripe_signature: signature.to_owned(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Signs with the test secret at `created` and delivers.
    pub async fn deliver_signed(
        &self,
        payload: &[u8],
        created: i64,
    ) -> Result<pb::HandleStripeEventResponse, tonic::Status> {
        self.deliver(payload, &sign(payload, WEBHOOK_SECRET, created))
            .await
    }
}
