//! How the client prints: ansible-playbook's colours, a progress line, job
//! tables and JSON.

use std::io::Write;
use std::time::Instant;

use serde_json::{json, Value};

use crate::pb;

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

/// Whether a stream gets colour by default: only when it is a terminal, and
/// never under `NO_COLOR` (set and not empty; <https://no-color.org>).
pub fn colour_by_default(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Colours text when asked to.
pub struct Painter {
    pub color: bool,
}

impl Painter {
    fn paint(&self, colour: &str, text: &str) -> String {
        if self.color {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// ansible-playbook's output, coloured line by line as it colours it.
    pub fn stdout(&self, text: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.split_inclusive('\n') {
            let (body, newline) = line.strip_suffix('\n').map_or((line, ""), |b| (b, "\n"));
            let colour = if body.starts_with("ok:") {
                Some(GREEN)
            } else if body.starts_with("changed:") {
                Some(YELLOW)
            } else if body.starts_with("skipping:") || body.starts_with("included:") {
                Some(CYAN)
            } else if body.starts_with("fatal:")
                || body.starts_with("failed:")
                || body.starts_with("[ERROR]")
            {
                Some(RED)
            } else {
                None
            };
            match colour {
                Some(colour) if !body.is_empty() => out.push_str(&self.paint(colour, body)),
                _ => out.push_str(body),
            }
            out.push_str(newline);
        }
        out
    }

    pub fn status(&self, status: i32) -> String {
        let name = status_name(status);
        let colour = match pb::JobStatus::try_from(status) {
            Ok(pb::JobStatus::Successful) => GREEN,
            Ok(pb::JobStatus::Failed | pb::JobStatus::TimedOut) => RED,
            Ok(pb::JobStatus::Canceled) => YELLOW,
            _ => CYAN,
        };
        self.paint(colour, &name)
    }
}

fn status_name(status: i32) -> String {
    pb::JobStatus::try_from(status)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_owned())
        .unwrap_or_else(|_| status.to_string())
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(crate::grpc::convert::from_timestamp)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn duration(job: &pb::Job) -> String {
    let start = job
        .started_at
        .as_ref()
        .and_then(crate::grpc::convert::from_timestamp);
    let end = job
        .finished_at
        .as_ref()
        .and_then(crate::grpc::convert::from_timestamp);
    match (start, end) {
        (Some(start), Some(end)) => {
            format!("{:.1}s", (end - start).num_milliseconds() as f64 / 1000.0)
        }
        _ => String::new(),
    }
}

/// What the job runs, in a few words: the catalogue playbook, the git
/// playbook's path (and commit, once resolved) or the role.
pub fn what_runs(job: &pb::Job) -> String {
    let at = |commit: &str| {
        if commit.is_empty() {
            String::new()
        } else {
            format!("@{}", &commit[..commit.len().min(12)])
        }
    };
    if let Some(git) = &job.git_playbook {
        return format!("{}{}", git.path, at(&job.source_commit));
    }
    if let Some(role) = &job.role {
        return format!("role {}{}", role.name, at(&job.source_commit));
    }
    job.playbook.clone()
}

pub fn job_table(jobs: &[pb::Job], painter: &Painter) -> String {
    let mut out = format!(
        "{:<36}  {:<10}  {:<24}  {:<19}  {}\n",
        "JOB ID", "STATUS", "PLAYBOOK", "CREATED", "DURATION"
    );
    for job in jobs {
        let status = status_name(job.status);
        let pad = " ".repeat(10usize.saturating_sub(status.len()));
        out.push_str(&format!(
            "{:<36}  {}{pad}  {:<24}  {:<19}  {}\n",
            job.job_id,
            painter.status(job.status),
            what_runs(job),
            time(&job.created_at),
            duration(job)
        ));
    }
    out
}

pub fn job_details(job: &pb::Job) -> String {
    let mut out = format!(
        "job:       {}\nstatus:    {}\nplaybook:  {}\ncreated:   {}\nstarted:   {}\nfinished:  {}\n",
        job.job_id,
        status_name(job.status),
        job.playbook,
        time(&job.created_at),
        time(&job.started_at),
        time(&job.finished_at)
    );
    let resolved = |commit: &str, reference: &str| match (commit, reference) {
        ("", _) => "(resolved when the run starts)".to_owned(),
        (commit, "") => commit.to_owned(),
        (commit, reference) => format!("{commit} ({reference})"),
    };
    let at = |r: &str| {
        if r.is_empty() {
            "HEAD".to_owned()
        } else {
            r.to_owned()
        }
    };
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<11}{value}\n"));
    if let Some(git) = &job.git_playbook {
        line(
            "source:",
            format!("{} {} at {}", git.repo, git.path, at(&git.r#ref)),
        );
        line("commit:", resolved(&job.source_commit, &job.source_ref));
    }
    if let Some(role) = &job.role {
        line("role:", role.name.clone());
        if !role.repo.is_empty() {
            line("source:", format!("{} at {}", role.repo, at(&role.r#ref)));
            line("commit:", resolved(&job.source_commit, &job.source_ref));
        }
    }
    if let Some(pb::inventory::Source::Git(git)) =
        job.inventory.as_ref().and_then(|i| i.source.as_ref())
    {
        line(
            "inventory:",
            format!("{} {} at {}", git.repo, git.path, at(&git.r#ref)),
        );
        line(
            "",
            format!("commit {}", resolved(&job.inventory_commit, "")),
        );
    }
    if !job.error.is_empty() {
        out.push_str(&format!(
            "error:     {} ({})\n",
            job.error, job.error_reason
        ));
    }
    if let Some(result) = &job.result {
        out.push_str(&format!("rc:        {}\n\n{}", result.rc, result.stdout));
    }
    out
}

/// A time for JSON: RFC 3339 in UTC, or null.
fn rfc3339(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(crate::grpc::convert::from_timestamp)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

/// The whole job as JSON: what GetJob returns (stdout included when the
/// server sent it; ListJobs leaves it empty).
pub fn job_json(job: &pb::Job) -> Value {
    let structure = |s: &Option<prost_types::Struct>| {
        Value::Object(
            s.clone()
                .map(crate::grpc::convert::struct_to_json)
                .unwrap_or_default(),
        )
    };
    let inventory = match job.inventory.as_ref().and_then(|i| i.source.as_ref()) {
        Some(pb::inventory::Source::Hosts(hosts)) => json!({ "hosts": hosts }),
        Some(pb::inventory::Source::Inline(doc)) => {
            json!({ "inline": structure(&Some(doc.clone())) })
        }
        Some(pb::inventory::Source::Git(git)) => {
            json!({ "git": {"repo": git.repo, "ref": git.r#ref, "path": git.path} })
        }
        None => Value::Null,
    };
    let git_playbook = job
        .git_playbook
        .as_ref()
        .map(|g| json!({"repo": g.repo, "ref": g.r#ref, "path": g.path}));
    let role = job.role.as_ref().map(|r| {
        json!({"name": r.name, "repo": r.repo, "ref": r.r#ref,
            "role_vars": structure(&r.role_vars), "gather_facts": r.gather_facts})
    });
    let text_or_null = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::String(s.to_owned())
        }
    };
    let options = job.options.as_ref().map(|o| {
        json!({"check": o.check, "diff": o.diff, "tags": o.tags, "skip_tags": o.skip_tags,
            "limit": o.limit, "verbosity": o.verbosity, "forks": o.forks})
    });
    let stats: serde_json::Map<String, Value> = job
        .result
        .iter()
        .flat_map(|r| r.stats.iter())
        .map(|(host, s)| {
            (host.clone(), json!({"ok": s.ok, "changed": s.changed, "failed": s.failed,
                "skipped": s.skipped, "unreachable": s.unreachable, "rescued": s.rescued, "ignored": s.ignored}))
        })
        .collect();
    json!({
        "job_id": job.job_id,
        "status": status_name(job.status),
        "playbook": job.playbook,
        "git_playbook": git_playbook,
        "role": role,
        "source_commit": text_or_null(&job.source_commit),
        "source_ref": text_or_null(&job.source_ref),
        "inventory_commit": text_or_null(&job.inventory_commit),
        "extra_vars": structure(&job.extra_vars),
        "has_secret_extra_vars": job.has_secret_extra_vars,
        "inventory": inventory,
        "options": options,
        "timeout_seconds": job.timeout_seconds,
        "created_at": rfc3339(&job.created_at),
        "started_at": rfc3339(&job.started_at),
        "finished_at": rfc3339(&job.finished_at),
        "rc": job.result.as_ref().map(|r| r.rc),
        "stats": stats,
        "stdout": job.result.as_ref().map(|r| r.stdout.as_str()),
        "stdout_truncated": job.result.as_ref().is_some_and(|r| r.stdout_truncated),
        "error": job.error,
        "error_reason": job.error_reason,
        "submitted_by": job.submitted_by,
        "canceled_by": job.canceled_by,
        "attempt": job.attempt,
    })
}

/// A "running TASK [...] 3s" line on a terminal's stderr while a task runs.
pub struct Progress {
    enabled: bool,
    shown: bool,
    task: String,
    since: Instant,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            shown: false,
            task: String::new(),
            since: Instant::now(),
        }
    }

    pub fn event(&mut self, event: &pb::JobEvent) {
        if event.event == "playbook_on_task_start" {
            self.task = event.task.clone();
            self.since = Instant::now();
        }
        if self.enabled && !self.task.is_empty() && event.event != "playbook_on_stats" {
            let _ = write!(
                std::io::stderr(),
                "\r\x1b[2K… TASK [{}] running {:.0}s",
                self.task,
                self.since.elapsed().as_secs_f64()
            );
            self.shown = true;
        }
    }

    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}
