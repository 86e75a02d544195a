//! ListJobs page tokens: opaque to callers, a keyset cursor inside, bound to
//! the filters they were issued for.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::domain::Error;
use crate::store::{Cursor, ListFilter};

const VERSION: &str = "v1";

/// A decoded page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub cursor: Cursor,
    /// The filters of the request that produced the token.
    filters: String,
}

fn fingerprint(filter: &ListFilter) -> String {
    // Hex keeps the separator unambiguous whatever the playbook name holds.
    let playbook_hex: String = filter
        .playbook
        .as_deref()
        .unwrap_or_default()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}.{}",
        filter.status.map(|s| s.as_str()).unwrap_or("-"),
        playbook_hex
    )
}

impl PageToken {
    pub fn new(cursor: Cursor, filter: &ListFilter) -> PageToken {
        PageToken {
            cursor,
            filters: fingerprint(filter),
        }
    }

    pub fn encode(&self) -> String {
        let raw = format!(
            "{VERSION}|{}|{}|{}",
            self.cursor.created_at,
            self.cursor.id.simple(),
            self.filters
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes a token and checks it belongs to a request with `filter`.
    pub fn decode(token: &str, filter: &ListFilter) -> Result<PageToken, Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListJobs");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.splitn(4, '|');
        let (Some(VERSION), Some(created_at), Some(id), Some(filters)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let token = PageToken {
            cursor: Cursor {
                created_at: created_at.parse().map_err(|_| bad())?,
                id: Uuid::parse_str(id).map_err(|_| bad())?,
            },
            filters: filters.to_owned(),
        };
        if token.filters != fingerprint(filter) {
            return Err(Error::invalid(
                "page_token",
                "was issued for other filters; send the same status and playbook as the first page",
            ));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::JobStatus;

    #[test]
    fn round_trip_and_filter_binding() {
        let filter = ListFilter {
            status: Some(JobStatus::Failed),
            playbook: Some("hello.yml".into()),
        };
        let token = PageToken::new(
            Cursor {
                created_at: 1_700_000_000_000_000,
                id: Uuid::now_v7(),
            },
            &filter,
        );
        let decoded = PageToken::decode(&token.encode(), &filter).unwrap();
        assert_eq!(decoded, token);
        assert!(PageToken::decode(&token.encode(), &ListFilter::default()).is_err());
        assert!(PageToken::decode("garbage!", &filter).is_err());
        assert!(PageToken::decode(&URL_SAFE_NO_PAD.encode("v1|x|y|z"), &filter).is_err());
    }
}
