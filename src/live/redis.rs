//! Live state in Redis through fred, shared by every API server and worker.
//!
//! Keys, all under a configurable prefix `P`:
//! - `P:job:<id>`: the job's current state, its status rank then JSON, expiring
//!   24 h after its last update;
//! - `P:dispatch`: a list of pending job ids (LPUSH to dispatch, BRPOP to take);
//! - channel `P:ev:<id>`: the job's fan-out (events and status changes);
//! - `P:secret:<id>`: a job's secret extra vars, until a worker takes them;
//! - channel `P:cancel`: cancel requests for running jobs.

use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Message;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, Mutex};
use uuid::Uuid;

use super::{Hub, LiveError, LiveJob, LiveMessage, LiveState, JOB_TTL};
use crate::domain::{Error, Job};

pub struct RedisLive {
    commands: Client,
    /// BRPOP blocks its connection, so it gets one of its own.
    dispatch: Mutex<Client>,
    subscriber: SubscriberClient,
    prefix: String,
    hub: std::sync::Arc<Hub>,
    router: tokio::task::JoinHandle<()>,
}

/// SET unless the stored state is later: values are "<rank><json>".
const PUT_JOB: &str = r#"
if KEYS[2] then
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
local current = redis.call('GET', KEYS[1])
if current and tonumber(string.sub(current, 1, 1)) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
return 1
"#;

fn live_error(e: fred::error::Error) -> LiveError {
    LiveError(format!("redis: {e}"))
}

fn builder(url: &str, command_timeout: Duration) -> Result<Builder, fred::error::Error> {
    let mut builder = Builder::from_config(Config::from_url(url)?);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            p.broadcast_channel_capacity = 4096;
        })
        // Without a policy a client never recovers from a Redis restart.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

impl RedisLive {
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLive, Error> {
        let unavailable = |e: fred::error::Error| Error::Unavailable {
            what: "Redis",
            source: Box::new(e),
        };
        // A URL that does not parse will not get better by waiting.
        let invalid = |e: fred::error::Error| {
            Error::internal(
                format!("configure Redis at {}", crate::startup::redact(url)),
                e,
            )
        };
        let commands = builder(url, Duration::from_secs(5))
            .and_then(|b| b.build())
            .map_err(invalid)?;
        let dispatch = builder(url, Duration::ZERO)
            .and_then(|b| b.build())
            .map_err(invalid)?;
        let subscriber = builder(url, Duration::from_secs(5))
            .and_then(|b| b.build_subscriber_client())
            .map_err(invalid)?;
        commands.init().await.map_err(unavailable)?;
        dispatch.init().await.map_err(unavailable)?;
        let messages = subscriber.message_rx();
        subscriber.init().await.map_err(unavailable)?;
        subscriber.manage_subscriptions();

        let hub = std::sync::Arc::new(Hub::default());
        let events_prefix = format!("{prefix}:ev:");
        let cancel_channel = format!("{prefix}:cancel");
        subscriber
            .psubscribe(format!("{events_prefix}*"))
            .await
            .map_err(unavailable)?;
        subscriber
            .subscribe(cancel_channel.clone())
            .await
            .map_err(unavailable)?;
        let router = tokio::spawn(route(messages, hub.clone(), events_prefix, cancel_channel));
        Ok(RedisLive {
            commands,
            dispatch: Mutex::new(dispatch),
            subscriber,
            prefix: prefix.to_owned(),
            hub,
            router,
        })
    }

    fn job_key(&self, id: Uuid) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    fn queue_key(&self) -> String {
        format!("{}:dispatch", self.prefix)
    }
}

/// Delivers this process's share of the fan-out to local watchers.
async fn route(
    mut messages: broadcast::Receiver<Message>,
    hub: std::sync::Arc<Hub>,
    events_prefix: String,
    cancel_channel: String,
) {
    loop {
        let message = match messages.recv().await {
            Ok(message) => message,
            // Watchers that missed messages catch up from the history.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "fan-out lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let channel: &str = &message.channel;
        let Some(text) = message.value.as_string() else {
            continue;
        };
        if channel == cancel_channel {
            if let Ok(id) = Uuid::parse_str(&text) {
                hub.deliver_cancel(id);
            }
        } else if let Some(id) = channel.strip_prefix(events_prefix.as_str()) {
            match (
                Uuid::parse_str(id),
                serde_json::from_str::<LiveMessage>(&text),
            ) {
                (Ok(id), Ok(live)) => hub.deliver(id, live),
                _ => tracing::warn!(channel, "unreadable fan-out message"),
            }
        }
    }
}

#[async_trait]
impl LiveState for RedisLive {
    async fn put_job(&self, job: &Job) -> Result<(), LiveError> {
        let value =
            serde_json::to_string(&LiveJob::of(job)).map_err(|e| LiveError(e.to_string()))?;
        self.commands
            .eval::<i64, _, _, _>(
                PUT_JOB,
                vec![self.job_key(job.id)],
                vec![
                    job.status.rank().to_string(),
                    value,
                    JOB_TTL.as_secs().to_string(),
                ],
            )
            .await
            .map(drop)
            .map_err(live_error)
    }

    /// One round trip: the state and the dispatch in one script.
    async fn put_and_dispatch(&self, job: &Job) -> Result<(), LiveError> {
        let value =
            serde_json::to_string(&LiveJob::of(job)).map_err(|e| LiveError(e.to_string()))?;
        self.commands
            .eval::<i64, _, _, _>(
                PUT_JOB,
                vec![self.job_key(job.id), self.queue_key()],
                vec![
                    job.status.rank().to_string(),
                    value,
                    JOB_TTL.as_secs().to_string(),
                    job.id.to_string(),
                ],
            )
            .await
            .map(drop)
            .map_err(live_error)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<LiveJob>, LiveError> {
        let value: Option<String> = self
            .commands
            .get(self.job_key(id))
            .await
            .map_err(live_error)?;
        let Some(text) = value else {
            return Ok(None);
        };
        match text.get(1..).map(serde_json::from_str::<LiveJob>) {
            Some(Ok(job)) => Ok(Some(job)),
            _ => {
                // An entry from another version: the history answers instead.
                tracing::warn!(job_id = %id, "unreadable live state");
                Ok(None)
            }
        }
    }

    async fn forget_job(&self, id: Uuid) -> Result<(), LiveError> {
        self.commands
            .del::<i64, _>(self.job_key(id))
            .await
            .map(drop)
            .map_err(live_error)
    }

    async fn dispatch(&self, id: Uuid) -> Result<(), LiveError> {
        self.commands
            .lpush::<i64, _, _>(self.queue_key(), id.to_string())
            .await
            .map(drop)
            .map_err(live_error)
    }

    async fn next_dispatched(&self, wait: Duration) -> Result<Option<Uuid>, LiveError> {
        let client = self.dispatch.lock().await;
        let popped = client
            .with_options(&Options {
                timeout: Some(wait + Duration::from_secs(5)),
                ..Default::default()
            })
            .brpop::<Option<(String, String)>, _>(self.queue_key(), wait.as_secs_f64().max(0.01))
            .await;
        match popped {
            Ok(Some((_, id))) => Ok(Uuid::parse_str(&id).ok()),
            Ok(None) => Ok(None),
            Err(e) if *e.kind() == ErrorKind::Timeout => Ok(None),
            Err(e) => Err(live_error(e)),
        }
    }

    async fn queue_len(&self) -> Result<u64, LiveError> {
        self.commands
            .llen::<u64, _>(self.queue_key())
            .await
            .map_err(live_error)
    }

    async fn put_secrets(
        &self,
        job_id: Uuid,
        secrets: &Map<String, Value>,
    ) -> Result<(), LiveError> {
        let value = Value::Object(secrets.clone()).to_string();
        self.commands
            .set::<(), _, _>(
                format!("{}:secret:{job_id}", self.prefix),
                value,
                Some(Expiration::EX(JOB_TTL.as_secs() as i64)),
                None,
                false,
            )
            .await
            .map_err(live_error)
    }

    async fn take_secrets(&self, job_id: Uuid) -> Result<Option<Map<String, Value>>, LiveError> {
        let value: Option<String> = self
            .commands
            .getdel(format!("{}:secret:{job_id}", self.prefix))
            .await
            .map_err(live_error)?;
        Ok(value.and_then(|text| serde_json::from_str(&text).ok()))
    }

    async fn publish(&self, job_id: Uuid, message: &LiveMessage) -> Result<(), LiveError> {
        let text = serde_json::to_string(message).map_err(|e| LiveError(e.to_string()))?;
        self.commands
            .publish::<i64, _, _>(format!("{}:ev:{job_id}", self.prefix), text)
            .await
            .map(drop)
            .map_err(live_error)
    }

    async fn publish_cancel(&self, job_id: Uuid) -> Result<(), LiveError> {
        self.commands
            .publish::<i64, _, _>(format!("{}:cancel", self.prefix), job_id.to_string())
            .await
            .map(drop)
            .map_err(live_error)
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    async fn close(&self) {
        self.router.abort();
        let _ = self.subscriber.quit().await;
        let _ = self.dispatch.lock().await.quit().await;
        let _ = self.commands.quit().await;
    }
}
