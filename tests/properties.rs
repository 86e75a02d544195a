//! Properties of the input rules. The generators build inputs from the
//! alphabets and shapes the rules allow, and near misses (one forbidden
//! character, a leading '-', one byte over a limit): every valid input must
//! pass as sent and every near miss must be refused (a submission naming the
//! field), so each assertion runs on every case. Arbitrary text must never
//! panic.

use ansible_runner_service::app::PageToken;
use ansible_runner_service::domain::validate::{self, Limits, RawInventory, Submission};
use ansible_runner_service::domain::{Error, Inventory, JobOptions};
use ansible_runner_service::store::{Cursor, ListFilter};
use proptest::prelude::*;

/// Characters no name, host or pattern may hold, whatever else it allows:
/// whitespace, controls, shell syntax, quotes.
const NEVER: &[char] = &[
    ' ', '\t', '\n', '\r', '\0', '\u{7f}', ';', '|', '$', '`', '<', '>', '\\', '"', '\'',
];
/// Characters a playbook name or a host name may not hold either (beyond
/// letters, digits, `.`, `_`, `-`, and `/` for names or `:` for hosts).
const NOT_IN_NAMES: &[char] = &[
    '*', '?', '[', ']', '~', '@', '+', '!', '&', '(', '#', '%', '=', 'é',
];

/// One character of `set`.
fn one_of(set: &'static [char]) -> impl Strategy<Value = char> {
    proptest::sample::select(set)
}

/// `text` with `c` put in at a place chosen by `at`.
fn insert(text: &str, at: proptest::sample::Index, c: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    chars.insert(at.index(chars.len() + 1), c);
    chars.into_iter().collect()
}

// Playbook names: the catalogue's path rule.

/// A path segment the catalogue accepts: a letter, digit or `_`, then
/// letters, digits, `.`, `_` and `-`.
const SEGMENT: &str = "[A-Za-z0-9_][A-Za-z0-9._-]{0,15}";

fn playbook_name() -> impl Strategy<Value = String> {
    let structured = (
        proptest::collection::vec(SEGMENT, 0..4),
        SEGMENT,
        prop_oneof![Just(".yml"), Just(".yaml")],
    )
        .prop_map(|(folders, stem, extension)| {
            let mut name = folders.join("/");
            if !name.is_empty() {
                name.push('/');
            }
            name + &stem + extension
        });
    // The longest name accepted.
    let longest = "[a-z0-9]{1}".prop_map(|c| {
        format!(
            "{}.yml",
            c.repeat(validate::MAX_PLAYBOOK_NAME_BYTES - ".yml".len())
        )
    });
    prop_oneof![9 => structured, 1 => longest]
}

/// A name that misses the rule in one way, with what is wrong with it.
fn near_miss_playbook_name() -> impl Strategy<Value = (String, &'static str)> {
    let name = || {
        playbook_name().prop_filter("room for one more byte", |n| {
            n.len() < validate::MAX_PLAYBOOK_NAME_BYTES - 4
        })
    };
    prop_oneof![
        (name(), any::<proptest::sample::Index>(), one_of(NEVER)).prop_map(|(n, at, c)| (
            insert(&n, at, c),
            "a whitespace, control or shell character"
        )),
        (
            name(),
            any::<proptest::sample::Index>(),
            one_of(NOT_IN_NAMES)
        )
            .prop_map(|(n, at, c)| (insert(&n, at, c), "a character outside the alphabet")),
        name().prop_map(|n| (format!("-{n}"), "a leading '-'")),
        name().prop_map(|n| (format!("/{n}"), "an absolute path")),
        name().prop_map(|n| (format!("../{n}"), "a '..' segment")),
        name().prop_map(|n| (format!("a/../{n}"), "a '..' segment inside")),
        name().prop_map(|n| (format!(".hidden/{n}"), "a hidden segment")),
        name().prop_map(|n| (format!("a//{n}"), "an empty segment")),
        name().prop_map(|n| (format!("x/-{n}"), "a segment starting with '-'")),
        name().prop_map(|n| (format!("{n}.txt"), "another extension")),
        name().prop_map(|n| (n[..n.len() - 1].to_owned(), "a cut extension")),
        Just((
            format!("{}.yml", "a".repeat(validate::MAX_PLAYBOOK_NAME_BYTES - 3)),
            "one byte over the limit"
        )),
        Just((String::new(), "empty")),
    ]
}

/// What makes a name safe to join to the catalogue's folder, said again
/// here independently of the validator.
fn inside_the_catalogue(name: &str) -> bool {
    !name.starts_with('/')
        && !name.starts_with('-')
        && name.len() <= 255
        && name.split('/').all(|s| {
            !s.is_empty()
                && s != ".."
                && !s.starts_with('.')
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        && (name.ends_with(".yml") || name.ends_with(".yaml"))
}

// Hosts: comma-separated names that reach ssh's command line.

const HOST: &str = "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}";

/// A host name the rule accepts, sometimes with a `:port`.
fn host() -> impl Strategy<Value = String> {
    (HOST, proptest::option::of(1u32..=65535)).prop_map(|(name, port)| match port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    })
}

fn host_list() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(host(), 1..6)
}

/// A host that misses the rule in one way.
fn near_miss_host() -> impl Strategy<Value = (String, &'static str)> {
    let name = || HOST.prop_map(String::from);
    prop_oneof![
        (name(), any::<proptest::sample::Index>(), one_of(NEVER)).prop_map(|(h, at, c)| (
            insert(&h, at, c),
            "a whitespace, control or shell character"
        )),
        (
            name(),
            any::<proptest::sample::Index>(),
            one_of(NOT_IN_NAMES)
        )
            .prop_map(|(h, at, c)| (insert(&h, at, c), "a character outside the alphabet")),
        (name(), any::<proptest::sample::Index>())
            .prop_map(|(h, at)| (insert(&h, at, '/'), "a '/'")),
        name().prop_map(|h| (format!("-{h}"), "a leading '-' (an ssh option)")),
        name().prop_map(|h| (format!(".{h}"), "a leading '.'")),
        name().prop_map(|h| (format!("@{h}"), "a leading '@' (a file)")),
        name().prop_map(|h| (format!("{h}:0"), "port 0")),
        name().prop_map(|h| (format!("{h}:65536"), "a port over 65535")),
        name().prop_map(|h| (format!("{h}:22x"), "a port that is no number")),
        Just((String::new(), "an empty host")),
        Just(("a".repeat(256), "one byte over the limit")),
    ]
}

// Host patterns (--limit) and tags.

/// A pattern the rule accepts: Ansible's operators included.
fn host_pattern() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:&!*\\[\\]][A-Za-z0-9_.:&!*,\\[\\]@~é-]{0,30}"
}

/// A pattern that misses the rule in one way.
fn near_miss_pattern() -> impl Strategy<Value = (String, &'static str)> {
    prop_oneof![
        (
            host_pattern(),
            any::<proptest::sample::Index>(),
            one_of(NEVER)
        )
            .prop_map(|(p, at, c)| (
                insert(&p, at, c),
                "a whitespace, control or shell character"
            )),
        host_pattern().prop_map(|p| (format!("-{p}"), "a leading '-' (an option)")),
        host_pattern().prop_map(|p| (format!("@{p}"), "a leading '@' (a file)")),
        Just(("a".repeat(1025), "one byte over the limit")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn playbook_names_of_the_alphabet_are_accepted_and_stay_inside_the_catalogue(
        name in playbook_name(),
    ) {
        prop_assert_eq!(validate::playbook_name(&name), Ok(()), "{:?}", name);
        prop_assert!(inside_the_catalogue(&name), "{:?}", name);
    }

    #[test]
    fn playbook_names_that_miss_the_rule_once_are_refused(
        (name, flaw) in near_miss_playbook_name(),
    ) {
        prop_assert!(!inside_the_catalogue(&name), "{} {:?}: not a near miss", flaw, name);
        prop_assert!(
            validate::playbook_name(&name).is_err(),
            "{} accepted: {:?}",
            flaw,
            name
        );
    }

    #[test]
    fn host_lists_of_the_alphabet_are_accepted_as_given(list in host_list()) {
        prop_assert_eq!(validate::hosts(&list.join(","), 100), Ok(list.clone()));
        prop_assert!(
            validate::hosts(&list.join(","), list.len() - 1).is_err(),
            "one host over the limit"
        );
    }

    #[test]
    fn host_lists_with_one_host_that_misses_the_rule_are_refused(
        list in host_list(),
        (bad, flaw) in near_miss_host(),
        at in any::<proptest::sample::Index>(),
    ) {
        let mut list = list;
        list.insert(at.index(list.len() + 1), bad);
        let joined = list.join(",");
        prop_assert!(
            validate::hosts(&joined, 100).is_err(),
            "{} accepted: {:?}",
            flaw,
            joined
        );
    }

    #[test]
    fn patterns_of_the_alphabet_are_accepted(value in host_pattern()) {
        prop_assert_eq!(validate::pattern(&value, false), Ok(()), "{:?}", value);
    }

    #[test]
    fn patterns_that_miss_the_rule_once_are_refused((value, flaw) in near_miss_pattern()) {
        prop_assert!(
            validate::pattern(&value, true).is_err(),
            "{} accepted: {:?}",
            flaw,
            value
        );
    }
}

// Whole submissions: valid in every field, or wrong in exactly one.

/// An extra variable's name: an identifier, not `ansible_*`, not magic.
fn var_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,12}".prop_filter("a name callers may set", |name| {
        !name.to_ascii_lowercase().starts_with("ansible_")
            && !validate::MAGIC_VARS
                .iter()
                .any(|m| m.eq_ignore_ascii_case(name))
    })
}

fn queue_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"]
}

/// Every field of a submission the rules accept.
#[derive(Debug, Clone)]
struct Fields {
    playbook: String,
    limit: String,
    tags: Vec<String>,
    var: String,
    hosts: Vec<String>,
    verbosity: u32,
    forks: u32,
    timeout: u32,
    request_id: String,
    queue: String,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (
            playbook_name(),
            prop_oneof![Just(String::new()), host_pattern()],
            proptest::collection::vec(host_pattern().prop_map(|t| t.replace(',', "")), 0..3),
            var_name(),
            host_list(),
        ),
        (
            0u32..=4,
            0u32..=100,
            prop_oneof![Just(0u32), 1u32..=86_400],
            "[ -~]{0,128}",
            queue_name(),
        ),
    )
        .prop_map(
            |(
                (playbook, limit, tags, var, hosts),
                (verbosity, forks, timeout, request_id, queue),
            )| Fields {
                playbook,
                limit,
                tags,
                var,
                hosts,
                verbosity,
                forks,
                timeout,
                request_id,
                queue,
            },
        )
}

/// One field made wrong, and the field the refusal must name.
#[derive(Debug, Clone)]
enum Flaw {
    Playbook(String),
    Limit(String),
    Tag(String),
    Var(String),
    Host(String),
    Verbosity(u32),
    Forks(u32),
    Timeout(u32),
    RequestId(String),
    Queue(String),
}

impl Flaw {
    fn field(&self) -> &'static str {
        match self {
            Flaw::Playbook(_) => "playbook",
            Flaw::Limit(_) => "options.limit",
            Flaw::Tag(_) => "options.tags[0]",
            Flaw::Var(_) => "extra_vars",
            Flaw::Host(_) => "inventory.hosts",
            Flaw::Verbosity(_) => "options.verbosity",
            Flaw::Forks(_) => "options.forks",
            Flaw::Timeout(_) => "timeout_seconds",
            Flaw::RequestId(_) => "request_id",
            Flaw::Queue(_) => "queue",
        }
    }

    fn apply(self, fields: &mut Fields) {
        match self {
            Flaw::Playbook(name) => fields.playbook = name,
            Flaw::Limit(limit) => fields.limit = limit,
            Flaw::Tag(tag) => fields.tags.insert(0, tag),
            Flaw::Var(name) => fields.var = name,
            Flaw::Host(host) => fields.hosts.push(host),
            Flaw::Verbosity(v) => fields.verbosity = v,
            Flaw::Forks(f) => fields.forks = f,
            Flaw::Timeout(t) => fields.timeout = t,
            Flaw::RequestId(id) => fields.request_id = id,
            Flaw::Queue(queue) => fields.queue = queue,
        }
    }
}

fn flaw() -> impl Strategy<Value = Flaw> {
    prop_oneof![
        near_miss_playbook_name().prop_map(|(n, _)| Flaw::Playbook(n)),
        near_miss_pattern().prop_map(|(p, _)| Flaw::Limit(p)),
        prop_oneof![
            near_miss_pattern().prop_map(|(p, _)| p),
            Just(String::new()),
            "[a-z]{1,5},[a-z]{1,5}",
        ]
        .prop_map(Flaw::Tag),
        prop_oneof![
            "[0-9][A-Za-z0-9_]{0,8}",
            "[a-z]{1,5}[-.][a-z]{1,5}",
            "(ansible|ANSIBLE|Ansible)_[a-z_]{1,12}",
            proptest::sample::select(validate::MAGIC_VARS.as_slice()).prop_map(String::from),
            Just(String::new()),
        ]
        .prop_map(Flaw::Var),
        near_miss_host()
            .prop_filter("one host, not two", |(h, _)| !h.contains(','))
            .prop_map(|(h, _)| Flaw::Host(h)),
        (5u32..1000).prop_map(Flaw::Verbosity),
        (101u32..100_000).prop_map(Flaw::Forks),
        (86_401u32..=u32::MAX).prop_map(Flaw::Timeout),
        prop_oneof![
            Just("r".repeat(validate::MAX_REQUEST_ID_BYTES + 1)),
            (
                "[ -~]{0,20}",
                any::<proptest::sample::Index>(),
                one_of(&['\n', '\0', '\u{7f}', '\u{1b}'])
            )
                .prop_map(|(id, at, c)| insert(&id, at, c)),
        ]
        .prop_map(Flaw::RequestId),
        prop_oneof![
            "[-._][A-Za-z0-9]{1,8}",
            Just("q".repeat(validate::MAX_QUEUE_NAME_BYTES + 1)),
            (
                "[A-Za-z0-9]{1,8}",
                any::<proptest::sample::Index>(),
                one_of(&[' ', '/', ':', '*', '$', 'é'])
            )
                .prop_map(|(q, at, c)| insert(&q, at, c)),
        ]
        .prop_filter("a queue that is set", |q| !q.is_empty())
        .prop_map(Flaw::Queue),
    ]
}

fn submission_of(fields: &Fields) -> Submission {
    let mut extra_vars = serde_json::Map::new();
    extra_vars.insert(fields.var.clone(), serde_json::Value::String("v".into()));
    Submission {
        playbook: fields.playbook.clone(),
        extra_vars,
        inventory: RawInventory::Hosts(fields.hosts.join(",")),
        options: JobOptions {
            limit: fields.limit.clone(),
            tags: fields.tags.clone(),
            verbosity: fields.verbosity,
            forks: fields.forks,
            ..Default::default()
        },
        timeout_seconds: fields.timeout,
        request_id: fields.request_id.clone(),
        secret_extra_vars: serde_json::Map::new(),
        queue: fields.queue.clone(),
        source: Default::default(),
        credentials: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A submission valid in every field is accepted as it was sent (with
    /// the defaults filled in), and what reaches the command line is safe.
    #[test]
    fn valid_submissions_are_accepted_as_sent(fields in fields()) {
        let limits = Limits::default();
        let valid = validate::submission(submission_of(&fields), &limits);
        prop_assert!(valid.is_ok(), "{:?}: {:?}", fields, valid.err());
        let valid = valid.unwrap();
        let spec = &valid.spec;
        prop_assert_eq!(&spec.playbook, &fields.playbook);
        prop_assert_eq!(&spec.inventory, &Inventory::Hosts(fields.hosts.clone()));
        prop_assert_eq!(&spec.options.limit, &fields.limit);
        prop_assert_eq!(&spec.options.tags, &fields.tags);
        prop_assert_eq!(spec.options.verbosity, fields.verbosity);
        prop_assert_eq!(spec.options.forks, fields.forks);
        let timeout = match fields.timeout {
            0 => limits.default_timeout_seconds,
            t => t,
        };
        prop_assert_eq!(spec.timeout_seconds, timeout);
        let request_id = Some(fields.request_id.clone()).filter(|id| !id.is_empty());
        prop_assert_eq!(valid.request_id, request_id);
        let queue = match fields.queue.as_str() {
            "" => validate::DEFAULT_QUEUE,
            queue => queue,
        };
        prop_assert_eq!(valid.queue.as_str(), queue);
        prop_assert_eq!(spec.extra_vars.keys().collect::<Vec<_>>(), vec![&fields.var]);
    }

    /// The same submission with one field made wrong is refused with one
    /// violation, naming that field.
    #[test]
    fn a_submission_wrong_in_one_field_is_refused_naming_it(
        fields in fields(),
        flaw in flaw(),
    ) {
        let field = flaw.field();
        let mut fields = fields;
        flaw.clone().apply(&mut fields);
        match validate::submission(submission_of(&fields), &Limits::default()) {
            Err(Error::InvalidArgument(violations)) => {
                let named: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                prop_assert_eq!(named, vec![field], "{:?}", flaw);
            }
            other => prop_assert!(false, "{:?}: {:?}", flaw, other),
        }
    }

    /// Arbitrary text in every field: refused or accepted, never a panic.
    #[test]
    fn submissions_never_panic(
        playbook in "\\PC{0,40}",
        limit in "\\PC{0,20}",
        tag in "\\PC{0,20}",
        key in "\\PC{0,12}",
        hosts in "\\PC{0,40}",
        request_id in "\\PC{0,140}",
        queue in "\\PC{0,70}",
    ) {
        let mut extra_vars = serde_json::Map::new();
        extra_vars.insert(key, serde_json::Value::String("v".into()));
        let _ = validate::submission(Submission {
            playbook,
            extra_vars,
            inventory: RawInventory::Hosts(hosts),
            options: JobOptions { limit, tags: vec![tag], ..Default::default() },
            timeout_seconds: 0,
            request_id,
            secret_extra_vars: serde_json::Map::new(),
            queue,
            source: Default::default(),
            credentials: Vec::new(),
        }, &Limits::default());
    }
}

proptest! {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// A ref git would take as an option, a revision expression or a range
    /// is never accepted; whatever is accepted, git's own rules allow.
    #[test]
    fn accepted_refs_are_plain_names_or_commit_ids(r in "[-a-zA-Z0-9./@{}~^:?*\\[\\\\ _]{0,24}") {
        use ansible_runner_service::domain::source::{git_ref, is_commit_id};
        if git_ref(&r).is_ok() && !r.is_empty() && !is_commit_id(&r) {
            prop_assert!(!r.starts_with('-') && !r.starts_with('/') && !r.ends_with('/'), "{}", r);
            prop_assert!(!r.contains("..") && !r.contains("@{") && !r.contains("//") && r != "@", "{}", r);
            prop_assert!(!r.chars().any(|c| " ~^:?*[\\".contains(c) || c.is_control()), "{}", r);
            prop_assert!(r.split('/').all(|c| !c.starts_with('.') && !c.ends_with(".lock")), "{}", r);
        }
    }

    /// An accepted path stays inside the repository, whatever it holds.
    #[test]
    fn accepted_repository_paths_stay_inside(p in "[-a-zA-Z0-9./_\\n]{0,24}") {
        use ansible_runner_service::domain::source::path_in_repo;
        if path_in_repo(&p).is_ok() {
            prop_assert!(!p.starts_with('/') && !p.starts_with('-'), "{}", p);
            prop_assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.eq_ignore_ascii_case(".git")), "{}", p);
            prop_assert!(!p.contains('\n'), "{}", p);
        }
    }

    /// Only URLs under the provider pass, in one canonical form that passes
    /// again unchanged; anything else (other hosts, schemes, user info,
    /// traversal) is refused.
    #[test]
    fn only_urls_under_a_provider_pass(
        scheme in "(https|http|HTTPS|file|ext|ssh)",
        userinfo in "(|u@|u:p@)",
        host in "(git\\.example\\.com|GIT\\.example\\.com|git\\.example\\.com\\.evil|evil)",
        path in "(platform|platformx|other|platform/\\.\\.|\\.\\./platform)(/[a-z.~-]{1,8}){0,3}",
    ) {
        use ansible_runner_service::domain::Providers;
        let providers = Providers::parse(
            "providers: [{name: p, host: git.example.com, organizations: [platform]}]",
        ).unwrap();
        let url = format!("{scheme}://{userinfo}{host}/{path}");
        if let Ok((_, canonical)) = providers.allow(&url) {
            let canonical = canonical.to_string();
            let rest = canonical.strip_prefix("https://git.example.com/platform");
            prop_assert!(rest.is_some_and(|r| r.is_empty() || r.starts_with('/')), "{} -> {}", url, canonical);
            prop_assert!(userinfo.is_empty(), "{}", url);
            prop_assert!(!canonical.split('/').any(|s| s == ".." || s == "."), "{}", canonical);
            let again = providers.allow(&canonical).map(|(_, u)| u.to_string());
            prop_assert_eq!(again.as_deref(), Ok(canonical.as_str()));
        }
    }
}
