-- The event feed (issue 16): the event log is every tenant's feed of changes. Each event records
-- its tenant (the payment's), the object as it stood right after the change (`object`: JSON of
-- the payment's or the refund's row, the client secret left out) and its writing transaction's
-- id (`commit_group`). The feed's order is (commit_group, payment_event_id), and a reader reads
-- only events of transactions older than every transaction still running
-- (`commit_group < pg_snapshot_xmin(pg_current_snapshot())`): nothing can ever commit before an
-- event already read, which identity values alone do not promise (they are taken in one order
-- and committed in another).

alter table payment_event add column tenant text;
update payment_event e set tenant = p.tenant from payment p where p.payment_id = e.payment_id;
alter table payment_event alter column tenant set not null;

-- Rows written before the feed: the object as it is now, with the status and the time of the
-- event (what was between is not known any more).
alter table payment_event add column object text;
update payment_event e
    set object = ((to_jsonb(p) - 'client_secret' - 'reconcile_lease_until')
                  || jsonb_build_object('status', e.to_status, 'updated_at', e.created_at))::text
    from payment p
    where e.refund_id is null and p.payment_id = e.payment_id;
update payment_event e
    set object = ((to_jsonb(r) - 'idempotency_key' - 'request_fingerprint'
                   - 'reconcile_lease_until')
                  || jsonb_build_object('status', e.to_status, 'updated_at', e.created_at))::text
    from refund r
    where r.refund_id = e.refund_id;
alter table payment_event alter column object set not null;

-- Rows written before the feed are group 0: below every transaction id, in their id order.
alter table payment_event add column commit_group bigint not null default 0;
alter table payment_event alter column commit_group set default (pg_current_xact_id()::text::bigint);

-- A tenant's feed, in order; and the whole log in order, for retention.
create index payment_event_feed on payment_event (tenant, commit_group, payment_event_id);
create index payment_event_by_position on payment_event (commit_group, payment_event_id);

-- During a rolling upgrade the previous release still appends events without a tenant or an
-- object: fill them in from the row its statement just wrote, as the new release would.
create function paybridge_fill_event() returns trigger
language plpgsql as $$
begin
    if new.tenant is null then
        new.tenant := (select tenant from payment where payment_id = new.payment_id);
    end if;
    if new.object is null then
        if new.refund_id is null then
            new.object := (select (to_jsonb(p) - 'client_secret' - 'reconcile_lease_until')::text
                           from payment p where p.payment_id = new.payment_id);
        else
            new.object := (select (to_jsonb(r) - 'idempotency_key' - 'request_fingerprint'
                                   - 'reconcile_lease_until')::text
                           from refund r where r.refund_id = new.refund_id);
        end if;
    end if;
    return new;
end
$$;

create trigger payment_event_filled before insert on payment_event
    for each row when (new.tenant is null or new.object is null)
    execute function paybridge_fill_event();

-- The newest position retention deleted (the log is deleted from its start, in feed order): a
-- cursor at or before it has expired.
create table event_feed_horizon (
    only_row integer primary key check (only_row = 1),
    commit_group bigint not null,
    payment_event_id bigint not null
);
insert into event_feed_horizon values (1, 0, 0);
