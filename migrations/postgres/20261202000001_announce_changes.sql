-- Every status change appended to a payment's event log is announced on the channel
-- 'paybridge_payment_changed' (payload: the payment id). The server delivers it when the
-- changing transaction commits, to every replica's listener, which wakes the WatchPayment
-- streams it serves. The store never has to remember to announce a change.
--
-- A payment's first event (written with the payment, in `creating`) is not announced: nobody
-- has been answered its id yet, so nobody can be watching it.
create function paybridge_announce_payment_change() returns trigger
language plpgsql as $$
begin
    perform pg_notify('paybridge_payment_changed', new.payment_id);
    return null;
end
$$;

create trigger payment_event_announced after insert on payment_event
    for each row when (new.from_status is not null)
    execute function paybridge_announce_payment_change();
