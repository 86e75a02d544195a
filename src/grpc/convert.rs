//! Conversions between protobuf messages and domain types.

use chrono::{DateTime, Utc};
use prost_types::{value::Kind, ListValue, Struct, Timestamp, Value as PbValue};
use serde_json::{Map, Number, Value};

use crate::app::{StatusFilter, WatchItem};
use crate::domain::validate::{RawGitFile, RawInventory, RawSource, Submission};
use crate::domain::{GitFile, Inventory, Job, JobEvent, JobOptions, JobStatus, RoleSource, Source};
use crate::pb;

/// Largest integer a double holds exactly (2^53).
const MAX_SAFE_INT: f64 = 9_007_199_254_740_992.0;

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
}

/// A protobuf Struct as JSON. Struct numbers are doubles; whole numbers
/// within 2^53 become JSON integers, so `3` reaches Ansible as 3, not 3.0.
pub fn struct_to_json(s: Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect()
}

fn value_to_json(v: PbValue) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INT {
                Value::Number(Number::from(n as i64))
            } else {
                Number::from_f64(n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

pub fn json_to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    PbValue { kind: Some(kind) }
}

fn status_to_pb(status: JobStatus) -> pb::JobStatus {
    match status {
        JobStatus::Pending => pb::JobStatus::Pending,
        JobStatus::Running => pb::JobStatus::Running,
        JobStatus::Successful => pb::JobStatus::Successful,
        JobStatus::Failed => pb::JobStatus::Failed,
        JobStatus::Canceled => pb::JobStatus::Canceled,
        JobStatus::TimedOut => pb::JobStatus::TimedOut,
    }
}

/// A status filter: UNSPECIFIED means any; unknown numbers are refused.
pub fn status_filter(value: i32) -> StatusFilter {
    match pb::JobStatus::try_from(value) {
        Ok(pb::JobStatus::Unspecified) => StatusFilter::Any,
        Ok(pb::JobStatus::Pending) => StatusFilter::Is(JobStatus::Pending),
        Ok(pb::JobStatus::Running) => StatusFilter::Is(JobStatus::Running),
        Ok(pb::JobStatus::Successful) => StatusFilter::Is(JobStatus::Successful),
        Ok(pb::JobStatus::Failed) => StatusFilter::Is(JobStatus::Failed),
        Ok(pb::JobStatus::Canceled) => StatusFilter::Is(JobStatus::Canceled),
        Ok(pb::JobStatus::TimedOut) => StatusFilter::Is(JobStatus::TimedOut),
        Err(_) => StatusFilter::Unknown(value.into()),
    }
}

/// One WatchJob message.
pub fn watch_response(sequence: u64, item: WatchItem) -> pb::WatchJobResponse {
    use pb::watch_job_response::Kind as PbKind;
    let kind = match item {
        WatchItem::Snapshot(job) => PbKind::Snapshot(job_to_pb(&job)),
        WatchItem::Event(event) => PbKind::Event(event_to_pb(&event)),
        WatchItem::StatusChange(job) => PbKind::StatusChange(job_to_pb(&job)),
    };
    pb::WatchJobResponse {
        sequence,
        kind: Some(kind),
    }
}

pub fn job_to_pb(job: &Job) -> pb::Job {
    let spec = &job.spec;
    pb::Job {
        job_id: job.id.to_string(),
        status: status_to_pb(job.status) as i32,
        playbook: spec.playbook.clone(),
        extra_vars: Some(json_to_struct(&spec.extra_vars)),
        inventory: Some(inventory_to_pb(&spec.inventory)),
        options: Some(options_to_pb(&spec.options)),
        created_at: Some(timestamp(job.created_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        result: job.result.as_ref().map(|r| pb::JobResult {
            rc: r.rc,
            stdout: r.stdout.clone(),
            stdout_truncated: r.stdout_truncated,
            stats: r
                .stats
                .iter()
                .map(|(host, s)| {
                    (
                        host.clone(),
                        pb::HostStats {
                            ok: s.ok,
                            changed: s.changed,
                            failed: s.failed,
                            skipped: s.skipped,
                            unreachable: s.unreachable,
                            rescued: s.rescued,
                            ignored: s.ignored,
                        },
                    )
                })
                .collect(),
        }),
        error: job.error.clone().unwrap_or_default(),
        error_reason: job
            .error_reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        timeout_seconds: spec.timeout_seconds,
        attempt: job.attempt,
        submitted_by: job.submitted_by.clone().unwrap_or_default(),
        has_secret_extra_vars: job.has_secrets,
        canceled_by: job.canceled_by.clone().unwrap_or_default(),
        queue: job.queue.clone(),
        git_playbook: match &spec.source {
            Source::GitPlaybook(file) => Some(git_file_to_pb(file)),
            _ => None,
        },
        role: match &spec.source {
            Source::Role(role) => Some(pb::RoleSource {
                name: role.name.clone(),
                repo: role.repo.clone(),
                r#ref: role.git_ref.clone(),
                role_vars: Some(json_to_struct(&role.role_vars)),
                gather_facts: role.gather_facts,
            }),
            _ => None,
        },
        source_commit: job.resolved.source_commit.clone().unwrap_or_default(),
        source_ref: job.resolved.source_ref.clone().unwrap_or_default(),
        inventory_commit: job.resolved.inventory_commit.clone().unwrap_or_default(),
        credentials: spec.credentials.clone(),
    }
}

fn git_file_to_pb(file: &GitFile) -> pb::GitFile {
    pb::GitFile {
        repo: file.repo.clone(),
        r#ref: file.git_ref.clone(),
        path: file.path.clone(),
    }
}

fn git_file_from_pb(file: pb::GitFile) -> RawGitFile {
    RawGitFile {
        repo: file.repo,
        git_ref: file.r#ref,
        path: file.path,
    }
}

fn inventory_to_pb(inventory: &Inventory) -> pb::Inventory {
    use pb::inventory::Source;
    pb::Inventory {
        source: match inventory {
            Inventory::Localhost => None,
            Inventory::Hosts(hosts) => Some(Source::Hosts(hosts.join(","))),
            Inventory::Inline(doc) => Some(Source::Inline(json_to_struct(doc))),
            Inventory::Git(file) => Some(Source::Git(git_file_to_pb(file))),
        },
    }
}

fn options_to_pb(o: &JobOptions) -> pb::JobOptions {
    pb::JobOptions {
        check: o.check,
        diff: o.diff,
        tags: o.tags.clone(),
        skip_tags: o.skip_tags.clone(),
        limit: o.limit.clone(),
        verbosity: o.verbosity,
        forks: o.forks,
    }
}

pub fn submission(req: pb::SubmitJobRequest) -> Submission {
    use pb::inventory::Source;
    let options = req.options.unwrap_or_default();
    Submission {
        playbook: req.playbook,
        extra_vars: req.extra_vars.map(struct_to_json).unwrap_or_default(),
        inventory: match req.inventory.and_then(|i| i.source) {
            None => RawInventory::Unset,
            Some(Source::Hosts(hosts)) => RawInventory::Hosts(hosts),
            Some(Source::Inline(doc)) => RawInventory::Inline(struct_to_json(doc)),
            Some(Source::Git(file)) => RawInventory::Git(git_file_from_pb(file)),
        },
        options: JobOptions {
            check: options.check,
            diff: options.diff,
            tags: options.tags,
            skip_tags: options.skip_tags,
            limit: options.limit,
            verbosity: options.verbosity,
            forks: options.forks,
        },
        timeout_seconds: req.timeout_seconds,
        request_id: req.request_id,
        secret_extra_vars: req
            .secret_extra_vars
            .map(struct_to_json)
            .unwrap_or_default(),
        queue: req.queue,
        credentials: req.credentials,
        source: match req.source {
            None => RawSource::Catalogue,
            Some(pb::submit_job_request::Source::GitPlaybook(file)) => {
                RawSource::GitPlaybook(git_file_from_pb(file))
            }
            Some(pb::submit_job_request::Source::Role(role)) => RawSource::Role(RoleSource {
                name: role.name,
                repo: role.repo,
                git_ref: role.r#ref,
                role_vars: role.role_vars.map(struct_to_json).unwrap_or_default(),
                gather_facts: role.gather_facts,
            }),
        },
    }
}

fn event_to_pb(event: &JobEvent) -> pb::JobEvent {
    pb::JobEvent {
        sequence: event.seq,
        time: Some(timestamp(event.time)),
        event: event.event.clone(),
        host: event.host.clone(),
        task: event.task.clone(),
        play: event.play.clone(),
        stdout: event.stdout.clone(),
        event_data: Some(json_to_struct(&event.event_data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_become_integers() {
        let json: Map<String, Value> =
            serde_json::from_str(r#"{"n": 3, "f": 2.5, "list": [1, "a", null, {"b": true}]}"#)
                .unwrap();
        let back = struct_to_json(json_to_struct(&json));
        assert_eq!(back, json);
        assert_eq!(serde_json::to_string(&back["n"]).unwrap(), "3");
    }
}
