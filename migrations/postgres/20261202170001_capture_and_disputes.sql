-- Manual capture and disputes (issue 17).

-- When the money is taken: 'automatic' or 'manual' (authorized by the customer, captured by
-- CapturePayment).
alter table payment add column capture_method text not null default 'automatic';
-- What can still be captured while 'requires_capture' (minor units); 0 otherwise.
alter table payment add column amount_capturable bigint not null default 0
    check (amount_capturable >= 0);
-- When the authorization lapses (unix ms): the charge's capture_before, else 7 days after the
-- authorization was first seen. Null before an authorization.
alter table payment add column capture_before bigint;
-- Why a 'canceled' payment was cancelled: 'requested', 'authorization_expired' or 'other'.
alter table payment add column cancellation_reason text;

-- The dispute of the payment's charge (Stripe's, as last observed); all null when never
-- disputed. The payment's status is not changed by a dispute.
alter table payment add column dispute_id text;                    -- 'dp_…'
alter table payment add column dispute_status text;                -- Stripe's dispute status
alter table payment add column dispute_reason text;                -- e.g. 'fraudulent'
alter table payment add column dispute_amount bigint;                -- minor units
alter table payment add column dispute_evidence_due_by bigint;       -- unix ms; null: no response allowed
alter table payment add column dispute_is_charge_refundable bigint;  -- 1 or 0
alter table payment add column dispute_last_event_created bigint;    -- Stripe's created (unix s) of the newest dispute event applied
alter table payment add column dispute_checked_at bigint;            -- the reconciler's last read of an open dispute (unix ms)

-- The reconciler re-reads open disputes of succeeded payments.
create index payment_open_dispute on payment (dispute_checked_at)
    where dispute_status in ('warning_needs_response', 'warning_under_review', 'needs_response',
                             'under_review');

-- The authorizations-expiring gauge: payments awaiting capture by deadline.
create index payment_awaiting_capture on payment (capture_before)
    where status = 'requires_capture';

-- payment_capture: a CapturePayment asked for, written before Stripe is called (Stripe's
-- Idempotency-Key is 'paybridge-capture-<payment_id>'): at most one per payment.
create table payment_capture (
    payment_id text primary key not null references payment (payment_id),
    tenant text not null,
    idempotency_key text not null,                 -- the caller's key
    request_fingerprint text not null,             -- hex SHA-256 of the canonical request
    amount bigint not null check (amount > 0),       -- minor units to capture
    created_at bigint not null
);

-- A CapturePayment key names one capture per tenant.
create unique index payment_capture_by_key on payment_capture (tenant, idempotency_key);

-- A change of a payment's dispute is an event of its payment's log naming the dispute (its
-- statuses are the payment's, unchanged). Null for every other event.
alter table payment_event add column dispute_id text;
