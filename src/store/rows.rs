//! Jobs as rows of the `jobs` table and back, and stdout in pieces.

use std::collections::BTreeMap;

use sea_orm::ActiveValue::Set;

use super::entities::jobs;
use uuid::Uuid;

use crate::domain::{from_micros, to_micros, Error, HostStats, Job, JobResult, Resolved, Source};

/// Largest piece of stdout stored in one row (and one statement).
pub(super) const OUTPUT_CHUNK: usize = 1 << 20;

/// Splits text into pieces of at most `max` bytes, on character boundaries.
pub(super) fn utf8_chunks(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

pub(super) fn to_row(job: &Job) -> Result<jobs::ActiveModel, Error> {
    let json = |what: &str, value: Result<String, serde_json::Error>| {
        value.map_err(|e| Error::internal(format!("encode {what}"), e))
    };
    Ok(jobs::ActiveModel {
        id: Set(job.id.to_string()),
        request_id: Set(job.request_id.clone()),
        status: Set(job.status.as_str().to_owned()),
        playbook: Set(job.spec.playbook.clone()),
        extra_vars: Set(json(
            "extra_vars",
            serde_json::to_string(&job.spec.extra_vars),
        )?),
        inventory: Set(json(
            "inventory",
            serde_json::to_string(&job.spec.inventory),
        )?),
        options: Set(json("options", serde_json::to_string(&job.spec.options))?),
        timeout_seconds: Set(job.spec.timeout_seconds as i32),
        created_at: Set(to_micros(job.created_at)),
        started_at: Set(job.started_at.map(to_micros)),
        finished_at: Set(job.finished_at.map(to_micros)),
        rc: Set(None),
        stdout_truncated: Set(false),
        stats: Set(None),
        error: Set(job.error.clone()),
        error_reason: Set(job.error_reason.map(|r| r.as_str().to_owned())),
        attempt: Set(job.attempt as i32),
        worker_id: Set(None),
        lease_expires_at: Set(None),
        cancel_requested: Set(false),
        run_host: Set(None),
        run_pgid: Set(None),
        last_seq: Set(0),
        submitted_by: Set(job.submitted_by.clone()),
        has_secrets: Set(job.has_secrets),
        canceled_by: Set(job.canceled_by.clone()),
        request_scope: Set(job.submitted_by.clone().unwrap_or_default()),
        queue: Set(job.queue.clone()),
        source: Set(match &job.spec.source {
            Source::Catalogue => None,
            source => Some(json("source", serde_json::to_string(source))?),
        }),
        source_commit: Set(job.resolved.source_commit.clone()),
        source_ref: Set(job.resolved.source_ref.clone()),
        inventory_commit: Set(job.resolved.inventory_commit.clone()),
        credentials: Set(if job.spec.credentials.is_empty() {
            None
        } else {
            Some(json(
                "credentials",
                serde_json::to_string(&job.spec.credentials),
            )?)
        }),
    })
}

pub(super) fn from_row(row: jobs::Model) -> Result<Job, Error> {
    let corrupt =
        |what: &str, e: String| Error::internal(format!("decode {what} of job {}", row.id), e);
    let result = row.rc.map(|rc| -> Result<JobResult, Error> {
        let stats: BTreeMap<String, HostStats> = match &row.stats {
            Some(s) => serde_json::from_str(s).map_err(|e| corrupt("stats", e.to_string()))?,
            None => BTreeMap::new(),
        };
        Ok(JobResult {
            rc,
            stdout: String::new(),
            stdout_truncated: row.stdout_truncated,
            stats,
        })
    });
    Ok(Job {
        id: Uuid::parse_str(&row.id).map_err(|e| corrupt("id", e.to_string()))?,
        request_id: row.request_id.clone(),
        status: row.status.parse().map_err(|e| corrupt("status", e))?,
        spec: crate::domain::JobSpec {
            playbook: row.playbook.clone(),
            source: match &row.source {
                Some(s) => serde_json::from_str(s).map_err(|e| corrupt("source", e.to_string()))?,
                None => Source::Catalogue,
            },
            extra_vars: serde_json::from_str(&row.extra_vars)
                .map_err(|e| corrupt("extra_vars", e.to_string()))?,
            inventory: serde_json::from_str(&row.inventory)
                .map_err(|e| corrupt("inventory", e.to_string()))?,
            options: serde_json::from_str(&row.options)
                .map_err(|e| corrupt("options", e.to_string()))?,
            timeout_seconds: row.timeout_seconds.max(0) as u32,
            credentials: match &row.credentials {
                Some(c) => {
                    serde_json::from_str(c).map_err(|e| corrupt("credentials", e.to_string()))?
                }
                None => Vec::new(),
            },
        },
        created_at: from_micros(row.created_at),
        started_at: row.started_at.map(from_micros),
        finished_at: row.finished_at.map(from_micros),
        result: result.transpose()?,
        error: row.error.clone(),
        error_reason: match &row.error_reason {
            Some(r) => Some(r.parse().map_err(|e| corrupt("error_reason", e))?),
            None => None,
        },
        attempt: row.attempt.max(0) as u32,
        submitted_by: row.submitted_by.clone(),
        has_secrets: row.has_secrets,
        canceled_by: row.canceled_by.clone(),
        queue: row.queue.clone(),
        resolved: Resolved {
            source_commit: row.source_commit.clone(),
            source_ref: row.source_ref.clone(),
            inventory_commit: row.inventory_commit.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::utf8_chunks;

    #[test]
    fn chunks_keep_characters_whole() {
        let text = "ab\u{e9}cd\u{e9}";
        let chunks: Vec<&str> = utf8_chunks(text, 3).collect();
        assert_eq!(chunks.concat(), text);
        assert!(chunks.iter().all(|c| c.len() <= 3));
        assert_eq!(utf8_chunks("", 3).count(), 0);
    }
}
