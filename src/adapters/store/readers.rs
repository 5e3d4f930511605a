//! Where the store's reads run.
//!
//! On PostgreSQL: the shared set of connections (`postgres.rs`). On SQLite: a fixed set of
//! connections read in the calling thread (`sqlite.rs`).

use std::sync::Arc;

use sqlx::any::AnyRow;

use super::StoreError;
use super::postgres::Connections;
use super::sqlite::{self, FromSqliteRow};
use super::writer::Bound;

/// Where reads run.
#[derive(Debug)]
pub(super) enum Readers {
    Postgres(Arc<Connections>),
    Sqlite(sqlite::Readers),
}

impl Readers {
    /// Runs one `select` (`$n` parameters, `values[n - 1]` bound to each) and returns its rows.
    pub(super) async fn read<R>(&self, sql: &str, values: Vec<Bound>) -> Result<Vec<R>, StoreError>
    where
        R: for<'r> sqlx::FromRow<'r, AnyRow> + FromSqliteRow,
    {
        match self {
            Readers::Postgres(connections) => connections.fetch_rows(sql, values).await,
            Readers::Sqlite(readers) => readers.read(sql, &values).await,
        }
    }

    /// Closes every connection; later reads fail as unavailable.
    pub(super) async fn close(&self) {
        match self {
            Readers::Postgres(connections) => connections.close().await,
            Readers::Sqlite(readers) => readers.close(),
        }
    }
}
