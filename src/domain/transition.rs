//! Which status may follow which, and the outcome of each ending: the store
//! writes these outcomes (each change a conditional update on the status it
//! leaves, checked against [`JobStatus::may_become`] in debug builds) and the
//! worker reports its runs with them. A job moves forward only:
//!
//! ```text
//! PENDING ──claim──▶ RUNNING ──run ends──▶ SUCCESSFUL | FAILED | CANCELED | TIMED_OUT
//!    │                  └──worker lost──▶ FAILED (WORKER_LOST)
//!    └──cancel──▶ CANCELED (CANCELED)
//! ```
//!
//! A cancel of a RUNNING job does not change its status: it asks the worker,
//! whose run then ends CANCELED.

use super::{ErrorReason, JobResult, JobStatus, Outcome};

impl JobStatus {
    /// Whether a job in this status may move to `next`.
    pub fn may_become(self, next: JobStatus) -> bool {
        match (self, next) {
            (JobStatus::Pending, JobStatus::Running | JobStatus::Canceled) => true,
            (JobStatus::Running, next) => next.is_terminal(),
            _ => false,
        }
    }
}

/// How a run ended, as its worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// ansible-playbook exited by itself with this code.
    Exited(i32),
    /// A caller canceled the job.
    Canceled,
    /// It ran past its timeout.
    TimedOut { timeout_seconds: u32 },
    /// Its worker shut down.
    Shutdown,
    /// Its worker lost the lease: another attempt owns the job now.
    LeaseLost,
}

/// How a worker was found lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// It stopped renewing its lease (the sweeper saw it expire).
    LeaseExpired,
    /// It died, and a later life of it on the same host found the run.
    Died,
}

impl Outcome {
    /// The terminal state of a run that ended (by itself or stopped).
    pub fn of_run(end: RunEnd, result: JobResult) -> Outcome {
        let (reason, error) = match end {
            RunEnd::Exited(0) => (None, None),
            RunEnd::Exited(rc) => (
                Some(ErrorReason::PlaybookFailed),
                Some(format!("ansible-playbook exited with rc {rc}")),
            ),
            RunEnd::Canceled => (
                Some(ErrorReason::Canceled),
                Some("canceled while running".to_owned()),
            ),
            RunEnd::TimedOut { timeout_seconds } => (
                Some(ErrorReason::TimedOut),
                Some(format!(
                    "ran longer than its timeout of {timeout_seconds} s"
                )),
            ),
            RunEnd::Shutdown => (
                Some(ErrorReason::Shutdown),
                Some("the worker shut down while the job ran".to_owned()),
            ),
            RunEnd::LeaseLost => (
                Some(ErrorReason::WorkerLost),
                Some("the worker lost its lease".to_owned()),
            ),
        };
        Outcome {
            status: reason.map_or(JobStatus::Successful, ErrorReason::status),
            result: Some(result),
            error,
            error_reason: reason,
        }
    }

    /// A RUNNING job that ended before its playbook could run (its secrets
    /// were lost, the executor could not start it).
    pub fn not_run(reason: ErrorReason, message: impl Into<String>) -> Outcome {
        Outcome {
            status: reason.status(),
            result: None,
            error: Some(message.into()),
            error_reason: Some(reason),
        }
    }

    /// A PENDING job a caller canceled.
    pub fn canceled_before_start() -> Outcome {
        Outcome::not_run(ErrorReason::Canceled, "canceled before it started")
    }

    /// A RUNNING job whose worker is gone: its outcome is unknown.
    pub fn worker_lost(worker_id: &str, how: Lost) -> Outcome {
        let what = match how {
            Lost::LeaseExpired => "stopped renewing its lease",
            Lost::Died => "died while the job ran",
        };
        Outcome::not_run(
            ErrorReason::WorkerLost,
            format!("worker {worker_id} {what}; the run's outcome is unknown"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_move_forward_only() {
        use JobStatus::*;
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let allowed = matches!(
                    (from, to),
                    (Pending, Running)
                        | (Pending, Canceled)
                        | (Running, Successful)
                        | (Running, Failed)
                        | (Running, Canceled)
                        | (Running, TimedOut)
                );
                assert_eq!(from.may_become(to), allowed, "{from} -> {to}");
                if allowed {
                    assert!(from.rank() < to.rank(), "{from} -> {to} goes back");
                }
            }
        }
    }

    #[test]
    fn every_outcome_is_a_status_its_reason_implies() {
        let result = || JobResult::default();
        let ends = [
            RunEnd::Exited(0),
            RunEnd::Exited(2),
            RunEnd::Canceled,
            RunEnd::TimedOut { timeout_seconds: 5 },
            RunEnd::Shutdown,
            RunEnd::LeaseLost,
        ];
        for end in ends {
            let outcome = Outcome::of_run(end, result());
            assert!(JobStatus::Running.may_become(outcome.status), "{end:?}");
            match outcome.error_reason {
                None => assert_eq!(outcome.status, JobStatus::Successful),
                Some(reason) => {
                    assert_eq!(reason.status(), outcome.status);
                    assert!(outcome.error.is_some());
                }
            }
        }
        assert_eq!(
            Outcome::of_run(RunEnd::TimedOut { timeout_seconds: 5 }, result()).status,
            JobStatus::TimedOut
        );
        let lost = Outcome::worker_lost("host/1/a", Lost::LeaseExpired);
        assert_eq!(lost.status, JobStatus::Failed);
        assert!(lost.error.unwrap().contains("host/1/a"));
        assert!(JobStatus::Pending.may_become(Outcome::canceled_before_start().status));
    }
}
