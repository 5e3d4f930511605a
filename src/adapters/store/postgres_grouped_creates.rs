//! PostgreSQL: the create's two writes ([`OneTrip`]) from concurrent calls, sent together as one
//! statement. Everything else runs one statement per call on sqlx's pool.
//!
//! Each create writes twice, each write a statement of its own, and most of what a statement
//! costs the server is not its rows but everything around them: the round trip (and sqlx's ping
//! of the connection when it goes back to the pool), the executor's start and end, the commit.
//! So calls of one write that arrive while a statement of that write is running wait, and then go
//! together as one statement (`json_to_recordset` over their values, at most [`MAX_GROUP`]): the
//! busier the server, the larger the groups. A call that finds none running goes at once, as the
//! one-call statement; fewer than [`MIN_SHARED`] waiting calls go side by side, each as the
//! one-call statement (planning the statement for many costs more than it saves for two). The
//! statement for many is planned at each run (not kept as a prepared statement), for the table
//! as it is.
//!
//! Kept beside sqlx, alone, for its figure (issue 14: keep it only if a target is missed without
//! it). The bench's creates on PostgreSQL, the same binary with the grouping switched off and on,
//! three alternated pairs on a 2-core VM (bench/README.md, 2026-12-02 16:35): at 64 callers
//! 963–1,535 creates/s alone against 2,490–2,560/s grouped (the target is 2,000/s), the server's
//! CPU per create 739–1,387 against 340–354 µs; in the open loop at 1,000/s p99 29–124 against
//! 26–45 ms. The price: at 16 callers groups are small and a create waits for the running
//! statement of its write (1,118–1,381 alone against 836–1,022 creates/s grouped).
//!
//! Every call gets what its own statement would have answered:
//! - the rows of the group statement that carry its payment id (none: nothing written for it);
//! - at most one call per payment id goes in a statement (a second waits for the next);
//! - when the database refuses the group statement (a unique key taken by two calls of the
//!   group, a value it will not store), each call runs again alone, so only the call at fault
//!   fails, with its own error;
//! - when the database is unavailable, every call of the group is answered so, as one alone
//!   would be: the statement may or may not have committed.
//!
//! A group runs in a task of its own, so a caller that goes away (a cancelled RPC) does not stop
//! the others' writes, and its own write still runs to its end, committed or not, never half.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::AnyPool;
use tokio::sync::oneshot;

use super::payment_row::PaymentRow;
use super::{OneTrip, SqlValue};
use crate::app::ports::StoreError;

/// At most this many calls go in one statement (bounds its size and how long it runs).
const MAX_GROUP: usize = 64;

/// Fewer waiting calls than this run side by side, each as the one-call statement.
const MIN_SHARED: usize = 3;

type Answer = Result<Vec<PaymentRow>, StoreError>;

struct Call {
    values: Vec<SqlValue>,
    reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Call>,
    /// A task is running this write's statements.
    running: bool,
}

/// The queue of one [`OneTrip`] write on PostgreSQL.
#[derive(Default)]
pub(super) struct GroupedWrite {
    queue: Mutex<Queue>,
}

impl std::fmt::Debug for GroupedWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedWrite").finish_non_exhaustive()
    }
}

impl GroupedWrite {
    /// Runs `write` for `values` (alone or in a group) and answers its rows once committed.
    pub(super) async fn run(
        self: &Arc<Self>,
        pool: &AnyPool,
        write: &'static OneTrip,
        values: Vec<SqlValue>,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push_back(Call { values, reply });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(pool.clone(), write));
        }
        answer.await.map_err(|_| {
            StoreError::Unavailable("the grouped write's task ended without an answer".into())
        })?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the write's groups while calls are waiting; stops under the same lock that found the
    /// queue empty, so a call queued after that starts a new task.
    async fn drain(self: Arc<Self>, pool: AnyPool, write: &'static OneTrip) {
        loop {
            let group = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                take_group(&mut queue.waiting, write.key)
            };
            if group.len() < MIN_SHARED {
                futures::future::join_all(group.into_iter().map(|call| alone(&pool, write, call)))
                    .await;
            } else {
                run_group(&pool, write, group).await;
            }
        }
    }
}

/// Takes up to [`MAX_GROUP`] waiting calls, at most one per payment id, in arrival order.
fn take_group(waiting: &mut VecDeque<Call>, key: usize) -> Vec<Call> {
    let mut ids = HashSet::new();
    let mut group = Vec::new();
    let mut later = VecDeque::new();
    while let Some(call) = waiting.pop_front() {
        if group.len() < MAX_GROUP && ids.insert(call.values[key].clone()) {
            group.push(call);
        } else {
            later.push_back(call);
        }
    }
    *waiting = later;
    group
}

/// Runs the one-call statement.
async fn one(pool: &AnyPool, write: &OneTrip, values: Vec<SqlValue>) -> Answer {
    let mut query = sqlx::query_as(&write.postgres);
    for value in values {
        query = match value {
            SqlValue::Text(text) => query.bind(text),
            SqlValue::Int(int) => query.bind(int),
        };
    }
    Ok(query.fetch_all(pool).await?)
}

async fn alone(pool: &AnyPool, write: &OneTrip, call: Call) {
    let _ = call.reply.send(one(pool, write, call.values).await);
}

/// Runs the statement for many; answers each call with its rows, or runs each alone again when
/// the database refused the group.
async fn run_group(pool: &AnyPool, write: &OneTrip, group: Vec<Call>) {
    let calls: Vec<serde_json::Map<String, serde_json::Value>> = group
        .iter()
        .map(|call| {
            write
                .fields
                .iter()
                .zip(&call.values)
                .map(|(field, value)| ((*field).to_owned(), json(value)))
                .collect()
        })
        .collect();
    let calls = serde_json::Value::from(calls).to_string();
    let answer: Result<Vec<PaymentRow>, StoreError> = sqlx::query_as(&write.postgres_many)
        .bind(calls)
        .persistent(false)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from);
    match answer {
        Ok(rows) => {
            let mut rows: Vec<Option<PaymentRow>> = rows.into_iter().map(Some).collect();
            for call in group {
                let id = &call.values[write.key];
                let mine = rows
                    .iter_mut()
                    .find(|row| row.as_ref().is_some_and(|row| row.is_payment(id)))
                    .and_then(Option::take);
                let _ = call.reply.send(Ok(mine.into_iter().collect()));
            }
        }
        Err(StoreError::Unavailable(error)) => {
            let message = error.to_string();
            for call in group {
                let _ = call
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone().into())));
            }
        }
        Err(_) => {
            futures::future::join_all(group.into_iter().map(|call| alone(pool, write, call))).await;
        }
    }
}

fn json(value: &SqlValue) -> serde_json::Value {
    match value {
        SqlValue::Text(Some(text)) => serde_json::Value::from(text.as_str()),
        SqlValue::Int(Some(int)) => serde_json::Value::from(*int),
        SqlValue::Text(None) | SqlValue::Int(None) => serde_json::Value::Null,
    }
}
