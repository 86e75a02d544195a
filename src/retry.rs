//! One retry policy type for every loop that waits and tries again, with the
//! policies the service uses named here: exponential backoff from `first`,
//! doubling up to `max`, for at most `retries` retries (or without end,
//! where the caller stops on its own condition).

use std::time::Duration;

/// How a loop waits between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Retries after the first attempt; `None`: until the caller stops.
    pub retries: Option<u32>,
}

/// Reaching the history database and Redis at start (bounded by
/// `CONNECT_TIMEOUT_SECONDS`, not by a count).
pub const STARTUP: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(5),
    retries: None,
};

/// A history read a long-lived stream depends on (a watch): about 6 s in
/// all, so a database hiccup does not end the stream.
pub const HISTORY_READ: Backoff = Backoff {
    first: Duration::from_millis(200),
    max: Duration::from_millis(3200),
    retries: Some(5),
};

/// Reading back a job this worker just claimed: the claim is committed, so a
/// failed read must not drop the job (about 6 s in all).
pub const CLAIMED_READ: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_millis(3200),
    retries: Some(6),
};

/// Recording a run's outcome or events while the database is unreachable:
/// until the lease is lost (the caller's condition).
pub const RUN_RECORD: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    retries: None,
};

/// Storing event batches: quicker first retry, as a run is producing more.
pub const EVENT_RECORD: Backoff = Backoff {
    first: Duration::from_millis(50),
    ..RUN_RECORD
};

/// Bringing the live state up to date with a terminal job after Redis failed
/// (in the background, about 13 minutes in all).
pub const LIVE_CATCH_UP: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(30),
    retries: Some(30),
};

/// Taking a job's secret vars from the live state at the start of its run:
/// a few seconds, then the job fails (SECRETS_LOST) rather than wait.
pub const SECRETS_READ: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_millis(500),
    retries: Some(9),
};

/// A worker whose dispatch or claim failed tries again after this, without
/// end (the job stays PENDING; the sweeper queues it again if need be).
pub const DISPATCH_ERROR: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(1),
    retries: None,
};

/// The client following a job (`run`, `watch`) while the server is away:
/// about a minute, then it gives up.
pub const CLIENT_RECONNECT: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(1),
    retries: Some(60),
};

impl Backoff {
    /// The delays before each retry, in order; ends after `retries`.
    pub fn delays(&self) -> Delays {
        Delays {
            next: self.first,
            max: self.max,
            left: self.retries,
        }
    }
}

/// The delays of a [`Backoff`].
#[derive(Debug, Clone)]
pub struct Delays {
    next: Duration,
    max: Duration,
    left: Option<u32>,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(left) = &mut self.left {
            *left = left.checked_sub(1)?;
        }
        let delay = self.next.min(self.max);
        self.next = self.next.saturating_mul(2);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stop_after_the_retries() {
        let ms = |d: Duration| d.as_millis() as u64;
        let delays: Vec<u64> = HISTORY_READ.delays().map(ms).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200]);
        let delays: Vec<u64> = RUN_RECORD.delays().take(7).map(ms).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(LIVE_CATCH_UP.delays().count(), 30);
        let none = Backoff {
            retries: Some(0),
            ..STARTUP
        };
        assert_eq!(none.delays().next(), None);
    }
}
