//! Waiting for a condition with a deadline, never for a fixed time.

use std::time::Duration;

use tokio::time::Instant;

/// The pause between two checks of a condition.
const POLL: Duration = Duration::from_millis(50);

/// Checks `condition` until it returns `Ok`, pausing [`POLL`] between checks, for at most
/// `within`. Returns that `Ok`, or once `within` has passed the last `Err`, which holds what was
/// seen instead, for the caller to report (`.expect("what was awaited")`) or to use.
pub async fn eventually<T, E, Check>(
    within: Duration,
    mut condition: impl FnMut() -> Check,
) -> Result<T, E>
where
    Check: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match condition().await {
            Ok(met) => return Ok(met),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
