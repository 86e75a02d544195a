//! ListJobs: the history, newest first, a page at a time, filtered and
//! limited to what the caller may see.

use super::{AppState, PageToken};
use crate::defaults;
use crate::domain::validate;
use crate::domain::{Action, Caller, Error, FieldViolation, Job, JobStatus, Visibility};
use crate::store::ListFilter;

/// A status to filter on, as the caller sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Any,
    Is(JobStatus),
    /// A value the API does not define (refused with the field named).
    Unknown(i64),
}

/// A ListJobs request. Empty strings mean "any" and "from the start".
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// 0: the default page size; above the largest: the largest.
    pub page_size: i64,
    pub page_token: String,
    pub status: StatusFilter,
    pub playbook: String,
    pub submitted_by: String,
    pub queue: String,
}

pub struct ListResult {
    pub jobs: Vec<Job>,
    /// Empty on the last page.
    pub next_page_token: String,
    /// Jobs matching the filter (see `TotalPolicy` for how exact).
    pub total: u64,
}

impl ListQuery {
    /// The filter and page size, or every violation at once.
    fn check(self) -> Result<(ListFilter, u64, String), Error> {
        let mut violations = Vec::new();
        if self.page_size < 0 {
            violations.push(FieldViolation::new(
                "page_size",
                format!("must not be negative, got {}", self.page_size),
            ));
        }
        let status = match self.status {
            StatusFilter::Any => None,
            StatusFilter::Is(status) => Some(status),
            StatusFilter::Unknown(value) => {
                violations.push(FieldViolation::new(
                    "status",
                    format!("unknown status {value}"),
                ));
                None
            }
        };
        if self.playbook.len() > validate::MAX_PLAYBOOK_NAME_BYTES {
            violations.push(FieldViolation::new(
                "playbook",
                format!(
                    "must be at most {} bytes",
                    validate::MAX_PLAYBOOK_NAME_BYTES
                ),
            ));
        }
        if !self.queue.is_empty() {
            if let Err(e) = validate::queue_name(&self.queue) {
                violations.push(FieldViolation::new("queue", e));
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let filter = ListFilter {
            status,
            playbook: non_empty(self.playbook),
            submitted_by: non_empty(self.submitted_by),
            queue: non_empty(self.queue),
        };
        let page_size = match self.page_size as u64 {
            0 => defaults::PAGE_SIZE,
            n => n.min(defaults::MAX_PAGE_SIZE),
        };
        Ok((filter, page_size, self.page_token))
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl AppState {
    /// ListJobs. A caller that sees its own jobs only gets those, whatever
    /// `submitted_by` says (another client's name finds none).
    pub async fn list(&self, caller: &Caller, query: ListQuery) -> Result<ListResult, Error> {
        caller.require(Action::Read)?;
        let (mut filter, page_size, token) = query.check()?;
        if caller.scopes.jobs() == Visibility::Own {
            if filter.submitted_by.is_some() && filter.submitted_by != caller.name {
                return Ok(ListResult {
                    jobs: Vec::new(),
                    next_page_token: String::new(),
                    total: 0,
                });
            }
            filter.submitted_by = caller.name.clone();
        }
        let after = if token.is_empty() {
            None
        } else {
            Some(PageToken::decode(&token, &filter, &self.page_key)?.cursor)
        };
        let page = self
            .store
            .list_jobs(&filter, page_size, after.as_ref())
            .await?;
        Ok(ListResult {
            jobs: page.jobs,
            next_page_token: page
                .next
                .map(|cursor| PageToken::new(cursor, &filter).encode(&self.page_key))
                .unwrap_or_default(),
            total: page.total,
        })
    }
}
