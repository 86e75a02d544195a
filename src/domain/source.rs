//! Where a job's playbook (and inventory) come from: the catalogue, a git
//! repository of an allowed provider, or a role. The rules here decide, at
//! submit, whether a repository URL, a ref, a path or a role name may be used;
//! nothing in here touches the network or the disk.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A file in a git repository, as validated at submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitFile {
    /// The repository's canonical URL (see [`RepoUrl`]).
    pub repo: String,
    /// A branch, a tag, a full commit id, or empty for the default branch.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// A path relative to the repository's top.
    pub path: String,
}

/// A role run through a generated one-play playbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSource {
    /// `namespace.collection.role`, or a role's own name (inside the git
    /// collection when `repo` is set; on the workers' roles path otherwise).
    pub name: String,
    /// The git repository holding the collection; empty: installed on workers.
    #[serde(default)]
    pub repo: String,
    #[serde(default, rename = "ref")]
    pub git_ref: String,
    #[serde(default)]
    pub role_vars: Map<String, Value>,
    #[serde(default)]
    pub gather_facts: bool,
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `JobSpec::playbook`, from the catalogue.
    #[default]
    Catalogue,
    GitPlaybook(GitFile),
    Role(RoleSource),
}

impl Source {
    /// The git repository and ref the source is fetched from, if any.
    pub fn git(&self) -> Option<(&str, &str)> {
        match self {
            Source::Catalogue => None,
            Source::GitPlaybook(file) => Some((&file.repo, &file.git_ref)),
            Source::Role(role) if role.repo.is_empty() => None,
            Source::Role(role) => Some((&role.repo, &role.git_ref)),
        }
    }

    /// The name scoped keys' `sources=` patterns are matched against:
    /// `git:HOST/PATH` for a repository, `role:NAME` for an installed role;
    /// None for the catalogue (matched by `playbooks=`).
    pub fn scope_name(&self) -> Option<String> {
        match (self, self.git()) {
            (Source::Catalogue, _) => None,
            (_, Some((repo, _))) => Some(repo_scope_name(repo)),
            (Source::Role(role), None) => Some(format!("role:{}", role.name)),
            (Source::GitPlaybook(_), None) => None,
        }
    }

    /// A short label for logs and lists: the path or the role.
    pub fn label(&self) -> Option<String> {
        match self {
            Source::Catalogue => None,
            Source::GitPlaybook(file) => Some(format!(
                "{}@{}:{}",
                file.repo,
                ref_label(&file.git_ref),
                file.path
            )),
            Source::Role(role) if role.repo.is_empty() => Some(format!("role {}", role.name)),
            Source::Role(role) => Some(format!(
                "role {} from {}@{}",
                role.name,
                role.repo,
                ref_label(&role.git_ref)
            )),
        }
    }
}

fn ref_label(git_ref: &str) -> &str {
    if git_ref.is_empty() {
        "HEAD"
    } else {
        git_ref
    }
}

/// `git:HOST/PATH` of a canonical repository URL (`git:/PATH` for file URLs).
pub fn repo_scope_name(repo: &str) -> String {
    let rest = repo.split_once("://").map_or(repo, |(_, rest)| rest);
    format!("git:{rest}")
}

/// How git reaches a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Https,
    Http,
    File,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::File => "file",
        }
    }
}

/// Where a provider's credential comes from (the value itself is read by
/// the worker when git asks for it, never stored with a job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialFrom {
    /// An environment variable of the worker, by name.
    Env(String),
    /// A file, read each time git asks.
    File(std::path::PathBuf),
}

/// One allowed git host and the repositories it may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub scheme: Scheme,
    /// `host` or `host:port`, lowercase; empty for `file`.
    pub host: String,
    /// Organisations, groups or path prefixes (whole segments) repositories
    /// must be under.
    pub prefixes: Vec<String>,
    /// The user name sent with the credential.
    pub username: String,
    pub credential: Option<CredentialFrom>,
}

impl Provider {
    fn serves(&self, url: &RepoUrl) -> bool {
        url.scheme == self.scheme
            && url.host == self.host
            && self.prefixes.iter().any(|prefix| {
                url.path == *prefix
                    || url
                        .path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

/// The operators' allow-list of git providers (`--git-providers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    pub providers: Vec<Provider>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    providers: Vec<ProviderEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    #[serde(default)]
    scheme: Scheme,
    #[serde(default)]
    host: String,
    #[serde(default)]
    organizations: Vec<String>,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    credential_env: Option<String>,
    #[serde(default)]
    credential_file: Option<std::path::PathBuf>,
}

impl Providers {
    /// Reads a providers file (YAML; see the README's "Git sources").
    pub fn parse(text: &str) -> Result<Providers, String> {
        let file: ProvidersFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut providers = Vec::new();
        for entry in file.providers {
            let name = entry.name;
            let fail = |what: String| Err(format!("provider {name:?}: {what}"));
            let host = entry.host.to_ascii_lowercase();
            match entry.scheme {
                Scheme::File if !host.is_empty() => {
                    return fail("a file provider has no host".into())
                }
                Scheme::Https | Scheme::Http if host_part(&host).is_err() => {
                    return fail(format!(
                        "host {host:?} must be a host name, with an optional :port"
                    ))
                }
                _ => {}
            }
            let mut prefixes = entry.organizations;
            prefixes.extend(entry.path_prefixes);
            if prefixes.is_empty() {
                return fail("name at least one of organizations or path_prefixes".into());
            }
            for prefix in &mut prefixes {
                let trimmed = prefix.trim_matches('/').to_owned();
                let checked = if entry.scheme == Scheme::File {
                    repo_path(&format!("/{trimmed}"))
                } else {
                    repo_path(&trimmed)
                };
                if trimmed.is_empty() || checked.is_err() {
                    return fail(format!("prefix {prefix:?} must be whole path segments"));
                }
                *prefix = if entry.scheme == Scheme::File {
                    format!("/{trimmed}")
                } else {
                    trimmed
                };
            }
            let credential = match (entry.credential_env, entry.credential_file) {
                (Some(_), Some(_)) => {
                    return fail("give credential_env or credential_file, not both".into())
                }
                (Some(var), None) if !var.is_empty() => Some(CredentialFrom::Env(var)),
                (None, Some(path)) if path.is_absolute() => Some(CredentialFrom::File(path)),
                (None, Some(path)) => {
                    return fail(format!(
                        "credential_file {} must be an absolute path",
                        path.display()
                    ))
                }
                (Some(_), None) => return fail("credential_env is empty".into()),
                (None, None) => None,
            };
            if credential.is_some() && entry.scheme == Scheme::File {
                return fail("a file provider takes no credential".into());
            }
            providers.push(Provider {
                username: entry.username.unwrap_or_else(|| "git".into()),
                name,
                scheme: entry.scheme,
                host,
                prefixes,
                credential,
            });
        }
        Ok(Providers { providers })
    }

    /// The environment variables providers take credentials from (which
    /// runs must not see).
    pub fn credential_variables(&self) -> Vec<String> {
        self.providers
            .iter()
            .filter_map(|p| match &p.credential {
                Some(CredentialFrom::Env(var)) => Some(var.clone()),
                _ => None,
            })
            .collect()
    }

    /// The provider serving `url`, with the URL in canonical form; why not
    /// otherwise (naming what is allowed).
    pub fn allow(&self, url: &str) -> Result<(&Provider, RepoUrl), String> {
        let parsed = RepoUrl::parse(url)?;
        match self.providers.iter().find(|p| p.serves(&parsed)) {
            Some(provider) => Ok((provider, parsed)),
            None if self.providers.is_empty() => {
                Err("git sources are off on this server (it has no --git-providers file)".into())
            }
            None => Err(format!(
                "{} is not under an allowed git provider; allowed: {}",
                parsed,
                self.providers
                    .iter()
                    .flat_map(|p| p.prefixes.iter().map(move |prefix| match p.scheme {
                        Scheme::File => format!("file://{prefix}/"),
                        scheme => format!("{}://{}/{prefix}/", scheme.as_str(), p.host),
                    }))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A repository URL in canonical form: `scheme://host[:port]/path` or
/// `file:///path`, with no user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    pub scheme: Scheme,
    pub host: String,
    /// Without leading `/` for http(s); absolute for file.
    pub path: String,
}

pub const MAX_REPO_URL_BYTES: usize = 512;

impl RepoUrl {
    pub fn parse(url: &str) -> Result<RepoUrl, String> {
        if url.is_empty() {
            return Err("is required".into());
        }
        if url.len() > MAX_REPO_URL_BYTES {
            return Err(format!("must be at most {MAX_REPO_URL_BYTES} bytes"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "{url:?} must be a URL such as https://git.example.com/team/repo.git"
            ));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "https" => Scheme::Https,
            "http" => Scheme::Http,
            "file" => Scheme::File,
            other => {
                return Err(format!(
                    "scheme {other:?} is not allowed; use https (or what a provider allows)"
                ))
            }
        };
        if rest.contains(['?', '#']) {
            return Err("must not have a query or a fragment".into());
        }
        let (host, path) = match scheme {
            Scheme::File => ("", rest),
            _ => match rest.split_once('/') {
                Some((host, path)) => (host, path),
                None => return Err("names no repository path".into()),
            },
        };
        if host.contains('@') {
            return Err(
                "must not carry a user name or password; providers' credentials come from the server"
                    .into(),
            );
        }
        if scheme != Scheme::File {
            host_part(host)?;
        }
        let path = path.trim_end_matches('/');
        repo_path(path)?;
        Ok(RepoUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::File => write!(f, "file://{}", self.path),
            scheme => write!(f, "{}://{}/{}", scheme.as_str(), self.host, self.path),
        }
    }
}

fn host_part(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("host {host:?} must be a host name"));
    }
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(format!("port {port:?} must be 1 to 65535"));
        }
    }
    Ok(())
}

/// A repository's path on its host (`team/repo.git`; absolute for file):
/// segments of letters, digits, `.`, `_`, `-`, `~`, none empty, `.` or `..`
/// or starting with `-`.
fn repo_path(path: &str) -> Result<(), String> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Err("names no repository path".into());
    }
    for segment in relative.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "repository path {path:?} has an empty, '.' or '..' segment"
            ));
        }
        if segment.starts_with('-') {
            return Err(format!(
                "repository path {path:?} has a segment starting with '-'"
            ));
        }
        if !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~'))
        {
            return Err(format!(
                "repository path {path:?} may contain only letters, digits, '.', '_', '-', '~' and '/'"
            ));
        }
    }
    Ok(())
}

pub const MAX_REF_BYTES: usize = 255;

/// Whether `r` is a full commit id (SHA-1 or SHA-256, hex).
pub fn is_commit_id(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.chars().all(|c| c.is_ascii_hexdigit())
}

/// A ref as `git check-ref-format` takes it (one-level names allowed), never
/// starting with `-`; empty means the default branch.
pub fn git_ref(r: &str) -> Result<(), String> {
    if r.is_empty() || is_commit_id(r) {
        return Ok(());
    }
    if r.len() > MAX_REF_BYTES {
        return Err(format!("must be at most {MAX_REF_BYTES} bytes"));
    }
    let bad = |why: &str| Err(format!("{r:?} is not a valid git ref: {why}"));
    if r.starts_with('-') {
        return bad("it starts with '-'");
    }
    if r == "@" || r.contains("@{") {
        return bad("it is '@' or contains '@{'");
    }
    if r.contains("..") {
        return bad("it contains '..'");
    }
    if r.ends_with('.') || r.ends_with('/') || r.starts_with('/') {
        return bad("it starts with '/' or ends with '.' or '/'");
    }
    if r.chars().any(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad("it contains a space, a control character or one of ~ ^ : ? * [ \\");
    }
    for component in r.split('/') {
        if component.is_empty() {
            return bad("it contains '//'");
        }
        if component.starts_with('.') || component.ends_with(".lock") {
            return bad("a component starts with '.' or ends with '.lock'");
        }
    }
    Ok(())
}

pub const MAX_REPO_FILE_PATH_BYTES: usize = 1024;

/// A path inside a repository: relative, no `..`, `.` or empty segments, no
/// `.git` segment, no control characters, not starting with `-`. (Symbolic
/// links that leave the checkout are refused when the run starts.)
pub fn path_in_repo(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is required".into());
    }
    if path.len() > MAX_REPO_FILE_PATH_BYTES {
        return Err(format!("must be at most {MAX_REPO_FILE_PATH_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return Err("must be relative to the repository's top, not an absolute path".into());
    }
    if path.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    for segment in path.split('/') {
        match segment {
            ".." => return Err("must not contain '..'".into()),
            "" | "." => return Err("must not contain empty or '.' segments".into()),
            s if s.eq_ignore_ascii_case(".git") => return Err("must not reach into .git".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A role name: `role`, or `namespace.collection.role`; identifiers only.
pub fn role_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is required".into());
    }
    let parts: Vec<&str> = name.split('.').collect();
    let identifier = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !matches!(parts.len(), 1 | 3) || !parts.iter().all(|p| identifier(p)) {
        return Err(format!(
            "{name:?} must be a role name or namespace.collection.role (identifiers separated by '.')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROVIDERS: &str = r#"
providers:
  - name: example
    host: git.example.com
    organizations: [platform, "team/infra"]
    credential_env: EXAMPLE_TOKEN
  - name: mirror
    scheme: http
    host: 127.0.0.1:8080
    path_prefixes: [mirror]
    credential_file: /run/secrets/mirror
    username: ci-bot
"#;

    #[test]
    fn providers_allow_their_organisations_only() {
        let providers = Providers::parse(PROVIDERS).unwrap();
        let (p, url) = providers
            .allow("https://GIT.example.com/platform/automation.git/")
            .unwrap();
        assert_eq!(p.name, "example");
        assert_eq!(p.username, "git");
        assert_eq!(
            url.to_string(),
            "https://git.example.com/platform/automation.git"
        );
        assert!(providers
            .allow("https://git.example.com/team/infra/x.git")
            .is_ok());
        assert!(providers
            .allow("http://127.0.0.1:8080/mirror/x.git")
            .is_ok());
        for refused in [
            "https://git.example.com/platformx/a.git",
            "https://git.example.com/team/a.git",
            "http://git.example.com/platform/a.git",
            "https://evil.example.com/platform/a.git",
            "https://git.example.com.evil.com/platform/a.git",
            "https://127.0.0.1:8080/mirror/x.git",
            "file:///platform/a.git",
            "ssh://git.example.com/platform/a.git",
            "ext::sh -c touch% /tmp/pwned",
            "https://user:pw@git.example.com/platform/a.git",
            "https://git.example.com/platform/../secret/a.git",
            "https://git.example.com/platform/a.git?x=1",
            "https://git.example.com/platform/-u.git",
            "-uhttps://git.example.com/platform/a.git",
            "https://git.example.com:0/platform/a.git",
        ] {
            assert!(providers.allow(refused).is_err(), "{refused} allowed");
        }
        assert!(Providers::default()
            .allow("https://git.example.com/platform/a.git")
            .unwrap_err()
            .contains("--git-providers"));
    }

    #[test]
    fn a_providers_file_with_a_mistake_is_refused_naming_it() {
        for (bad, says) in [
            ("providers: [{name: a, host: h}]", "organizations"),
            (
                "providers: [{name: a, host: 'h x', organizations: [o]}]",
                "host",
            ),
            (
                "providers: [{name: a, host: h, organizations: ['../o']}]",
                "prefix",
            ),
            (
                "providers: [{name: a, scheme: ssh, host: h, organizations: [o]}]",
                "ssh",
            ),
            (
                "providers: [{name: a, host: h, organizations: [o], credential_file: rel}]",
                "absolute",
            ),
            (
                "providers: [{name: a, host: h, organizations: [o], token: x}]",
                "token",
            ),
            (
                "providers: [{name: a, scheme: file, path_prefixes: [srv], credential_env: X}]",
                "no credential",
            ),
        ] {
            let e = Providers::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn refs_follow_check_ref_format() {
        for good in [
            "",
            "main",
            "release/1.2",
            "v1.0.0",
            "refs/heads/main",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(git_ref(good).is_ok(), "{good} refused");
        }
        for bad in [
            "-main",
            "--upload-pack=touch /tmp/x",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a/",
            "/a",
            "a//b",
            ".hidden",
            "a/.b",
            "a.lock",
            "a.",
            "@",
            "a@{1}",
            "a\nb",
        ] {
            assert!(git_ref(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        for good in ["site.yml", "deploy/site.yml", "inventories/prod/hosts"] {
            assert!(path_in_repo(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x.yml",
            "a/../../x.yml",
            "a//b.yml",
            "./a.yml",
            ".git/config",
            "a/.GIT/hooks",
            "-x.yml",
            "a\n.yml",
        ] {
            assert!(path_in_repo(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn role_names_are_identifiers() {
        for good in ["nginx", "acme.web.nginx", "my_role"] {
            assert!(role_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a.b.c.d", "../x", "a-b", "1abc", "a b", "{{x}}"] {
            assert!(role_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn scope_names_name_the_repository_or_the_role() {
        let file = GitFile {
            repo: "https://git.example.com/platform/a.git".into(),
            git_ref: "main".into(),
            path: "site.yml".into(),
        };
        assert_eq!(
            Source::GitPlaybook(file).scope_name().unwrap(),
            "git:git.example.com/platform/a.git"
        );
        let role = RoleSource {
            name: "acme.web.nginx".into(),
            repo: String::new(),
            git_ref: String::new(),
            role_vars: Map::new(),
            gather_facts: false,
        };
        assert_eq!(
            Source::Role(role).scope_name().unwrap(),
            "role:acme.web.nginx"
        );
        assert_eq!(Source::Catalogue.scope_name(), None);
    }
}
