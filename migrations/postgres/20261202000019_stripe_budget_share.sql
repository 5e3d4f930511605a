-- stripe_budget_share: each live replica's share of the Stripe account's request budget
-- (PAYBRIDGE_STRIPE_MAX_RPS). A replica renews its row every few seconds; a row whose lease ran
-- out (a replica killed or cut off) no longer counts, and the next renewal deletes it. Only on
-- PostgreSQL: on SQLite one process has the whole budget.
create table stripe_budget_share (
    replica_id text primary key not null,
    -- The replica's share, in millionths of the budget.
    share_ppm bigint not null,
    -- Unix ms, by the database's clock: the share counts until then.
    lease_until bigint not null
);
