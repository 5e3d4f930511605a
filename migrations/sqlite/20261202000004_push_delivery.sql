-- push_delivery: where each tenant's pushes (its events POSTed to its webhook_url) stand. One row
-- per tenant, made when its pushes are first claimed. Replicas take turns through the lease: one
-- tenant's events are sent by one replica at a time, in feed order.
create table push_delivery (
    tenant text primary key not null,
    -- The feed position (commit_group, payment_event_id) of the last event delivered or given
    -- up; both null until the first one: pushes start at the oldest event kept.
    commit_group integer,
    event_id integer,
    attempts integer not null default 0,        -- failed attempts of the next event
    next_attempt_at integer not null default 0, -- unix ms: the next event is not sent before
    first_failure_at integer,                   -- unix ms of the next event's first failure
    lease_until integer,                        -- unix ms: the replica sending holds it till then
    updated_at integer not null,                -- unix ms
    check ((commit_group is null) = (event_id is null))
);
