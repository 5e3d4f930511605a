//! The `paybridge.v1.PaymentService` implementation: authenticate, parse, call the use case,
//! convert the answer.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::{Caller, authenticate, authenticate_caller};
use super::{convert, event_convert, refund_convert};
use crate::app::{Payments, ReturnCaller};
use crate::pb::v1 as pb;
use crate::tenants::{LiveTenants, TokenHash};

/// The gRPC face of [`Payments`].
#[derive(Debug, Clone)]
pub struct PaymentGrpcService {
    payments: Arc<Payments>,
    tenants: LiveTenants,
    /// SHA-256 of the return gateway's token; `None` when no gateway is configured.
    gateway_token: Option<TokenHash>,
}

impl PaymentGrpcService {
    pub fn new(
        payments: Arc<Payments>,
        tenants: LiveTenants,
        gateway_token: Option<TokenHash>,
    ) -> Self {
        PaymentGrpcService {
            payments,
            tenants,
            gateway_token,
        }
    }
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentGrpcService {
    async fn create_invoice_payment(
        &self,
        request: Request<pb::CreateInvoicePaymentRequest>,
    ) -> Result<Response<pb::CreateInvoicePaymentResponse>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let command = convert::create_command(request.into_inner(), tenant)
            .map_err(crate::app::AppError::from)?;
        let created = self
            .payments
            .create_invoice_payment(tenant, command)
            .await?;
        let created = convert::created_to_proto(created);
        if let Some(payment) = &created.payment {
            record_payment(payment);
        }
        Ok(Response::new(created))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let request = request.into_inner();
        let id = convert::payment_id(&request.id).map_err(crate::app::AppError::from)?;
        let payment = self
            .payments
            .get_payment(tenant.id().as_str(), id.as_str(), request.refresh)
            .await?;
        let payment = convert::payment_to_proto(payment);
        record_payment(&payment);
        Ok(Response::new(payment))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let query =
            convert::list_query(request.into_inner()).map_err(crate::app::AppError::from)?;
        let page = self
            .payments
            .list_payments(tenant.id().as_str(), query)
            .await?;
        Ok(Response::new(pb::ListPaymentsResponse {
            next_page_token: page
                .next
                .as_ref()
                .map(convert::encode_page_token)
                .unwrap_or_default(),
            payments: page
                .payments
                .into_iter()
                .map(convert::payment_to_proto)
                .collect(),
        }))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let id = convert::payment_id(&request.get_ref().id).map_err(crate::app::AppError::from)?;
        let payment = self
            .payments
            .cancel_payment(tenant.id().as_str(), id.as_str())
            .await?;
        let payment = convert::payment_to_proto(payment);
        record_payment(&payment);
        Ok(Response::new(payment))
    }

    async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let command =
            convert::capture_command(request.into_inner()).map_err(crate::app::AppError::from)?;
        let payment = self
            .payments
            .capture_payment(tenant.id().as_str(), command)
            .await?;
        let payment = convert::payment_to_proto(payment);
        record_payment(&payment);
        Ok(Response::new(payment))
    }

    async fn verify_return(
        &self,
        request: Request<pb::VerifyReturnRequest>,
    ) -> Result<Response<pb::VerifyReturnResponse>, Status> {
        let tenants = self.tenants.current();
        let caller = authenticate_caller(&tenants, self.gateway_token.as_ref(), &request)?;
        let caller = match caller {
            Caller::Gateway => ReturnCaller::Gateway,
            Caller::Tenant(tenant) => ReturnCaller::Tenant(tenant.id().as_str()),
        };
        let query =
            convert::return_query(request.into_inner()).map_err(crate::app::AppError::from)?;
        let verified = self.payments.verify_return(caller, &query).await?;
        let verified = convert::verified_return_to_proto(verified);
        if let Some(payment) = &verified.payment {
            record_payment(payment);
        }
        Ok(Response::new(verified))
    }

    async fn handle_stripe_event(
        &self,
        request: Request<pb::HandleStripeEventRequest>,
    ) -> Result<Response<pb::HandleStripeEventResponse>, Status> {
        let tenants = self.tenants.current();
        match authenticate_caller(&tenants, self.gateway_token.as_ref(), &request)? {
            Caller::Gateway => {}
            Caller::Tenant(_) => {
                return Err(Status::permission_denied(
                    "only the return gateway hands in Stripe events",
                ));
            }
        }
        let request = request.into_inner();
        let (event_id, outcome) = self
            .payments
            .handle_stripe_event(&request.payload, &request.stripe_signature)
            .await?;
        Ok(Response::new(pb::HandleStripeEventResponse {
            event_id,
            result: convert::event_outcome_to_proto(outcome).into(),
        }))
    }

    type WatchPaymentStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Payment, Status>> + Send>>;

    async fn watch_payment(
        &self,
        request: Request<pb::WatchPaymentRequest>,
    ) -> Result<Response<Self::WatchPaymentStream>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let id = convert::payment_id(&request.get_ref().id).map_err(crate::app::AppError::from)?;
        let payments = self
            .payments
            .watch_payment(tenant.id().as_str(), id.as_str())
            .await?;
        let stream = futures::StreamExt::map(payments, |item| {
            item.map(convert::payment_to_proto).map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::RefundPaymentResponse>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let command = refund_convert::refund_command(request.into_inner())
            .map_err(crate::app::AppError::from)?;
        let answer = self
            .payments
            .refund_payment(tenant.id().as_str(), command)
            .await?;
        Ok(Response::new(pb::RefundPaymentResponse {
            refund: Some(record_refund(refund_convert::refund_to_proto(
                answer.refund,
            ))),
            created: answer.created,
        }))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let request = request.into_inner();
        let id = refund_convert::refund_id(&request.id).map_err(crate::app::AppError::from)?;
        let refund = self
            .payments
            .get_refund(tenant.id().as_str(), id.as_str(), request.refresh)
            .await?;
        Ok(Response::new(record_refund(
            refund_convert::refund_to_proto(refund),
        )))
    }

    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Result<Response<pb::ListRefundsResponse>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let query = refund_convert::list_refunds_query(request.into_inner())
            .map_err(crate::app::AppError::from)?;
        let page = self
            .payments
            .list_refunds(tenant.id().as_str(), query)
            .await?;
        Ok(Response::new(pb::ListRefundsResponse {
            next_page_token: page
                .next
                .as_ref()
                .map(convert::encode_page_token)
                .unwrap_or_default(),
            refunds: page
                .refunds
                .into_iter()
                .map(refund_convert::refund_to_proto)
                .collect(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let query = event_convert::list_events_query(request.into_inner())
            .map_err(crate::app::AppError::from)?;
        let page = self
            .payments
            .list_events(tenant.id().as_str(), query)
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page
                .events
                .into_iter()
                .map(event_convert::event_to_proto)
                .collect(),
            next_cursor: page.next_cursor,
        }))
    }

    type WatchEventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let request = request.into_inner();
        let types = event_convert::event_types(&request.types).map_err(|violation| {
            crate::app::AppError::from(crate::domain::ValidationError::from(violation))
        })?;
        let events = self
            .payments
            .watch_events(tenant.id().as_str(), &request.after_cursor, types)
            .await?;
        let stream = futures::StreamExt::map(events, |item| {
            item.map(event_convert::event_to_proto)
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_payment_link(
        &self,
        request: Request<pb::CreatePaymentLinkRequest>,
    ) -> Result<Response<pb::PaymentLink>, Status> {
        let tenants = self.tenants.current();
        let tenant = authenticate(&tenants, &request)?;
        let request = request.into_inner();
        let (id, ttl) =
            match (
                crate::domain::PaymentId::parse_field(&request.payment_id, "payment_id"),
                convert::link_ttl(request.ttl),
            ) {
                (Ok(id), Ok(ttl)) => (id, ttl),
                (id, ttl) => {
                    return Err(crate::app::AppError::from(
                        crate::domain::ValidationError::collect([id.err(), ttl.err()]),
                    )
                    .into());
                }
            };
        let link = self
            .payments
            .create_payment_link(tenant.id().as_str(), id.as_str(), ttl)
            .await?;
        Ok(Response::new(convert::link_to_proto(link)))
    }

    async fn resolve_payment_link(
        &self,
        request: Request<pb::ResolvePaymentLinkRequest>,
    ) -> Result<Response<pb::PaymentPage>, Status> {
        let tenants = self.tenants.current();
        match authenticate_caller(&tenants, self.gateway_token.as_ref(), &request)? {
            Caller::Gateway => {}
            Caller::Tenant(_) => {
                return Err(Status::permission_denied(
                    "only the return gateway resolves payment links",
                ));
            }
        }
        let page = self
            .payments
            .resolve_payment_link(&request.into_inner().token)
            .await?;
        let tenant = tenants.get(&page.payment.tenant);
        Ok(Response::new(convert::page_to_proto(page, tenant)))
    }
}

/// Names the payment, its tenant and its status on the call's span.
fn record_payment(payment: &pb::Payment) {
    let span = tracing::Span::current();
    span.record("tenant", payment.tenant.as_str());
    span.record("payment_id", payment.id.as_str());
    span.record("status", payment.status().as_str_name());
}

/// Names the refund, its payment and its status on the call's span.
fn record_refund(refund: pb::Refund) -> pb::Refund {
    let span = tracing::Span::current();
    span.record("tenant", refund.tenant.as_str());
    span.record("refund_id", refund.id.as_str());
    span.record("payment_id", refund.payment_id.as_str());
    span.record("status", refund.status().as_str_name());
    refund
}
