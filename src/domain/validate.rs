//! Input rules for SubmitJob. Everything a caller sends is data: each value
//! that reaches the ansible-playbook command line or its files is checked here
//! first, and every problem is reported with the field it concerns.

use serde_json::{Map, Value};

use crate::defaults;

use super::source::{self as src, GitFile, Providers, RoleSource, Source};
use super::{Error, FieldViolation, Inventory, JobOptions, JobSpec};

/// Configurable bounds on a submission.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_hosts: usize,
    pub max_forks: u32,
    pub default_timeout_seconds: u32,
    pub max_timeout_seconds: u32,
    pub max_extra_vars_depth: usize,
    pub max_extra_vars_bytes: usize,
    /// Let extra_vars and inventory variables set any `ansible_*` variable
    /// (connection, become, interpreters, ...): for trusted callers only.
    pub allow_ansible_vars: bool,
    /// PENDING jobs one client may have; 0: no cap.
    pub max_pending_per_client: usize,
    /// The git providers repositories may come from (none: no git sources).
    pub providers: std::sync::Arc<Providers>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_hosts: defaults::MAX_HOSTS,
            max_forks: defaults::MAX_FORKS,
            default_timeout_seconds: defaults::DEFAULT_TIMEOUT_SECONDS,
            max_timeout_seconds: defaults::MAX_TIMEOUT_SECONDS,
            max_extra_vars_depth: defaults::MAX_EXTRA_VARS_DEPTH,
            max_extra_vars_bytes: defaults::MAX_EXTRA_VARS_BYTES,
            allow_ansible_vars: false,
            max_pending_per_client: defaults::MAX_PENDING_PER_CLIENT,
            providers: Default::default(),
        }
    }
}

/// The inventory as the caller gave it, before validation.
#[derive(Debug, Clone)]
pub enum RawInventory {
    Unset,
    Hosts(String),
    Inline(Map<String, Value>),
    Git(RawGitFile),
}

/// A file in git as the caller named it, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawGitFile {
    pub repo: String,
    pub git_ref: String,
    pub path: String,
}

/// What to run, as the caller named it, before validation.
#[derive(Debug, Clone, Default)]
pub enum RawSource {
    /// `Submission::playbook`, from the catalogue.
    #[default]
    Catalogue,
    GitPlaybook(RawGitFile),
    Role(RoleSource),
}

/// A SubmitJob request in domain terms, before validation.
#[derive(Debug, Clone)]
pub struct Submission {
    pub playbook: String,
    pub extra_vars: Map<String, Value>,
    pub inventory: RawInventory,
    pub options: JobOptions,
    pub timeout_seconds: u32,
    pub request_id: String,
    pub secret_extra_vars: Map<String, Value>,
    /// The queue (worker group) to run on; empty for the default.
    pub queue: String,
    pub source: RawSource,
    /// Names of credentials, as sent.
    pub credentials: Vec<String>,
}

/// A submission that passed every rule.
#[derive(Debug, Clone)]
pub struct Validated {
    pub spec: JobSpec,
    pub request_id: Option<String>,
    pub secrets: Map<String, Value>,
    pub queue: String,
}

pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The queue a job goes to when its request names none.
pub const DEFAULT_QUEUE: &str = defaults::QUEUE;
pub const MAX_QUEUE_NAME_BYTES: usize = 64;

/// A job id as a caller sends it: a UUID.
pub fn job_id(id: &str) -> Result<uuid::Uuid, Error> {
    if id.is_empty() {
        return Err(Error::invalid("job_id", "is required"));
    }
    uuid::Uuid::parse_str(id).map_err(|_| Error::invalid("job_id", "must be a job id (a UUID)"))
}

/// A queue (worker group) name: 1 to 64 ASCII letters, digits, `_`, `-` or
/// `.`, starting with a letter or digit. Names reach Redis keys and metric
/// labels, so they stay plain.
pub fn queue_name(name: &str) -> Result<(), String> {
    plain_name(name, MAX_QUEUE_NAME_BYTES)
}

/// A plain name (queues, credentials): 1 to `max` ASCII letters, digits,
/// `_`, `-` or `.`, starting with a letter or digit.
pub fn plain_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("must be 1 to {max} bytes, got {}", name.len()));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) || !name.chars().all(plain) {
        return Err(format!(
            "{name:?}: use ASCII letters, digits, '_', '-' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}
pub const MAX_PLAYBOOK_NAME_BYTES: usize = 255;

/// Checks a submission and returns the spec to store, or every violation.
/// Whether the playbook exists in the catalogue is checked by the caller.
pub fn submission(sub: Submission, limits: &Limits) -> Result<Validated, Error> {
    let mut violations = Vec::new();
    let mut check = |field: &str, result: Result<(), String>| {
        if let Err(description) = result {
            violations.push(FieldViolation::new(field, description));
        }
    };

    let source = match sub.source {
        RawSource::Catalogue => {
            check("playbook", playbook_name(&sub.playbook));
            Some(Source::Catalogue)
        }
        RawSource::GitPlaybook(file) => {
            if !sub.playbook.is_empty() {
                check(
                    "playbook",
                    Err("must be empty when git_playbook is given".into()),
                );
            }
            let file = git_file("git_playbook", file, &limits.providers, &mut check);
            if let Some(file) = &file {
                if !(file.path.ends_with(".yml") || file.path.ends_with(".yaml")) {
                    check("git_playbook.path", Err("must end in .yml or .yaml".into()));
                }
            }
            file.map(Source::GitPlaybook)
        }
        RawSource::Role(mut role) => {
            if !sub.playbook.is_empty() {
                check("playbook", Err("must be empty when role is given".into()));
            }
            check("role.name", src::role_name(&role.name));
            check("role.role_vars", extra_vars(&role.role_vars, limits));
            if role.repo.is_empty() {
                if !role.git_ref.is_empty() {
                    check("role.ref", Err("needs role.repo".into()));
                }
                Some(Source::Role(role))
            } else {
                match limits.providers.allow(&role.repo) {
                    Ok((_, url)) => role.repo = url.to_string(),
                    Err(e) => check("role.repo", Err(e)),
                }
                check("role.ref", src::git_ref(&role.git_ref));
                role.git_ref = normal_ref(role.git_ref);
                Some(Source::Role(role))
            }
        }
    };
    check("request_id", request_id(&sub.request_id));
    if sub.credentials.len() > super::credential::MAX_CREDENTIALS_PER_JOB {
        check(
            "credentials",
            Err(format!(
                "at most {} credentials per job",
                super::credential::MAX_CREDENTIALS_PER_JOB
            )),
        );
    }
    for (i, name) in sub.credentials.iter().enumerate() {
        check(
            &format!("credentials[{i}]"),
            super::credential::credential_name(name),
        );
        if sub.credentials[..i].contains(name) {
            check(
                &format!("credentials[{i}]"),
                Err(format!("{name:?} is named twice")),
            );
        }
    }
    if !sub.queue.is_empty() {
        check("queue", queue_name(&sub.queue));
    }
    check("options.limit", pattern(&sub.options.limit, true));
    for (i, tag) in sub.options.tags.iter().enumerate() {
        check(&format!("options.tags[{i}]"), tag_name(tag));
    }
    for (i, tag) in sub.options.skip_tags.iter().enumerate() {
        check(&format!("options.skip_tags[{i}]"), tag_name(tag));
    }
    check(
        "options.verbosity",
        (sub.options.verbosity <= 4)
            .then_some(())
            .ok_or_else(|| format!("must be 0 to 4, got {}", sub.options.verbosity)),
    );
    check(
        "options.forks",
        (sub.options.forks <= limits.max_forks)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "must be 0 (Ansible's default) to {}, got {}",
                    limits.max_forks, sub.options.forks
                )
            }),
    );
    check(
        "timeout_seconds",
        (sub.timeout_seconds <= limits.max_timeout_seconds)
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "must be 0 (the default, {} s) to {}, got {}",
                    limits.default_timeout_seconds, limits.max_timeout_seconds, sub.timeout_seconds
                )
            }),
    );
    check("extra_vars", extra_vars(&sub.extra_vars, limits));
    check(
        "secret_extra_vars",
        extra_vars(&sub.secret_extra_vars, limits),
    );

    let inventory = match sub.inventory {
        RawInventory::Unset => Some(Inventory::Localhost),
        RawInventory::Hosts(list) => match hosts(&list, limits.max_hosts) {
            Ok(hosts) => Some(Inventory::Hosts(hosts)),
            Err(e) => {
                violations.push(FieldViolation::new("inventory.hosts", e));
                None
            }
        },
        RawInventory::Inline(doc) => match inline_inventory(&doc, limits) {
            Ok(()) => Some(Inventory::Inline(doc)),
            Err(violation) => {
                violations.push(violation);
                None
            }
        },
        RawInventory::Git(file) => {
            let mut check = |field: &str, result: Result<(), String>| {
                if let Err(description) = result {
                    violations.push(FieldViolation::new(field, description));
                }
            };
            git_file("inventory.git", file, &limits.providers, &mut check).map(Inventory::Git)
        }
    };

    match (inventory, source) {
        (Some(inventory), Some(source)) if violations.is_empty() => {
            let timeout_seconds = if sub.timeout_seconds == 0 {
                limits.default_timeout_seconds
            } else {
                sub.timeout_seconds
            };
            let request_id = (!sub.request_id.is_empty()).then_some(sub.request_id);
            Ok(Validated {
                spec: JobSpec {
                    playbook: sub.playbook,
                    source,
                    extra_vars: sub.extra_vars,
                    inventory,
                    options: sub.options,
                    timeout_seconds,
                    credentials: sub.credentials,
                },
                request_id,
                secrets: sub.secret_extra_vars,
                queue: if sub.queue.is_empty() {
                    DEFAULT_QUEUE.to_owned()
                } else {
                    sub.queue
                },
            })
        }
        _ => Err(Error::InvalidArgument(violations)),
    }
}

/// A file in git: an allowed repository (in canonical form), a ref as git
/// takes it, a path inside the repository.
fn git_file(
    field: &str,
    raw: RawGitFile,
    providers: &Providers,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> Option<GitFile> {
    let repo = providers.allow(&raw.repo).map(|(_, url)| url.to_string());
    let ok =
        repo.is_ok() && src::git_ref(&raw.git_ref).is_ok() && src::path_in_repo(&raw.path).is_ok();
    check(
        &format!("{field}.repo"),
        repo.as_ref().map(|_| ()).map_err(Clone::clone),
    );
    check(&format!("{field}.ref"), src::git_ref(&raw.git_ref));
    check(&format!("{field}.path"), src::path_in_repo(&raw.path));
    ok.then(|| GitFile {
        repo: repo.unwrap_or_default(),
        git_ref: normal_ref(raw.git_ref),
        path: raw.path,
    })
}

/// Commit ids in lowercase, so that the same commit is the same request.
fn normal_ref(r: String) -> String {
    if src::is_commit_id(&r) {
        r.to_ascii_lowercase()
    } else {
        r
    }
}

/// A playbook name: a relative path inside the catalogue ending in .yml or
/// .yaml, without `..`, empty or hidden segments, or a leading `-`.
pub fn playbook_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required (see ListPlaybooks)".into());
    }
    if name.len() > MAX_PLAYBOOK_NAME_BYTES {
        return Err(format!("must be at most {MAX_PLAYBOOK_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if name.starts_with('/') {
        return Err("must be a name in the catalogue, not an absolute path".into());
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
        return Err("must end in .yml or .yaml".into());
    }
    for segment in name.split('/') {
        if segment == ".." {
            return Err("must not contain '..'".into());
        }
        if segment.is_empty() || segment.starts_with('.') || segment.starts_with('-') {
            return Err(format!("has an invalid path segment {segment:?}"));
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("may contain only letters, digits, '.', '_', '-' and '/'".into());
        }
    }
    Ok(())
}

fn request_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(format!("must be at most {MAX_REQUEST_ID_BYTES} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// One host name: letters, digits, `.`, `_`, `-` and `:` (IPv6), not
/// starting with `-` or `.`. A host name reaches ssh's command line when no
/// `ansible_host` is set, and brackets would expand it to a range of hosts.
fn host_name(host: &str) -> Result<(), String> {
    connection_word(
        "host",
        host,
        255,
        "letters, digits, '.', '_', '-' and ':'",
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'),
    )?;
    // One ':' is Ansible's `host:port`: the port follows the ansible_port rule.
    if let [_, port_text] = host.split(':').collect::<Vec<_>>()[..] {
        port(&Value::String(port_text.to_owned())).map_err(|_| {
            format!("host {host:?}: the port after ':' must be a number from 1 to 65535")
        })?;
    }
    Ok(())
}

/// A value that reaches ssh's command line (a host name, an address, a user):
/// non-empty, bounded, made of allowed characters only, and never something
/// ssh would take as an option.
fn connection_word(
    what: &str,
    value: &str,
    max_len: usize,
    allowed_text: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("has an empty {what}"));
    }
    if value.len() > max_len {
        return Err(format!("has a {what} over {max_len} bytes"));
    }
    if value.starts_with('-') || value.starts_with('.') {
        return Err(format!("{what} {value:?} must not start with '-' or '.'"));
    }
    if !value.chars().all(allowed) {
        return Err(format!(
            "{what} {value:?} may contain only {allowed_text} (no whitespace, shell or ssh option syntax)"
        ));
    }
    Ok(())
}

/// A comma-separated host list such as "web1,web2".
pub fn hosts(list: &str, max_hosts: usize) -> Result<Vec<String>, String> {
    let hosts: Vec<String> = list.split(',').map(str::to_owned).collect();
    if hosts.len() > max_hosts {
        return Err(format!("has more than {max_hosts} hosts"));
    }
    for host in &hosts {
        host_name(host)?;
    }
    Ok(hosts)
}

/// The `ansible_*` variables an inline inventory may set without
/// `ALLOW_ANSIBLE_VARS`: the connection facts a caller legitimately knows.
/// Each value is checked, since it reaches ssh's command line.
const CALLER_CONNECTION_VARS: [&str; 4] = [
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_connection",
];

/// The connection plugins a caller may choose.
const CALLER_CONNECTIONS: [&str; 2] = ["ssh", "local"];

/// An inline inventory: `{group: {hosts: {name: vars}, children: {group: ..}, vars: {..}}}`.
/// Host and group variables follow the extra_vars rule (no `ansible_*` unless
/// allowed), except the connection facts of [`CALLER_CONNECTION_VARS`].
pub fn inline_inventory(doc: &Map<String, Value>, limits: &Limits) -> Result<(), FieldViolation> {
    const FIELD: &str = "inventory.inline";
    if doc.is_empty() {
        return Err(FieldViolation::new(
            FIELD,
            "must have at least one group, e.g. {\"all\": {\"hosts\": {...}}}",
        ));
    }
    let mut host_count = 0;
    for (group, body) in doc {
        if group == "plugin" {
            // Ansible's YAML inventory plugin takes such a file for another
            // plugin's configuration and ignores it.
            return Err(FieldViolation::new(
                field_path(FIELD, group),
                "a group may not be named \"plugin\"",
            ));
        }
        inventory_group(FIELD, group, body, &mut host_count, limits, 0)?;
    }
    Ok(())
}

/// `parent.name`, or `parent["name"]` when the name is not an identifier.
fn field_path(parent: &str, name: &str) -> String {
    if is_identifier(name) {
        format!("{parent}.{name}")
    } else {
        format!("{parent}[{}]", Value::String(name.to_owned()))
    }
}

fn inventory_group(
    parent: &str,
    name: &str,
    body: &Value,
    host_count: &mut usize,
    limits: &Limits,
    depth: usize,
) -> Result<(), FieldViolation> {
    let path = field_path(parent, name);
    let fail = |field: &str, description: String| Err(FieldViolation::new(field, description));
    if depth > 16 {
        return fail(&path, "nests groups deeper than 16 levels".into());
    }
    if !is_identifier(name) {
        return fail(
            &path,
            format!("group {name:?} must be an identifier (letters, digits, '_')"),
        );
    }
    let body = match body {
        Value::Null => return Ok(()),
        Value::Object(body) => body,
        _ => return fail(&path, format!("group {name:?} must be an object")),
    };
    for (key, value) in body {
        let field = format!("{path}.{key}");
        match (key.as_str(), value) {
            ("hosts", Value::Object(hosts)) => {
                for (host, vars) in hosts {
                    let host_field = field_path(&field, host);
                    host_name(host).map_err(|e| FieldViolation::new(&host_field, e))?;
                    match vars {
                        Value::Null => {}
                        Value::Object(vars) => inventory_vars(&host_field, vars, limits)?,
                        _ => {
                            return fail(
                                &host_field,
                                format!("vars of host {host:?} must be an object"),
                            )
                        }
                    }
                    *host_count += 1;
                    if *host_count > limits.max_hosts {
                        return fail(
                            "inventory.inline",
                            format!("has more than {} hosts", limits.max_hosts),
                        );
                    }
                }
            }
            ("children", Value::Object(children)) => {
                for (child, child_body) in children {
                    inventory_group(&field, child, child_body, host_count, limits, depth + 1)?;
                }
            }
            ("vars", Value::Object(vars)) => inventory_vars(&field, vars, limits)?,
            ("hosts" | "children" | "vars", Value::Null) => {}
            ("hosts" | "children" | "vars", _) => {
                return fail(
                    &field,
                    format!("{key:?} of group {name:?} must be an object"),
                )
            }
            (other, _) => {
                return fail(
                    &path,
                    format!("group {name:?} has key {other:?}; allowed: hosts, children, vars"),
                )
            }
        }
    }
    Ok(())
}

/// Ansible's magic variables, which a caller never sets: the ssh, paramiko,
/// psrp and winrm connection plugins take the host to connect to from
/// `inventory_hostname` when no `ansible_host` is set, so an extra var of
/// that name would choose ssh's command line; the others describe the
/// inventory and the play, and are refused with it (in any case).
pub const MAGIC_VARS: [&str; 13] = [
    "inventory_hostname",
    "inventory_hostname_short",
    "inventory_dir",
    "inventory_file",
    "group_names",
    "groups",
    "hostvars",
    "omit",
    "play_hosts",
    "playbook_dir",
    "role_name",
    "role_names",
    "role_path",
];

/// A magic variable, whatever `ALLOW_ANSIBLE_VARS` says.
fn magic_var(name: &str) -> Result<(), String> {
    if MAGIC_VARS.iter().any(|m| m.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "variable {name:?} is one of Ansible's magic variables, which callers may not set"
        ));
    }
    Ok(())
}

/// Whether Ansible would take `name` as one of its own variables (`ansible_*`,
/// in any case).
fn is_ansible_var(name: &str) -> bool {
    name.get(..8)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("ansible_"))
}

/// Host or group variables of an inline inventory.
fn inventory_vars(
    path: &str,
    vars: &Map<String, Value>,
    limits: &Limits,
) -> Result<(), FieldViolation> {
    for (key, value) in vars {
        let field = field_path(path, key);
        let refuse = |description: String| Err(FieldViolation::new(&field, description));
        if !is_identifier(key) {
            return refuse(format!(
                "variable {key:?} must be an identifier (letters, digits and '_', not starting with a digit)"
            ));
        }
        if let Err(e) = magic_var(key) {
            return refuse(e);
        }
        if limits.allow_ansible_vars || !is_ansible_var(key) {
            continue;
        }
        let checked = match key.as_str() {
            "ansible_host" => value
                .as_str()
                .ok_or_else(|| "must be a string".to_owned())
                .and_then(|host| {
                    connection_word("address", host, 255, "letters, digits, '.', '_', '-' and ':'", |c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')
                    })
                }),
            "ansible_user" => value
                .as_str()
                .ok_or_else(|| "must be a string".to_owned())
                .and_then(|user| {
                    connection_word("user", user, 64, "letters, digits, '.', '_', '-' and '@'", |c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')
                    })
                }),
            "ansible_port" => port(value),
            "ansible_connection" => match value.as_str() {
                Some(c) if CALLER_CONNECTIONS.contains(&c) => Ok(()),
                _ => Err(format!(
                    "must be one of {}",
                    CALLER_CONNECTIONS.join(", ")
                )),
            },
            _ => Err(format!(
                "variables starting with 'ansible_' are not allowed here, except {} (the server's ALLOW_ANSIBLE_VARS lifts this for trusted callers)",
                CALLER_CONNECTION_VARS.join(", ")
            )),
        };
        if let Err(e) = checked {
            return refuse(e);
        }
    }
    Ok(())
}

/// A TCP port: a whole number (or a string of digits) from 1 to 65535.
fn port(value: &Value) -> Result<(), String> {
    let number = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()
        }
        _ => None,
    };
    match number {
        Some(1..=65535) => Ok(()),
        _ => Err(format!(
            "must be a port number from 1 to 65535, got {value}"
        )),
    }
}

/// A host pattern (`--limit`): no leading `-` or `@`, no whitespace or shell
/// characters other than Ansible's pattern operators.
pub fn pattern(value: &str, allow_empty: bool) -> Result<(), String> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err("must not be empty".into())
        };
    }
    if value.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    if value.starts_with('-') || value.starts_with('@') {
        return Err("must not start with '-' or '@'".into());
    }
    if value.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ';' | '|' | '$' | '`' | '<' | '>' | '\\' | '"' | '\'')
    }) {
        return Err("must not contain whitespace or shell characters".into());
    }
    Ok(())
}

fn tag_name(tag: &str) -> Result<(), String> {
    pattern(tag, false)?;
    if tag.contains(',') {
        return Err("must be one tag (no commas)".into());
    }
    Ok(())
}

/// A variable name as Ansible accepts it.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn extra_vars(vars: &Map<String, Value>, limits: &Limits) -> Result<(), String> {
    for key in vars.keys() {
        if !is_identifier(key) {
            return Err(format!(
                "key {key:?} must be an identifier (letters, digits and '_', not starting with a digit)"
            ));
        }
        magic_var(key)?;
        if !limits.allow_ansible_vars && is_ansible_var(key) {
            return Err(format!(
                "key {key:?}: variables starting with 'ansible_' are not allowed"
            ));
        }
    }
    let depth = vars.values().map(depth_of).max().unwrap_or(0) + 1;
    if depth > limits.max_extra_vars_depth {
        return Err(format!(
            "nest at most {} levels deep",
            limits.max_extra_vars_depth
        ));
    }
    let size = serde_json::to_vec(vars)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits.max_extra_vars_bytes {
        return Err(format!(
            "must be at most {} bytes as JSON, got {size}",
            limits.max_extra_vars_bytes
        ));
    }
    Ok(())
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playbook_names() {
        for ok in ["hello.yml", "site/web.yaml", "a_b-c.yml"] {
            assert_eq!(playbook_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "../x.yml",
            "/etc/x.yml",
            "-x.yml",
            "a/../b.yml",
            "x.txt",
            "a\0.yml",
            ".x.yml",
            "a//b.yml",
            "a b.yml",
        ] {
            assert!(playbook_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(playbook_name(&format!("{}.yml", "a".repeat(252))).is_err());
    }

    #[test]
    fn host_lists() {
        assert_eq!(hosts("web1,web2", 10).unwrap(), vec!["web1", "web2"]);
        for bad in ["", "web1,", "-x", "a b", "a;b", "$(id)", "@file"] {
            assert!(hosts(bad, 10).is_err(), "{bad:?} accepted");
        }
        assert!(hosts("a,b,c", 2).is_err());
    }

    #[test]
    fn extra_var_keys_and_depth() {
        let limits = Limits::default();
        let ok: Map<String, Value> = serde_json::from_str(r#"{"who": "Ada", "_x": [1]}"#).unwrap();
        assert!(extra_vars(&ok, &limits).is_ok());
        for bad in [
            r#"{"1x": 1}"#,
            r#"{"a-b": 1}"#,
            r#"{"ansible_user": "root"}"#,
        ] {
            let vars: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(extra_vars(&vars, &limits).is_err(), "{bad} accepted");
        }
        let mut deep = Value::Null;
        for _ in 0..40 {
            deep = Value::Array(vec![deep]);
        }
        let vars: Map<String, Value> = [("deep".to_string(), deep)].into_iter().collect();
        assert!(extra_vars(&vars, &limits).is_err());
    }

    #[test]
    fn inline_inventory_shape() {
        let ok: Map<String, Value> = serde_json::from_str(
            r#"{"all": {"hosts": {"web1": {"x": 1}, "web2": null}, "children": {"db": {"hosts": {"db1": {}}}}, "vars": {}}}"#,
        )
        .unwrap();
        let limits = Limits {
            max_hosts: 10,
            ..Limits::default()
        };
        assert!(inline_inventory(&ok, &limits).is_ok());
        for bad in [
            r#"{}"#,
            r#"{"all": {"hostz": {}}}"#,
            r#"{"all": {"hosts": ["web1"]}}"#,
            r#"{"all": {"hosts": {"-web": {}}}}"#,
            r#"{"all": 3}"#,
        ] {
            let doc: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(inline_inventory(&doc, &limits).is_err(), "{bad} accepted");
        }
    }

    fn inventory_with_host_vars(vars: Value) -> Map<String, Value> {
        let doc = serde_json::json!({"all": {"children": {"web": {"hosts": {"web1.example.com": vars}}}}});
        doc.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn inventory_variables_follow_the_extra_vars_rule() {
        let limits = Limits::default();
        let ok = serde_json::json!({"ansible_host": "10.0.0.5", "ansible_port": 2222,
            "ansible_user": "deploy", "ansible_connection": "ssh", "app_port": "8080"});
        assert_eq!(
            inline_inventory(&inventory_with_host_vars(ok), &limits),
            Ok(())
        );
        for (vars, field) in [
            (
                serde_json::json!({"ansible_shell_executable": "/bin/sh"}),
                "ansible_shell_executable",
            ),
            (
                serde_json::json!({"ANSIBLE_SSH_COMMON_ARGS": "-o x"}),
                "ANSIBLE_SSH_COMMON_ARGS",
            ),
            (
                serde_json::json!({"ansible_python_interpreter": "/usr/bin/python3"}),
                "ansible_python_interpreter",
            ),
            (
                serde_json::json!({"ansible_become_exe": "sh"}),
                "ansible_become_exe",
            ),
            (
                serde_json::json!({"ansible_host": "-oProxyCommand=x"}),
                "ansible_host",
            ),
            (serde_json::json!({"ansible_host": "a b"}), "ansible_host"),
            (serde_json::json!({"ansible_host": 7}), "ansible_host"),
            (
                serde_json::json!({"ansible_user": "x\" -o y"}),
                "ansible_user",
            ),
            (serde_json::json!({"ansible_port": 0}), "ansible_port"),
            (serde_json::json!({"ansible_port": "22 -o"}), "ansible_port"),
            (serde_json::json!({"ansible_port": 70000}), "ansible_port"),
            (
                serde_json::json!({"ansible_connection": "docker"}),
                "ansible_connection",
            ),
            (serde_json::json!({"not-a-name": 1}), "[\"not-a-name\"]"),
        ] {
            let violation = inline_inventory(&inventory_with_host_vars(vars.clone()), &limits)
                .expect_err(&format!("{vars} accepted"));
            let expected_prefix = "inventory.inline.all.children.web.hosts[\"web1.example.com\"]";
            assert!(
                violation.field.starts_with(expected_prefix),
                "{violation:?}"
            );
            assert!(violation.field.ends_with(field), "{violation:?}");
        }
        let group_vars: Map<String, Value> = serde_json::from_str(
            r#"{"all": {"vars": {"ansible_ssh_common_args": "-o ProxyCommand=x"}}}"#,
        )
        .unwrap();
        assert_eq!(
            inline_inventory(&group_vars, &limits).unwrap_err().field,
            "inventory.inline.all.vars.ansible_ssh_common_args"
        );
        let trusted = Limits {
            allow_ansible_vars: true,
            ..Limits::default()
        };
        assert_eq!(inline_inventory(&group_vars, &trusted), Ok(()));
    }

    #[test]
    fn patterns() {
        assert!(pattern("web*:!db1", true).is_ok());
        assert!(pattern("", true).is_ok());
        for bad in ["-x", "@file", "a b", "a;b"] {
            assert!(pattern(bad, true).is_err(), "{bad} accepted");
        }
    }
}
