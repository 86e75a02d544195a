//! Live state in Redis through fred, shared by every API server and worker.
//!
//! Keys, all under a configurable prefix `P`:
//! - `P:job:<id>`: the job's current state, its status rank then JSON, expiring
//!   24 h after its last update;
//! - `P:q:<queue>`: a queue's waiting jobs, a sorted set of job ids scored by
//!   created_at (microseconds), so a job queued again keeps its place;
//! - `P:taken`: jobs workers took and have not settled, scored by the time
//!   (Redis's clock, ms) they were taken; the sweeper reclaims old entries;
//! - `P:wake:<queue>`: a list of tokens, one per job queued, that idle
//!   workers wait on (BLPOP) before they take (scripts cannot block);
//! - `P:queues`: the names of every queue used, for the metrics;
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

use super::{Hub, LiveError, LiveJob, LiveMessage, LiveState, Queued, JOB_TTL};
use crate::domain::{Error, Job};

pub struct RedisLive {
    commands: Client,
    /// BLPOP blocks its connection, so it gets one of its own.
    dispatch: Mutex<Client>,
    subscriber: SubscriberClient,
    prefix: String,
    hub: std::sync::Arc<Hub>,
    router: tokio::task::JoinHandle<()>,
}

/// SET unless the stored state is later: values are "<rank><json>".
const PUT_JOB: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and tonumber(string.sub(current, 1, 1)) > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
return 1
"#;

/// Queues each job that is neither waiting, taken, nor started (its state's
/// rank above 0); first puts the first job's state when ARGV[1] is a rank.
/// KEYS: taken, queue names, then (queue, state, wake) per job.
/// ARGV: rank or '', JSON, TTL, then (id, queue name, place) per job.
/// Returns the ids it queued.
const DISPATCH: &str = r#"
if ARGV[1] ~= '' then
  local current = redis.call('GET', KEYS[4])
  if not (current and tonumber(string.sub(current, 1, 1)) > tonumber(ARGV[1])) then
    redis.call('SET', KEYS[4], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
  end
end
local added = {}
for k = 0, (#KEYS - 2) / 3 - 1 do
  local queue, state, wake = KEYS[3 + 3 * k], KEYS[4 + 3 * k], KEYS[5 + 3 * k]
  local id, name, place = ARGV[4 + 3 * k], ARGV[5 + 3 * k], ARGV[6 + 3 * k]
  if not redis.call('ZSCORE', queue, id) and not redis.call('ZSCORE', KEYS[1], id) then
    local current = redis.call('GET', state)
    if not current or string.sub(current, 1, 1) == '0' then
      redis.call('ZADD', queue, place, id)
      redis.call('SADD', KEYS[2], name)
      redis.call('LPUSH', wake, '1')
      redis.call('LTRIM', wake, 0, 1023)
      added[#added + 1] = id
    end
  end
end
return added
"#;

/// Takes the oldest job of the given queues into `taken`. When every one is
/// empty, drops their stale wake tokens. KEYS: taken, the n queues, their n
/// wake lists.
const TAKE: &str = r#"
local n = (#KEYS - 1) / 2
local best, best_queue, best_place
for i = 2, n + 1 do
  local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if head[1] then
    local place = tonumber(head[2])
    if not best or place < best_place then
      best, best_queue, best_place = head[1], KEYS[i], place
    end
  end
end
if not best then
  for i = n + 2, #KEYS do
    redis.call('DEL', KEYS[i])
  end
  return false
end
redis.call('ZREM', best_queue, best)
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), best)
return best
"#;

/// Removes (and returns) taken entries older than ARGV[1] ms.
const RECLAIM: &str = r#"
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 1000)
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
end
return stale
"#;

/// Each queue's name and length: name, length, name, length...
const DEPTHS: &str = r#"
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  out[#out + 1] = name
  out[#out + 1] = tostring(redis.call('ZCARD', ARGV[1] .. name))
end
return out
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

    fn queue_key(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    fn wake_key(&self, queue: &str) -> String {
        format!("{}:wake:{queue}", self.prefix)
    }

    fn taken_key(&self) -> String {
        format!("{}:taken", self.prefix)
    }

    fn queues_key(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Runs DISPATCH for `jobs`, putting `state` (rank, JSON) of the first
    /// one before.
    async fn run_dispatch(
        &self,
        jobs: &[Queued],
        state: Option<(u8, String)>,
    ) -> Result<Vec<Uuid>, LiveError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = vec![self.taken_key(), self.queues_key()];
        let mut args = match state {
            Some((rank, json)) => vec![rank.to_string(), json, JOB_TTL.as_secs().to_string()],
            None => vec![String::new(), String::new(), String::new()],
        };
        for job in jobs {
            keys.extend([
                self.queue_key(&job.queue),
                self.job_key(job.id),
                self.wake_key(&job.queue),
            ]);
            args.extend([
                job.id.to_string(),
                job.queue.clone(),
                job.created_at.to_string(),
            ]);
        }
        let added: Vec<String> = self
            .commands
            .eval(DISPATCH, keys, args)
            .await
            .map_err(live_error)?;
        Ok(added
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    async fn take(&self, queues: &[String]) -> Result<Option<Uuid>, LiveError> {
        let mut keys = vec![self.taken_key()];
        keys.extend(queues.iter().map(|q| self.queue_key(q)));
        keys.extend(queues.iter().map(|q| self.wake_key(q)));
        let taken: Option<String> = self
            .commands
            .eval(TAKE, keys, Vec::<String>::new())
            .await
            .map_err(live_error)?;
        Ok(taken.and_then(|id| Uuid::parse_str(&id).ok()))
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
        self.run_dispatch(&[Queued::of(job)], Some((job.status.rank(), value)))
            .await
            .map(drop)
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

    async fn dispatch(&self, jobs: &[Queued]) -> Result<Vec<Uuid>, LiveError> {
        let mut added = Vec::new();
        // Bounded scripts: each holds Redis for a moment only.
        for chunk in jobs.chunks(200) {
            added.extend(self.run_dispatch(chunk, None).await?);
        }
        Ok(added)
    }

    async fn next_dispatched(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Uuid>, LiveError> {
        let deadline = tokio::time::Instant::now() + wait;
        let wake_keys: Vec<String> = queues.iter().map(|q| self.wake_key(q)).collect();
        loop {
            if let Some(id) = self.take(queues).await? {
                return Ok(Some(id));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Wait for a token (or the deadline), then try to take again.
            let client = self.dispatch.lock().await;
            let woke = client
                .with_options(&Options {
                    timeout: Some(left + Duration::from_secs(5)),
                    ..Default::default()
                })
                .blpop::<Option<(String, String)>, _>(
                    wake_keys.clone(),
                    left.as_secs_f64().max(0.01),
                )
                .await;
            match woke {
                Ok(_) => {}
                Err(e) if *e.kind() == ErrorKind::Timeout => return Ok(None),
                Err(e) => return Err(live_error(e)),
            }
        }
    }

    async fn settle(&self, id: Uuid) -> Result<(), LiveError> {
        self.commands
            .zrem::<i64, _, _>(self.taken_key(), id.to_string())
            .await
            .map(drop)
            .map_err(live_error)
    }

    async fn reclaim(&self, idle: Duration) -> Result<Vec<Uuid>, LiveError> {
        let stale: Vec<String> = self
            .commands
            .eval(
                RECLAIM,
                vec![self.taken_key()],
                vec![idle.as_millis().to_string()],
            )
            .await
            .map_err(live_error)?;
        Ok(stale
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    async fn queue_depths(&self) -> Result<Vec<(String, u64)>, LiveError> {
        let flat: Vec<String> = self
            .commands
            .eval(
                DEPTHS,
                vec![self.queues_key()],
                vec![format!("{}:q:", self.prefix)],
            )
            .await
            .map_err(live_error)?;
        let mut depths: Vec<(String, u64)> = flat
            .chunks(2)
            .filter_map(|pair| Some((pair.first()?.clone(), pair.get(1)?.parse().ok()?)))
            .collect();
        depths.sort();
        Ok(depths)
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
