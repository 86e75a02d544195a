//! Everything that can go wrong, by what the caller can do about it.

use std::fmt;

/// A problem with one field of a request, reported back to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, e.g. `options.verbosity` or `extra_vars.name`.
    pub field: String,
    /// What is wrong and what is accepted.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the service, by what the caller can do
/// about it. `grpc::status` maps each variant to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("job {0} not found")]
    JobNotFound(String),
    #[error("playbook {0:?} is not in the catalogue")]
    PlaybookNotFound(String),
    #[error("credential {0:?} does not exist")]
    CredentialNotFound(String),
    #[error("{0}")]
    InvalidState(String),
    /// A limit per caller or per request was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A quota of the caller is used up (e.g. its pending jobs); nothing was
    /// written.
    #[error("{message}")]
    QuotaExceeded {
        /// What the quota is counted on, e.g. `client:deploy-bot`.
        subject: String,
        /// Which quota, and its limit.
        description: String,
        message: String,
    },
    /// The caller's scopes do not allow this call; nothing was written.
    #[error("{message}")]
    PermissionDenied {
        /// ErrorInfo reason, e.g. ACTION_NOT_PERMITTED.
        reason: &'static str,
        message: String,
    },
    /// A request_id the caller used before, for a different request.
    #[error("{0}")]
    RequestIdReused(String),
    /// The history database (or another dependency the request needs) cannot
    /// be reached; nothing was written.
    #[error("{what} is unavailable")]
    Unavailable {
        what: &'static str,
        #[source]
        source: Source,
    },
    /// The service's own configuration is wrong (a flag, a file it names);
    /// the message names the flag and what to do.
    #[error("{0}")]
    Config(String),
    #[error("internal error: {context}")]
    Internal {
        context: String,
        #[source]
        source: Source,
    },
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn internal(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Internal {
            context: context.into(),
            source: source.into(),
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// "outer: inner: innermost", for logs. A cause whose text is already said
/// (libraries often repeat their source's message) is not said again.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: String,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn a_repeated_cause_is_said_once() {
        let inner = Layer {
            text: "1049 (42000): Unknown database 'x'".into(),
            source: None,
        };
        let middle = Layer {
            text: "error returned from database: 1049 (42000): Unknown database 'x'".into(),
            source: Some(Box::new(inner)),
        };
        let outer = Layer {
            text: "connect to the history database".into(),
            source: Some(Box::new(middle)),
        };
        assert_eq!(
            error_chain(&outer),
            "connect to the history database: error returned from database: 1049 (42000): Unknown database 'x'"
        );
    }
}
