//! Properties of the input rules over arbitrary input: no input panics, and
//! what passes is always safe to put on an ansible-playbook command line.

use ansible_runner_service::app::PageToken;
use ansible_runner_service::domain::validate::{self, Limits, RawInventory, Submission};
use ansible_runner_service::domain::JobOptions;
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
        let cursor = Cursor {
            created_at: ansible_runner_service::domain::from_micros(created_at),
            id: uuid::Uuid::from_u128(id),
        };
        let filter = ListFilter::default();
        let token = PageToken::new(cursor.clone(), &filter).encode(b"key");
        prop_assert_eq!(PageToken::decode(&token, &filter, b"key").unwrap().cursor, cursor);
    }
}

/// Variable names an inventory generator draws from: the caller's connection
/// facts, plain variables, and `ansible_*` variables that could run commands.
const VAR_NAMES: &[&str] = &[
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_connection",
    "app_port",
    "who",
    "ansible_shell_executable",
    "Ansible_Ssh_Common_Args",
    "ansible_python_interpreter",
    "ansible_become_exe",
];

/// Values, well-formed and hostile, for any of those names.
const VAR_VALUES: &[&str] = &[
    "web1.example.com",
    "10.0.0.5",
    "deploy",
    "ssh",
    "local",
    "2222",
    "-oProxyCommand=touch /tmp/x",
    "/bin/sh -c 'touch /tmp/x'",
    "a b",
    "x;y",
    "docker",
    "0",
];

fn var_strategy() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    proptest::collection::vec(
        (
            proptest::sample::select(VAR_NAMES),
            proptest::sample::select(VAR_VALUES),
        ),
        0..3,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
            .collect()
    })
}

fn group_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = (
        proptest::collection::btree_map("[a-z]{1,3}(\\.[a-z]{1,3})?", var_strategy(), 0..3),
        var_strategy(),
    )
        .prop_map(|(hosts, vars)| {
            let hosts: serde_json::Map<_, _> = hosts
                .into_iter()
                .map(|(h, v)| (h, serde_json::Value::Object(v)))
                .collect();
            serde_json::json!({"hosts": hosts, "vars": vars})
        });
    leaf.prop_recursive(3, 12, 2, |inner| {
        (
            inner.clone(),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..2),
        )
            .prop_map(|(mut group, children)| {
                let children: serde_json::Map<_, _> = children.into_iter().collect();
                group["children"] = serde_json::Value::Object(children);
                group
            })
    })
}

/// Every variable (name, value) an inventory document sets, at any depth.
fn inventory_variables(group: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    let vars = |v: Option<&serde_json::Value>, out: &mut Vec<(String, serde_json::Value)>| {
        for (k, v) in v.and_then(|v| v.as_object()).into_iter().flatten() {
            out.push((k.clone(), v.clone()));
        }
    };
    vars(group.get("vars"), out);
    for host_vars in group
        .get("hosts")
        .and_then(|h| h.as_object())
        .into_iter()
        .flatten()
    {
        vars(Some(host_vars.1), out);
    }
    for child in group
        .get("children")
        .and_then(|c| c.as_object())
        .into_iter()
        .flatten()
    {
        inventory_variables(child.1, out);
    }
}

/// What may reach ssh's command line: the allowlist, written out again here
/// independently of the validator.
fn safe_connection_fact(name: &str, value: &serde_json::Value) -> bool {
    let text = value.as_str().unwrap_or_default();
    let plain = |extra: &[char]| {
        !text.is_empty()
            && !text.starts_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    match name {
        "ansible_host" => plain(&['.', '_', '-', ':']),
        "ansible_user" => plain(&['.', '_', '-', '@']),
        "ansible_port" => text.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)),
        "ansible_connection" => text == "ssh" || text == "local",
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// No accepted inventory sets an `ansible_*` variable outside the
    /// allowlist, or an allowlisted one to a value ssh could misread.
    #[test]
    fn accepted_inventories_set_only_allowed_ansible_variables(group in group_strategy()) {
        let doc: serde_json::Map<String, serde_json::Value> =
            [("all".to_owned(), group.clone())].into_iter().collect();
        let accepted = validate::inline_inventory(&doc, &Limits::default()).is_ok();
        let mut variables = Vec::new();
        inventory_variables(&group, &mut variables);
        let all_safe = variables.iter().all(|(name, value)| {
            !name.to_ascii_lowercase().starts_with("ansible_") || safe_connection_fact(name, value)
        });
        // Exactly the safe inventories pass: nothing unsafe gets in, and the
        // rule is no wider than it says.
        prop_assert_eq!(accepted, all_safe, "{}", group);
    }
}
