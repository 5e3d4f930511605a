//! Where the store's reads run.
//!
//! On PostgreSQL: sqlx's pool, whose ping before each use finds sessions the server ended (a
//! restart, a failover) and replaces them.
//!
//! On SQLite: a fixed set of connections opened at start, handed out in turn. Each SQLite
//! connection is served by a thread of its own, so every round trip to it is a hand-over between
//! threads; sqlx's pool adds one more each time a connection comes back (it pings it before
//! putting it back), which doubled the cost of a read. A SQLite connection is a file handle in
//! this process and does not go away, so there is nothing for that ping to find.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::{AnyConnection, AnyPool, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::StoreError;

/// Where reads run.
#[derive(Debug)]
pub(super) enum Readers {
    Pool(AnyPool),
    Sqlite(SqliteReaders),
}

#[derive(Debug)]
pub(super) struct SqliteReaders {
    idle: Mutex<Vec<AnyConnection>>,
    /// One permit per connection in `idle`.
    permits: Semaphore,
}

/// A connection to read on; goes back when dropped.
pub(super) enum ReadConn<'a> {
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
    Sqlite {
        conn: Option<AnyConnection>,
        readers: &'a SqliteReaders,
        _permit: SemaphorePermit<'a>,
    },
}

impl Readers {
    /// `connections` SQLite connections.
    pub(super) async fn sqlite(url: &str, connections: u32) -> Result<Readers, StoreError> {
        let mut idle = Vec::new();
        for _ in 0..connections.max(1) {
            idle.push(super::open_sqlite(url).await?);
        }
        Ok(Readers::Sqlite(SqliteReaders {
            permits: Semaphore::new(idle.len()),
            idle: Mutex::new(idle),
        }))
    }

    /// Waits for a connection (on PostgreSQL as long as the pool's acquire timeout).
    pub(super) async fn get(&self) -> Result<ReadConn<'_>, StoreError> {
        match self {
            Readers::Pool(pool) => Ok(ReadConn::Pooled(pool.acquire().await?)),
            Readers::Sqlite(readers) => {
                let permit = readers.permits.acquire().await.map_err(|_| closed())?;
                let conn = readers
                    .idle
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .pop()
                    .ok_or_else(closed)?;
                Ok(ReadConn::Sqlite {
                    conn: Some(conn),
                    readers,
                    _permit: permit,
                })
            }
        }
    }

    /// Closes every connection; later reads fail as unavailable.
    pub(super) async fn close(&self) {
        match self {
            Readers::Pool(pool) => pool.close().await,
            Readers::Sqlite(readers) => {
                readers.permits.close();
                let idle = std::mem::take(
                    &mut *readers
                        .idle
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                );
                for conn in idle {
                    let _ = conn.close().await;
                }
            }
        }
    }
}

impl Deref for ReadConn<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Sqlite { conn, .. } => conn.as_ref().expect("held until dropped"),
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            ReadConn::Pooled(conn) => conn,
            ReadConn::Sqlite { conn, .. } => conn.as_mut().expect("held until dropped"),
        }
    }
}

impl Drop for ReadConn<'_> {
    fn drop(&mut self) {
        // A read dropped half way (a cancelled RPC) leaves nothing behind: the connection's
        // thread stops the statement when nobody takes its rows, and reads hold no transaction.
        if let ReadConn::Sqlite { conn, readers, .. } = self
            && let Some(conn) = conn.take()
        {
            readers
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(conn);
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}
