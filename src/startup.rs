//! Starting before the servers a process needs are up: a deployment starts
//! everything at once (`docker compose up`, a Kubernetes rollout), so the
//! history database and Redis may accept connections only some seconds later.
//! A process retries with backoff for `CONNECT_TIMEOUT_SECONDS` instead of
//! exiting at once; errors that waiting cannot fix (a wrong password, a bad
//! URL) end it at once.

use std::future::Future;
use std::time::Duration;

use crate::domain::Error;

/// Runs `attempt` until it succeeds, fails with something other than
/// `Unavailable`, or `timeout` has passed; logs each failure with `address`
/// (already without its password) and the next delay.
pub async fn retry<T, F, Fut>(
    what: &str,
    address: &str,
    timeout: Duration,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delays = crate::retry::STARTUP.delays();
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e @ Error::Unavailable { .. }) => e,
            Err(e) => return Err(e),
        };
        let cause = crate::domain::error_chain(&error);
        let delay = delays.next().unwrap_or(crate::retry::STARTUP.max);
        if tokio::time::Instant::now() + delay > deadline {
            return Err(Error::Config(format!(
                "{what} at {address} is still unreachable after {} s \
                 (--connect-timeout-seconds, CONNECT_TIMEOUT_SECONDS): {cause}; \
                 check that it runs and that the address is right",
                timeout.as_secs()
            )));
        }
        tracing::warn!(
            address,
            next_attempt_in_ms = delay.as_millis() as u64,
            error = %cause,
            "{what} is not reachable yet; trying again in {delay:?}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// `url` without its password: `mysql://user:secret@host/db` reads
/// `mysql://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            let hidden = if credentials.contains(':') {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("mysql://runner:s3cr:et@mariadb:3306/db?x=1"),
            "mysql://runner:***@mariadb:3306/db?x=1"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1:3306/db"),
            "mysql://root@127.0.0.1:3306/db"
        );
        assert_eq!(redact("redis://:pw@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(redact("sqlite://data/a.db"), "sqlite://data/a.db");
    }
}
