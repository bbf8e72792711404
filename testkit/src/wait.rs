//! How long a test waits for anything, and polling until something holds.

use std::time::{Duration, Instant};

/// How long any single expectation may wait before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Between two looks at something that is not there yet.
const POLL: Duration = Duration::from_millis(20);

/// Calls `look` until it returns `Ok`, and fails the test after `limit` naming `what` and the
/// last `Err`, which says what was there instead.
pub async fn until<T>(
    what: &str,
    limit: Duration,
    mut look: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match look().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for code off any runtime: it sleeps the thread between looks.
pub fn until_blocking<T>(
    what: &str,
    limit: Duration,
    mut look: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match look() {
            Ok(value) => return value,
            Err(seen) => assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {seen}"
            ),
        }
        std::thread::sleep(POLL);
    }
}
