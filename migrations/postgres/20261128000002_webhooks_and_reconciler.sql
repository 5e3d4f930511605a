-- stripe_event: every verified webhook event, recorded once (duplicates are acknowledged without
-- effect) before it is acknowledged to Stripe.
create table stripe_event (
    stripe_event_id text primary key not null,     -- 'evt_…'
    event_type text not null,                      -- e.g. 'payment_intent.succeeded'
    event_created bigint not null,                -- Stripe's `created`, unix seconds
    payment_id text references payment (payment_id), -- null when the event is not about one of ours
    result text not null,                          -- applied, ignored, stale, mismatch, not_ours
    received_at bigint not null                   -- unix milliseconds
);

-- The `created` time (unix seconds) of the newest webhook event applied to the payment, so that a
-- late delivery of an older event never moves the payment backwards.
alter table payment add column last_event_created bigint;

-- The reconciler's lease on the payment (unix milliseconds): until then, no other replica
-- picks it up.
alter table payment add column reconcile_lease_until bigint;
