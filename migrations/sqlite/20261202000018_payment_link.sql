-- payment_link: the links to the hosted payment page (issue 18), `<public base>/pay/<token>`.
-- The token itself is never stored: a copy of this table opens no page.
create table payment_link (
    token_sha256 text primary key not null,   -- hex SHA-256 of the link's token
    payment_id text not null references payment (payment_id),
    tenant text not null,                     -- the payment's tenant, who asked for the link
    created_at integer not null,              -- unix ms
    expires_at integer not null               -- unix ms: from then on the link answers 404
);

-- The janitor deletes expired links.
create index payment_link_by_expiry on payment_link (expires_at);
