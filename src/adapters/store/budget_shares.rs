//! The replicas' shares of the Stripe account's request budget (`stripe_budget_share`, on
//! PostgreSQL only). Each replica renews its row every few seconds, under a table lock so that
//! renewals run one at a time; each takes an equal part of the budget among the live replicas,
//! but never more than the others leave: a replica joining waits (with a share of 0) until the
//! others gave up part of theirs, and the shares never add up to more than the whole.
//!
//! Times are the database's clock, so replicas' clocks need not agree.

use std::time::Duration;

use super::{Backend, Store};
use crate::app::ports::StoreError;

/// The whole budget, in the table's unit (millionths).
const WHOLE: i64 = 1_000_000;

/// The database's time, unix ms.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A replica's share after a renewal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetShare {
    /// Of the whole budget, 0 to 1.
    pub fraction: f64,
    /// Live replicas, this one included.
    pub replicas: u32,
    /// Whether this replica has the equal part (false while others still hold more).
    pub settled: bool,
}

/// The share of `replica` given the live others' shares (millionths): an equal part, at most
/// what the others leave.
fn share_of(others: &[i64]) -> (i64, bool) {
    let replicas = others.len() as i64 + 1;
    let equal = WHOLE / replicas;
    let left = (WHOLE - others.iter().sum::<i64>()).max(0);
    (equal.min(left), left >= equal)
}

impl Store {
    /// Renews `replica`'s share of the Stripe budget for `lease`, dropping lapsed shares first.
    /// `None` on SQLite (one replica: the whole budget is its own).
    pub async fn renew_budget_share(
        &self,
        replica: &str,
        lease: Duration,
    ) -> Result<Option<BudgetShare>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.write.begin().await?;
        sqlx::query("lock table stripe_budget_share in share row exclusive mode")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "delete from stripe_budget_share where lease_until < {NOW_MS}"
        ))
        .execute(&mut *tx)
        .await?;
        let others: Vec<(i64,)> =
            sqlx::query_as("select share_ppm from stripe_budget_share where replica_id <> $1")
                .bind(replica)
                .fetch_all(&mut *tx)
                .await?;
        let others: Vec<i64> = others.into_iter().map(|(share,)| share).collect();
        let (share, settled) = share_of(&others);
        sqlx::query(&format!(
            "insert into stripe_budget_share (replica_id, share_ppm, lease_until) \
             values ($1, $2, {NOW_MS} + $3) \
             on conflict (replica_id) do update \
             set share_ppm = excluded.share_ppm, lease_until = excluded.lease_until"
        ))
        .bind(replica)
        .bind(share)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(BudgetShare {
            fraction: share as f64 / WHOLE as f64,
            replicas: u32::try_from(others.len() + 1).unwrap_or(u32::MAX),
            settled,
        }))
    }

    /// Gives `replica`'s share back at once (a replica stopping).
    pub async fn release_budget_share(&self, replica: &str) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        sqlx::query("delete from stripe_budget_share where replica_id = $1")
            .bind(replica)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_an_equal_part_at_most_what_the_others_leave() {
        assert_eq!(share_of(&[]), (WHOLE, true), "alone: the whole budget");
        // A third replica joins two that hold half each: nothing until they give some up.
        assert_eq!(share_of(&[WHOLE / 2, WHOLE / 2]), (0, false));
        // One of them renewed to a third.
        assert_eq!(share_of(&[WHOLE / 3, WHOLE / 2]), (166_667, false));
        assert_eq!(share_of(&[WHOLE / 3, WHOLE / 3]), (WHOLE / 3, true));
        // One of three died and its row lapsed: the survivors go up to half each.
        assert_eq!(share_of(&[WHOLE / 3]), (WHOLE / 2, true));
        assert_eq!(share_of(&[WHOLE / 2]), (WHOLE / 2, true));
    }
}
