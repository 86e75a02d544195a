//! Domain errors as gRPC statuses with google.rpc details.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{error_chain, Error};

/// The domain of every ErrorInfo this service returns.
const ERROR_DOMAIN: &str = "ansible-runner.v1";

fn with_reason(code: Code, message: String, reason: &str, mut details: ErrorDetails) -> Status {
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidArgument(violations) => {
                let message = error_message(&violations);
                let mut details = ErrorDetails::new();
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                with_reason(Code::InvalidArgument, message, "INVALID_ARGUMENT", details)
            }
            Error::JobNotFound(id) => with_reason(
                Code::NotFound,
                format!("job {id} not found"),
                "JOB_NOT_FOUND",
                ErrorDetails::new(),
            ),
            Error::PlaybookNotFound(name) => with_reason(
                Code::NotFound,
                format!("playbook {name:?} is not in the catalogue (see ListPlaybooks)"),
                "PLAYBOOK_NOT_FOUND",
                ErrorDetails::new(),
            ),
            Error::CredentialNotFound(name) => with_reason(
                Code::NotFound,
                format!("credential {name:?} does not exist (see `credentials list`)"),
                "CREDENTIAL_NOT_FOUND",
                ErrorDetails::new(),
            ),
            Error::InvalidState(message) => with_reason(
                Code::FailedPrecondition,
                message,
                "INVALID_STATE",
                ErrorDetails::new(),
            ),
            Error::ResourceExhausted(message) => with_reason(
                Code::ResourceExhausted,
                message,
                "RESOURCE_EXHAUSTED",
                ErrorDetails::new(),
            ),
            Error::QuotaExceeded {
                subject,
                description,
                message,
            } => {
                let mut details = ErrorDetails::new();
                details.add_quota_failure_violation(subject, description);
                with_reason(Code::ResourceExhausted, message, "QUOTA_EXCEEDED", details)
            }
            Error::PermissionDenied { reason, message } => {
                with_reason(Code::PermissionDenied, message, reason, ErrorDetails::new())
            }
            Error::RequestIdReused(message) => with_reason(
                Code::AlreadyExists,
                message,
                "REQUEST_ID_REUSED",
                ErrorDetails::new(),
            ),
            Error::Unavailable { what, source } => {
                tracing::warn!(error = %source, "{what} is unavailable");
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                with_reason(
                    Code::Unavailable,
                    format!("{what} is unavailable; nothing was changed, retry later"),
                    "UNAVAILABLE",
                    details,
                )
            }
            Error::Config(message) => {
                tracing::error!(error = %message, "configuration error");
                Status::internal("internal error")
            }
            Error::Internal { context, source } => {
                tracing::error!(context, error = %error_chain(source.as_ref()), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

fn error_message(violations: &[crate::domain::FieldViolation]) -> String {
    let parts: Vec<String> = violations.iter().map(ToString::to_string).collect();
    format!("invalid request: {}", parts.join("; "))
}
