//! PostgreSQL: the same write from concurrent callers, sent together as one statement.
//!
//! A create writes twice, each write a statement and a transaction of its own: the payment in
//! `Creating`, then the intent Stripe made for it. Most of what such a statement costs the server
//! is not its rows but everything around them: the round trip, the executor's start and end, the
//! commit, and waking the WAL writer. `pgbench` on the 2-core bench machine, the two writes of a
//! create as paybridge sends them, server CPU per create: 295–315 µs one create per statement,
//! 79–90 µs sixteen per statement.
//!
//! So calls of one [`GroupedWrite`] that arrive while an earlier statement of it is running wait,
//! and then go together: one statement of each kind runs at a time in a process (as PostgreSQL's
//! own WAL flush works for its commits). A call that finds none running goes at once, alone and
//! as the one-call statement it always was, so an idle service adds no wait; under load the calls
//! that queued meanwhile go as one statement (at most [`MAX_GROUP`]), and the busier the server,
//! the larger the groups. Two that queued go side by side as one-call statements
//! ([`MIN_SHARED`]).
//!
//! On the bench (2 cores shared with the server; one run of each, side by side), creates/s at 64
//! concurrent calls, then at 16: one statement of each kind at a time 4,910 and 2,423; two at a
//! time 4,374 and 2,435; four 3,394 and 2,597; every create alone (before) 2,826–2,964 and
//! 2,765–2,874. At 16 callers the groups are small, and waiting for the running statement costs
//! about what sharing saves.
//!
//! The statement for many is planned at each run ([`Planned::EachRun`]): it joins the calls to
//! `payment`, and a plan kept from when the table was small scans all of it (a hash join); planned
//! for the table as it is, it looks each payment up in its index. Its planning is shared by the
//! group.
//!
//! Every call gets what its own statement would have answered:
//! - the rows of the group statement that carry its payment id (none: nothing written for it);
//! - at most one call per payment id goes in a statement (a second waits for the next);
//! - when the database refuses the group statement (a unique key taken by two calls of the
//!   group, a value it will not store), each call runs again alone, so only the call at fault
//!   fails, and with its own error;
//! - when the connection is lost, every call of the group gets unavailable, as one alone would:
//!   the statement may or may not have committed.
//!
//! A group runs in a task of its own, so a caller that goes away (a cancelled RPC) does not stop
//! the others' writes, and its own write still runs to its end, committed or not, never half.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::postgres::{Connections, Planned};
use super::rows::PaymentRow;
use super::writer::Bound;
use super::{StoreError, closed, lock};

/// At most this many calls go in one statement (bounds its size and how long it runs).
const MAX_GROUP: usize = 64;

/// Fewer calls than this run side by side, each as the one-call statement: planning the
/// statement for many (≈ 0.3 ms of the server's CPU) costs more than it saves for two.
const MIN_SHARED: usize = 3;

/// A write that many calls can share a statement for.
#[derive(Debug)]
pub(super) struct GroupedWrite {
    /// The statement for one call, its values bound to `$1`, `$2`, ….
    pub(super) one: &'static str,
    /// The statement for many: `$1` is a JSON array with one object per call, holding the call's
    /// values under `fields` (the names of `$1`, `$2`, … of `one`, in order), read with
    /// `json_to_recordset`. Returns the same rows as `one` would for each call.
    pub(super) many: &'static str,
    pub(super) fields: &'static [&'static str],
    /// Which value (0-based) is the payment id: a returned row answers the call with its id.
    pub(super) key: usize,
}

/// The queues of the grouped writes on one connection set.
pub(super) struct Groups {
    connections: Arc<Connections>,
    /// Per write (by the address of its `one` statement).
    queues: Mutex<HashMap<usize, Arc<Mutex<Queue>>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Call>,
    /// A task is running this write's statements.
    running: bool,
}

type Reply = oneshot::Sender<Result<Vec<PaymentRow>, StoreError>>;

struct Call {
    values: Vec<Bound>,
    reply: Reply,
}

impl Groups {
    pub(super) fn new(connections: Arc<Connections>) -> Arc<Groups> {
        Arc::new(Groups {
            connections,
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `write` for `values` (alone or in a group) and answers its rows once committed.
    pub(super) async fn run(
        self: &Arc<Self>,
        write: &'static GroupedWrite,
        values: Vec<Bound>,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let queue = Arc::clone(
            lock(&self.queues)
                .entry(write.one.as_ptr() as usize)
                .or_default(),
        );
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&queue);
            queue.waiting.push_back(Call { values, reply });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(write, queue));
        }
        answer.await.map_err(|_| closed())?
    }

    /// Runs `write`'s groups while calls are waiting. It stops under the same lock that found
    /// the queue empty, so a call queued after that starts a new run.
    async fn drain(self: Arc<Self>, write: &'static GroupedWrite, queue: Arc<Mutex<Queue>>) {
        let mut slot = Slot(Some(queue));
        loop {
            let group = {
                let queue = slot.0.as_ref().expect("held until the loop ends");
                let mut queue = lock(queue);
                match take_group(&mut queue, write.key) {
                    Some(group) => group,
                    None => {
                        queue.running = false;
                        drop(queue);
                        slot.0 = None;
                        return;
                    }
                }
            };
            self.run_group(write, group).await;
        }
    }

    async fn run_group(&self, write: &'static GroupedWrite, group: Vec<Call>) {
        if group.len() < MIN_SHARED {
            // Side by side, each on a connection of its own.
            futures::future::join_all(group.into_iter().map(|call| self.run_alone(write, call)))
                .await;
            return;
        }
        let values = group_json(write.fields, group.iter().map(|call| &call.values));
        let result = self
            .connections
            .fetch::<PaymentRow>(
                write.many,
                vec![Bound::Text(Some(values))],
                Planned::EachRun,
            )
            .await;
        match result {
            Ok(rows) => answer_rows(write.key, group, rows),
            Err(StoreError::Unavailable(error)) => {
                let message = error.to_string();
                for call in group {
                    let _ = call
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone().into())));
                }
            }
            Err(error) => {
                tracing::debug!(%error, calls = group.len(), "a grouped write was refused; each call runs alone");
                // One after another, so that calls that collided see each other's writes.
                for call in group {
                    self.run_alone(write, call).await;
                }
            }
        }
    }

    async fn run_alone(&self, write: &'static GroupedWrite, call: Call) {
        let result = self.connections.fetch_rows(write.one, call.values).await;
        let _ = call.reply.send(result);
    }
}

/// The queue a task is running; marked not running if the task ends without doing so (a panic).
struct Slot(Option<Arc<Mutex<Queue>>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            lock(&queue).running = false;
        }
    }
}

/// The next group: waiting calls in order, at most [`MAX_GROUP`], one per payment id (a call
/// whose id is already in the group stays first in line for the next). None when none wait.
fn take_group(queue: &mut Queue, key: usize) -> Option<Vec<Call>> {
    if queue.waiting.is_empty() {
        return None;
    }
    let mut group = Vec::new();
    let mut ids = HashSet::new();
    let mut later = VecDeque::new();
    while group.len() < MAX_GROUP {
        let Some(call) = queue.waiting.pop_front() else {
            break;
        };
        if ids.insert(payment_id(&call.values, key).to_owned()) {
            group.push(call);
        } else {
            later.push_back(call);
        }
    }
    later.append(&mut queue.waiting);
    queue.waiting = later;
    Some(group)
}

fn payment_id(values: &[Bound], key: usize) -> &str {
    match values.get(key) {
        Some(Bound::Text(Some(id))) => id,
        _ => "",
    }
}

/// The calls' values as a JSON array of objects, `fields` naming the values in order.
fn group_json<'a>(fields: &[&str], calls: impl Iterator<Item = &'a Vec<Bound>>) -> String {
    let mut json = String::from("[");
    for (n, values) in calls.enumerate() {
        json.push_str(if n == 0 { "{" } else { ",{" });
        for (i, (field, value)) in fields.iter().zip(values).enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push('"');
            json.push_str(field);
            json.push_str("\":");
            match value {
                // Serializing a string cannot fail.
                Bound::Text(Some(text)) => {
                    json.push_str(&serde_json::to_string(text).unwrap_or_default())
                }
                Bound::Int(Some(int)) => json.push_str(&int.to_string()),
                Bound::Text(None) | Bound::Int(None) => json.push_str("null"),
            }
        }
        json.push('}');
    }
    json.push(']');
    json
}

/// Hands each call the rows that carry its payment id.
fn answer_rows(key: usize, group: Vec<Call>, rows: Vec<PaymentRow>) {
    let mut by_id: HashMap<String, Vec<PaymentRow>> = HashMap::new();
    for row in rows {
        by_id
            .entry(row.payment_id().to_owned())
            .or_default()
            .push(row);
    }
    for call in group {
        let rows = by_id
            .remove(payment_id(&call.values, key))
            .unwrap_or_default();
        let _ = call.reply.send(Ok(rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> Call {
        let (reply, _) = oneshot::channel();
        Call {
            values: vec![Bound::Int(Some(1)), Bound::text(id)],
            reply,
        }
    }

    fn ids(calls: &[Call]) -> Vec<&str> {
        calls
            .iter()
            .map(|call| payment_id(&call.values, 1))
            .collect()
    }

    #[test]
    fn a_group_takes_one_call_per_payment_and_the_rest_keep_their_order() {
        let mut queue = Queue::default();
        for id in ["a", "b", "a", "c", "b", "a"] {
            queue.waiting.push_back(call(id));
        }
        let first = take_group(&mut queue, 1).expect("a group");
        assert_eq!(ids(&first), ["a", "b", "c"]);
        let second = take_group(&mut queue, 1).expect("a group");
        assert_eq!(ids(&second), ["a", "b"]);
        let third = take_group(&mut queue, 1).expect("a group");
        assert_eq!(ids(&third), ["a"]);
        assert!(take_group(&mut queue, 1).is_none());
    }

    #[test]
    fn a_group_holds_at_most_max_group_calls() {
        let mut queue = Queue::default();
        for n in 0..MAX_GROUP + 5 {
            queue.waiting.push_back(call(&format!("pay_{n}")));
        }
        assert_eq!(take_group(&mut queue, 1).expect("a group").len(), MAX_GROUP);
        assert_eq!(take_group(&mut queue, 1).expect("a group").len(), 5);
    }

    #[test]
    fn the_group_json_names_every_value_and_escapes_text() {
        let values = [
            vec![
                Bound::text("say \"hi\"\n"),
                Bound::Int(Some(-7)),
                Bound::Text(None),
            ],
            vec![Bound::text("ż"), Bound::Int(None), Bound::text("\\")],
        ];
        let json = group_json(&["a", "b", "c"], values.iter());
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!([
                {"a": "say \"hi\"\n", "b": -7, "c": null},
                {"a": "ż", "b": null, "c": "\\"}
            ])
        );
    }
}
