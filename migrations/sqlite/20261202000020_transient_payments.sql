-- The reconciler's gauges of payments in a status they should soon leave (creating,
-- processing): count and oldest change per status, read from only those rows.
create index payment_transient on payment (status, updated_at)
    where status in ('creating', 'processing');
