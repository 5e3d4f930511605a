//! The `payment` table's writes and reads ([`PaymentRecords`]); its row type is in
//! [`super::payment_row`].

use std::sync::LazyLock;

use async_trait::async_trait;

use super::payment_row::{PaymentRow, payment_json};
use super::{AppendedEvent, Backend, Change, EVENT_INSERT, OneTrip, SqlValue, Store, Transition};
use crate::app::ports::{ListQuery, PaymentRecords, StoreError};
use crate::domain::{EventSource, Payment, PaymentStatus, StatusChange};

/// The number of a payment column's parameter in [`INSERT_PAYMENT`] (`$1` is the first column).
fn column_parameter(column: &str) -> String {
    let position = PaymentRow::COLUMNS
        .iter()
        .position(|known| *known == column)
        .unwrap_or_else(|| panic!("{column} is not a payment column"));
    format!("${}", position + 1)
}

/// A create's first write: the payment (in `Creating`), its idempotency key and its first event,
/// unless the key is taken or the invoice has a live payment; answers the payment's row when it
/// wrote it. Parameters: the payment's columns in [`PaymentRow::COLUMNS`] order, then the key and
/// the request's fingerprint. A concurrent create that took the key or the invoice first makes it
/// fail on a unique index (`Conflict`).
static INSERT_PAYMENT: LazyLock<OneTrip> = LazyLock::new(|| {
    let count = PaymentRow::COLUMNS.len();
    let columns = PaymentRow::COLUMNS.join(", ");
    let values: Vec<String> = (1..=count).map(|n| format!("${n}")).collect();
    let values = values.join(", ");
    let [id, tenant, invoice, status, created] =
        ["payment_id", "tenant", "invoice_id", "status", "created_at"].map(column_parameter);
    let (key, fingerprint) = (format!("${}", count + 1), format!("${}", count + 2));
    let types = PaymentRow::POSTGRES_TYPES.iter().chain(&["text", "text"]);
    let call_columns: Vec<String> = INSERT_FIELDS
        .iter()
        .zip(types)
        .map(|(field, kind)| format!("{field} {kind}"))
        .collect();
    let call_columns = call_columns.join(", ");
    let insert = format!(
        "insert into payment ({columns}) select {values} \
         where not exists (select 1 from idempotency_key \
                           where tenant = {tenant} and idempotency_key = {key}) \
           and not exists (select 1 from payment \
                           where tenant = {tenant} and invoice_id = {invoice} and status <> 'canceled') \
         returning *"
    );
    let (sqlite_json, postgres_json) = (
        payment_json(Backend::Sqlite, "p"),
        payment_json(Backend::Postgres, "p"),
    );
    let key_columns = "insert into idempotency_key \
         (tenant, idempotency_key, request_fingerprint, payment_id, created_at)";
    OneTrip {
        sqlite: format!(
            "{insert}; \
             {key_columns} select {tenant}, {key}, {fingerprint}, {id}, {created} \
             where changes() = 1; \
             {EVENT_INSERT} select {id}, 'create', null, {status}, null, {created}, null, \
                 p.tenant, {sqlite_json} from payment p where p.payment_id = {id} and changes() = 1"
        ),
        postgres: format!(
            "with new_payment as ({insert}), \
             new_key as ({key_columns} \
                 select tenant, {key}, {fingerprint}, payment_id, created_at from new_payment), \
             new_event as ({EVENT_INSERT} \
                 select payment_id, 'create', null, status, null, created_at, null, \
                     tenant, {postgres_json} from new_payment p) \
             select * from new_payment"
        ),
        postgres_many: format!(
            "with call as (select * from json_to_recordset($1::json) as call({call_columns})), \
             new_payment as (insert into payment ({columns}) select {columns} from call \
                 where not exists (select 1 from idempotency_key k \
                                   where k.tenant = call.tenant \
                                     and k.idempotency_key = call.idempotency_key) \
                   and not exists (select 1 from payment p \
                                   where p.tenant = call.tenant and p.invoice_id = call.invoice_id \
                                     and p.status <> 'canceled') \
                 returning *), \
             new_key as ({key_columns} \
                 select p.tenant, call.idempotency_key, call.request_fingerprint, p.payment_id, \
                        p.created_at \
                 from new_payment p join call on call.payment_id = p.payment_id), \
             new_event as ({EVENT_INSERT} \
                 select payment_id, 'create', null, status, null, created_at, null, \
                     tenant, {postgres_json} \
                 from new_payment p) \
             select * from new_payment"
        ),
        fields: INSERT_FIELDS.clone(),
        key: 0,
        queue: 0,
    }
});

/// The names of [`INSERT_PAYMENT`]'s values, `$1`, `$2`, … in order.
static INSERT_FIELDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut fields = PaymentRow::COLUMNS.to_vec();
    fields.extend(["idempotency_key", "request_fingerprint"]);
    fields
});

/// The assignment that records what a payment received when `new_status` (a parameter) is
/// `succeeded`, in the update that moves a payment from `creating` there (an intent just created
/// has captured nothing unless it succeeded whole; later changes write Stripe's
/// `amount_received`, see [`super::WriteTx::set_status`]).
fn set_amount_received(new_status: &str) -> String {
    format!(
        "amount_received = case when {new_status} = 'succeeded' then amount else amount_received end"
    )
}

/// Records the intent of a `Creating` payment and its event; answers the row when it changed it.
static ATTACH_INTENT: LazyLock<OneTrip> = LazyLock::new(|| {
    let update = format!(
        "update payment set stripe_payment_intent_id = $1, client_secret = $2, \
         status = $3, last_payment_error_code = $4, last_payment_error_message = $5, \
         updated_at = $6, {} \
         where payment_id = $7 and status = 'creating' \
         returning *",
        set_amount_received("$3")
    );
    let (sqlite_json, postgres_json) = (
        payment_json(Backend::Sqlite, "p"),
        payment_json(Backend::Postgres, "p"),
    );
    OneTrip {
        sqlite: format!(
            "{update}; \
             {EVENT_INSERT} select $7, 'create', 'creating', $3, null, $6, null, \
                 p.tenant, {sqlite_json} from payment p where p.payment_id = $7 and changes() = 1"
        ),
        postgres: format!(
            "with attached as ({update}), \
             event as ({EVENT_INSERT} \
                 select payment_id, 'create', 'creating', status, null, updated_at, null, \
                     tenant, {postgres_json} from attached p) \
             select * from attached"
        ),
        postgres_many: format!(
            "with call as (select * from json_to_recordset($1::json) as call(\
                 intent_id text, client_secret text, status text, error_code text, \
                 error_message text, now bigint, payment_id text)), \
             attached as (update payment set stripe_payment_intent_id = call.intent_id, \
                 client_secret = call.client_secret, status = call.status, \
                 last_payment_error_code = call.error_code, \
                 last_payment_error_message = call.error_message, updated_at = call.now, {} \
                 from call \
                 where payment.payment_id = call.payment_id and payment.status = 'creating' \
                 returning payment.*), \
             event as ({EVENT_INSERT} \
                 select payment_id, 'create', 'creating', status, null, updated_at, null, \
                     tenant, {postgres_json} \
                 from attached p) \
             select * from attached",
            set_amount_received("call.status")
        ),
        fields: vec![
            "intent_id",
            "client_secret",
            "status",
            "error_code",
            "error_message",
            "now",
            "payment_id",
        ],
        key: 6,
        queue: 1,
    }
});

impl Store {
    /// The payment the two-parameter `sql` finds, if any.
    async fn fetch_one_payment(
        &self,
        sql: &'static str,
        first: &str,
        second: Option<&str>,
    ) -> Result<Option<Payment>, StoreError> {
        sqlx::query_as::<_, PaymentRow>(sql)
            .bind(first)
            .bind(second)
            .fetch_optional(&self.read)
            .await?
            .map(Payment::try_from)
            .transpose()
    }
}

#[async_trait]
impl PaymentRecords for Store {
    #[tracing::instrument(name = "store.insert_payment", skip_all)]
    async fn insert_payment(
        &self,
        payment: &Payment,
        idempotency_key: &str,
        request_fingerprint: &str,
    ) -> Result<bool, StoreError> {
        let mut values = PaymentRow::try_from(payment)?.values();
        values.push(SqlValue::from(idempotency_key));
        values.push(SqlValue::from(request_fingerprint));
        let written = !self
            .write_in_one_trip(
                &INSERT_PAYMENT,
                values,
                Change {
                    payment_id: payment.id.clone(),
                    source: EventSource::Create,
                    transition: Transition::Payment {
                        from: None,
                        to: payment.status,
                    },
                },
            )
            .await?
            .is_empty();
        Ok(written)
    }

    #[tracing::instrument(name = "store.get_payment", skip_all)]
    async fn get_payment(
        &self,
        tenant: Option<&str>,
        payment_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        const SQL: &str =
            "select * from payment where payment_id = $1 and ($2 is null or tenant = $2)";
        self.fetch_one_payment(SQL, payment_id, tenant).await
    }

    #[tracing::instrument(name = "store.find_payment_by_intent", skip_all)]
    async fn find_payment_by_intent(
        &self,
        tenant: Option<&str>,
        intent_id: &str,
    ) -> Result<Option<Payment>, StoreError> {
        const SQL: &str = "select * from payment \
             where stripe_payment_intent_id = $1 and ($2 is null or tenant = $2)";
        self.fetch_one_payment(SQL, intent_id, tenant).await
    }

    #[tracing::instrument(name = "store.list_payments", skip_all)]
    async fn list_payments(&self, query: ListQuery<'_>) -> Result<Vec<Payment>, StoreError> {
        let (after_created, after_id) = match &query.after {
            Some(cursor) => (Some(cursor.created_at), Some(cursor.id.as_str())),
            None => (None, None),
        };
        let rows: Vec<PaymentRow> = sqlx::query_as(
            "select * from payment \
             where tenant = $1 \
               and ($2 is null or invoice_id = $2) \
               and ($3 is null or status = $3) \
               and ($4 is null or created_at < $4 or (created_at = $4 and payment_id < $5)) \
             order by created_at desc, payment_id desc \
             limit $6",
        )
        .bind(query.tenant)
        .bind(query.invoice_id)
        .bind(query.status.map(PaymentStatus::as_str))
        .bind(after_created)
        .bind(after_id)
        .bind(i64::from(query.limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(Payment::try_from).collect()
    }

    #[tracing::instrument(name = "store.attach_intent", skip_all)]
    async fn attach_intent(
        &self,
        payment_id: &str,
        intent_id: &str,
        client_secret: Option<&str>,
        change: &StatusChange,
        now: i64,
    ) -> Result<Payment, StoreError> {
        let error = change.last_payment_error.clone().unwrap_or_default();
        let values = vec![
            SqlValue::from(intent_id),
            SqlValue::from(client_secret.map(str::to_owned)),
            SqlValue::from(change.to.as_str()),
            SqlValue::from(error.code),
            SqlValue::from(error.message),
            SqlValue::from(now),
            SqlValue::from(payment_id),
        ];
        let attached = self
            .write_in_one_trip(
                &ATTACH_INTENT,
                values,
                Change {
                    payment_id: payment_id.to_owned(),
                    source: EventSource::Create,
                    transition: Transition::Payment {
                        from: Some(PaymentStatus::Creating),
                        to: change.to,
                    },
                },
            )
            .await?
            .pop();
        match attached {
            Some(row) => Payment::try_from(row),
            // Another writer finished it first: answer what it stored.
            None => self
                .get_payment(None, payment_id)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("payment {payment_id} vanished"))),
        }
    }

    #[tracing::instrument(name = "store.apply_change", skip_all)]
    async fn apply_change(
        &self,
        payment_id: &str,
        change: &StatusChange,
        source: EventSource,
        now: i64,
    ) -> Result<(Payment, bool), StoreError> {
        let mut tx = self.begin().await?;
        let changed = tx.set_status(payment_id, change, now, None).await?;
        if changed {
            tx.append_event(AppendedEvent {
                payment_id,
                refund_id: None,
                source,
                transition: Transition::Payment {
                    from: Some(change.from),
                    to: change.to,
                },
                stripe_event_id: None,
                now,
            })
            .await?;
        }
        let row: PaymentRow = sqlx::query_as("select * from payment where payment_id = $1")
            .bind(payment_id)
            .fetch_one(tx.conn())
            .await?;
        tx.commit().await?;
        Ok((Payment::try_from(row)?, changed))
    }
}

impl super::WriteTx<'_> {
    /// Sets the payment's status (and error) if it is still in `change.from`; with
    /// `event_created`, also the newest applied webhook event's time. True when it changed.
    pub(super) async fn set_status(
        &mut self,
        payment_id: &str,
        change: &StatusChange,
        now: i64,
        event_created: Option<i64>,
    ) -> Result<bool, StoreError> {
        // What was received is Stripe's `amount_received` (less than the amount after a partial
        // capture), written as the payment succeeds.
        const SQL: &str = "update payment set status = $1, last_payment_error_code = $2, \
             last_payment_error_message = $3, updated_at = $4, \
             last_event_created = coalesce($5, last_event_created), \
             amount_received = case when $1 = 'succeeded' then $8 else amount_received end, \
             amount_capturable = $9, capture_before = $10, cancellation_reason = $11 \
             where payment_id = $6 and status = $7";
        let error = change.last_payment_error.clone().unwrap_or_default();
        let updated = sqlx::query(SQL)
            .bind(change.to.as_str())
            .bind(error.code)
            .bind(error.message)
            .bind(now)
            .bind(event_created)
            .bind(payment_id)
            .bind(change.from.as_str())
            .bind(change.amount_received)
            .bind(change.amount_capturable)
            .bind(change.capture_before)
            .bind(change.cancellation_reason.map(|reason| reason.as_str()))
            .execute(self.conn())
            .await?
            .rows_affected();
        Ok(updated == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::PaymentId;

    fn creating(invoice_id: &str) -> Payment {
        Payment {
            id: PaymentId::generate().as_str().to_owned(),
            tenant: "billing".to_owned(),
            invoice_id: invoice_id.to_owned(),
            amount: 4200,
            currency: "usd".to_owned(),
            status: PaymentStatus::Creating,
            stripe_payment_intent_id: None,
            stripe_customer_id: None,
            client_secret: None,
            description: Some("it's \"quoted\" \\ and ünïcode".to_owned()),
            metadata: BTreeMap::from([("order".to_owned(), "o-1".to_owned())]),
            success_url: "https://shop.example.com/paid".to_owned(),
            failure_url: "https://shop.example.com/failed".to_owned(),
            last_payment_error: None,
            created_at: 1,
            updated_at: 1,
            last_event_created: None,
            amount_received: 0,
            amount_refunded: 0,
            amount_refund_pending: 0,
            capture_method: crate::domain::CaptureMethod::Automatic,
            amount_capturable: 0,
            capture_before: None,
            cancellation_reason: None,
            dispute: None,
            dispute_last_event_created: None,
        }
    }

    /// A SQLite create's batch that fails part way is rolled back whole, and the one write
    /// connection is left without an open transaction for the next write.
    #[tokio::test]
    async fn a_failed_sqlite_batch_leaves_nothing_and_the_writer_usable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("store.db").display());
        let store = Store::connect(&url, 2).await.expect("store");
        store.migrate().await.expect("migrate");

        let first = creating("inv-1");
        assert!(
            store
                .insert_payment(&first, "k-1", "fp")
                .await
                .expect("insert")
        );
        assert_eq!(
            store.get_payment(None, &first.id).await.expect("read"),
            Some(first.clone()),
            "written and read back unchanged"
        );

        // The same id for another invoice and key: the batch's first insert breaks the primary
        // key after `begin immediate`.
        let mut same_id = creating("inv-2");
        same_id.id = first.id.clone();
        store
            .insert_payment(&same_id, "k-2", "fp")
            .await
            .expect_err("the primary key refuses it");

        let second = creating("inv-2");
        assert!(
            store
                .insert_payment(&second, "k-2", "fp")
                .await
                .expect("insert"),
            "the writer is usable again"
        );
        let keys: Vec<(String,)> =
            sqlx::query_as("select idempotency_key from idempotency_key order by 1")
                .fetch_all(&store.read)
                .await
                .expect("keys");
        assert_eq!(keys, [("k-1".to_owned(),), ("k-2".to_owned(),)]);
        // Committed, not left in a transaction: a second connection sees both payments.
        let other = Store::connect(&url, 1).await.expect("another store");
        for id in [&first.id, &second.id] {
            assert!(other.get_payment(None, id).await.expect("read").is_some());
        }
    }
}
