//! The store's count of payments in a transient status (`Creating`, `Processing`) and the oldest
//! one's last change, which the reconciler's gauges and the "stuck" alerts read, on SQLite and
//! PostgreSQL.

use paybridge::adapters::store::Store;
use paybridge::app::ports::{PaymentRecords, ReconcileClaims, TransientPayments};
use paybridge::domain::{EventSource, PaymentStatus, StatusChange};

use crate::support::{self, Db};

fn change(from: PaymentStatus, to: PaymentStatus) -> StatusChange {
    StatusChange::status_only(from, to, None)
}

async fn transient_payments_are_counted_by_status_with_the_oldest_change(db: Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match db {
        Db::Sqlite => format!("sqlite:{}", dir.path().join("transient.db").display()),
        Db::Postgres => support::postgres::fresh_database().await,
    };
    let store = Store::connect(&url, 4).await.expect("store");
    store.migrate().await.expect("migrate");
    assert_eq!(store.transient_payments().await.expect("read"), vec![]);

    // Three creates, at 1 000, 2 000 and 3 000 ms.
    let mut ids = Vec::new();
    for (n, at) in [(1, 1_000), (2, 2_000), (3, 3_000)] {
        let mut payment = support::creating_payment(&format!("INV-{n}"));
        payment.created_at = at;
        payment.updated_at = at;
        assert!(
            store
                .insert_payment(&payment, &format!("key-{n}"), "fp")
                .await
                .expect("insert")
        );
        ids.push(payment.id);
    }
    // The first is processing from 5 000 ms, the second succeeded at 6 000 ms.
    store
        .attach_intent(
            &ids[0],
            "pi_1",
            Some("pi_1_secret"),
            &change(PaymentStatus::Creating, PaymentStatus::Processing),
            5_000,
        )
        .await
        .expect("attach");
    store
        .attach_intent(
            &ids[1],
            "pi_2",
            Some("pi_2_secret"),
            &change(PaymentStatus::Creating, PaymentStatus::Processing),
            5_500,
        )
        .await
        .expect("attach");
    store
        .apply_change(
            &ids[1],
            &change(PaymentStatus::Processing, PaymentStatus::Succeeded),
            EventSource::Webhook,
            6_000,
        )
        .await
        .expect("paid");

    let mut transient = store.transient_payments().await.expect("read");
    transient.sort_by_key(|t| t.status.as_str());
    assert_eq!(
        transient,
        vec![
            TransientPayments {
                status: PaymentStatus::Creating,
                count: 1,
                oldest_updated_at: 3_000,
            },
            TransientPayments {
                status: PaymentStatus::Processing,
                count: 1,
                oldest_updated_at: 5_000,
            },
        ]
    );
    store.close().await;
}

on_both_databases!(transient_payments_are_counted_by_status_with_the_oldest_change);
