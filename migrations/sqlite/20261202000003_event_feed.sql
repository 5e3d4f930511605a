-- The event feed (issue 16): the event log is every tenant's feed of changes. Each event records
-- its tenant (the payment's) and the object as it stood right after the change (`object`: JSON
-- of the payment's or the refund's row, the client secret left out). The feed's order is
-- (commit_group, payment_event_id); SQLite has one writer, so ids commit in order and
-- commit_group is always 0 (PostgreSQL's is the writing transaction's id).

alter table payment_event add column tenant text not null default '';
update payment_event
    set tenant = (select tenant from payment p where p.payment_id = payment_event.payment_id);

-- Rows written before the feed: the object as it is now, with the status and the time of the
-- event (what was between is not known any more).
alter table payment_event add column object text not null default '{}';
update payment_event
    set object = (select json_object(
            'payment_id', p.payment_id, 'tenant', p.tenant, 'invoice_id', p.invoice_id,
            'amount', p.amount, 'currency', p.currency, 'status', payment_event.to_status,
            'stripe_payment_intent_id', p.stripe_payment_intent_id,
            'stripe_customer_id', p.stripe_customer_id, 'description', p.description,
            'metadata', p.metadata, 'success_url', p.success_url, 'failure_url', p.failure_url,
            'last_payment_error_code', p.last_payment_error_code,
            'last_payment_error_message', p.last_payment_error_message,
            'created_at', p.created_at, 'updated_at', payment_event.created_at,
            'last_event_created', p.last_event_created, 'amount_received', p.amount_received,
            'amount_refunded', p.amount_refunded, 'amount_refund_pending', p.amount_refund_pending)
        from payment p where p.payment_id = payment_event.payment_id)
    where refund_id is null;
update payment_event
    set object = (select json_object(
            'refund_id', r.refund_id, 'payment_id', r.payment_id, 'tenant', r.tenant,
            'amount', r.amount, 'currency', r.currency, 'status', payment_event.to_status,
            'reason', r.reason, 'stripe_refund_id', r.stripe_refund_id,
            'failure_reason', r.failure_reason, 'source', r.source, 'metadata', r.metadata,
            'created_at', r.created_at, 'updated_at', payment_event.created_at,
            'last_event_created', r.last_event_created)
        from refund r where r.refund_id = payment_event.refund_id)
    where refund_id is not null;

alter table payment_event add column commit_group integer not null default 0;

-- A tenant's feed, in order; and the whole log in order, for retention.
create index payment_event_feed on payment_event (tenant, commit_group, payment_event_id);
create index payment_event_by_position on payment_event (commit_group, payment_event_id);

-- The newest position retention deleted (the log is deleted from its start, in feed order): a
-- cursor at or before it has expired.
create table event_feed_horizon (
    only_row integer primary key check (only_row = 1),
    commit_group integer not null,
    payment_event_id integer not null
);
insert into event_feed_horizon values (1, 0, 0);
