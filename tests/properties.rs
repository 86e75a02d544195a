//! Properties of the input rules over arbitrary input: no input panics, and
//! what passes is always safe to put on an ansible-playbook command line.

use ansible_runner_service::domain::validate::{self, Limits, RawInventory, Submission};
use ansible_runner_service::domain::JobOptions;
use ansible_runner_service::grpc::PageToken;
use ansible_runner_service::store::{Cursor, ListFilter};
use proptest::prelude::*;

const SHELL: &[char] = &[';', '&', '|', '$', '`', '<', '>', '\\', '"', '\''];
/// Ansible's pattern operators (`:`, `&`, `!`, `*`) are allowed; these are not.
const NOT_IN_PATTERNS: &[char] = &[';', '|', '$', '`', '<', '>', '\\', '"', '\''];

proptest! {
    #[test]
    fn accepted_playbook_names_stay_inside_the_catalogue(name in "\\PC{0,300}") {
        if validate::playbook_name(&name).is_ok() {
            prop_assert!(!name.starts_with('/') && !name.starts_with('-'));
            prop_assert!(name.len() <= 255);
            prop_assert!(name.split('/').all(|s| !s.is_empty() && s != ".." && !s.starts_with('.') && !s.starts_with('-')));
            prop_assert!(name.ends_with(".yml") || name.ends_with(".yaml"));
        }
    }

    #[test]
    fn accepted_hosts_are_plain_names(list in "[a-z0-9 ,;$@.\\-_\\t]{0,60}") {
        if let Ok(hosts) = validate::hosts(&list, 100) {
            for host in hosts {
                prop_assert!(!host.is_empty());
                prop_assert!(!host.starts_with('-') && !host.starts_with('@'));
                prop_assert!(!host.chars().any(|c| c.is_whitespace() || c == ',' || SHELL.contains(&c)));
            }
        }
    }

    #[test]
    fn accepted_patterns_are_never_options(value in "\\PC{0,80}") {
        if validate::pattern(&value, true).is_ok() && !value.is_empty() {
            prop_assert!(!value.starts_with('-') && !value.starts_with('@'));
            prop_assert!(!value.chars().any(|c| c.is_whitespace() || NOT_IN_PATTERNS.contains(&c)));
        }
    }

    #[test]
    fn submissions_never_panic(
        playbook in "\\PC{0,40}",
        limit in "\\PC{0,20}",
        tag in "\\PC{0,20}",
        key in "\\PC{0,12}",
        hosts in "\\PC{0,40}",
        verbosity in 0u32..10,
        forks in 0u32..1000,
        timeout in 0u32..200_000,
    ) {
        let mut extra_vars = serde_json::Map::new();
        extra_vars.insert(key, serde_json::Value::String("v".into()));
        let submission = Submission {
            playbook,
            extra_vars,
            inventory: RawInventory::Hosts(hosts),
            options: JobOptions { limit, tags: vec![tag], verbosity, forks, ..Default::default() },
            timeout_seconds: timeout,
            request_id: String::new(),
            secret_extra_vars: serde_json::Map::new(),
            queue: String::new(),
        };
        if let Ok(valid) = validate::submission(submission, &Limits::default()) {
            let o = &valid.spec.options;
            prop_assert!(o.verbosity <= 4 && o.forks <= 100);
            prop_assert!(!o.limit.starts_with('-') && o.tags.iter().all(|t| !t.starts_with('-')));
            prop_assert!(valid.spec.extra_vars.keys().all(|k| validate::is_identifier(k)));
        }
    }

    #[test]
    fn page_tokens_decode_safely(token in "\\PC{0,200}") {
        prop_assert!(PageToken::decode(&token, &ListFilter::default(), b"key").is_err());
    }

    #[test]
    fn page_tokens_round_trip(created_at in any::<i64>(), id in any::<u128>()) {
        let cursor = Cursor { created_at, id: uuid::Uuid::from_u128(id) };
        let filter = ListFilter::default();
        let token = PageToken::new(cursor.clone(), &filter).encode(b"key");
        prop_assert_eq!(PageToken::decode(&token, &filter, b"key").unwrap().cursor, cursor);
    }
}
