//! Who may do what: a caller (an API key's or a client certificate's client)
//! and its scopes. Scopes say which playbooks a client may run (glob patterns
//! over catalogue names), which git repositories and installed roles it may
//! run (`sources=`, glob patterns over `git:HOST/PATH` and `role:NAME`), what
//! it may do (`run`, `cancel`, `read`) and whose jobs it sees (`own` or
//! `all`). A client without scopes may do everything, as before scopes
//! existed; a client limited to some playbooks runs no git source or role
//! unless `sources=` allows it.

use std::fmt;
use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::{Error, Job};

/// What a call does, for the `actions` scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SubmitJob.
    Run,
    /// CancelJob.
    Cancel,
    /// GetJob, ListJobs, WatchJob.
    Read,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Run, Action::Cancel, Action::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Run => "run",
            Action::Cancel => "cancel",
            Action::Read => "read",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Run => 1,
            Action::Cancel => 2,
            Action::Read => 4,
        }
    }
}

/// Whose jobs a client sees (and may cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Only the jobs it submitted; others' are NOT_FOUND to it.
    Own,
    /// Every job.
    All,
}

/// What one client may do.
#[derive(Clone)]
pub struct Scopes {
    /// Glob patterns of the playbooks it may run; None: every playbook.
    playbooks: Option<(Vec<String>, GlobSet)>,
    /// Glob patterns of the sources (git repositories, installed roles) it
    /// may run; None: every source.
    sources: Option<(Vec<String>, GlobSet)>,
    /// Glob patterns of the named credentials it may use; None: every one.
    credentials: Option<(Vec<String>, GlobSet)>,
    actions: u8,
    jobs: Visibility,
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().join(" "))
    }
}

impl PartialEq for Scopes {
    fn eq(&self, other: &Self) -> bool {
        self.words() == other.words()
    }
}

impl Scopes {
    /// Everything: a key without scopes, or a service without keys.
    pub fn full() -> Scopes {
        Scopes {
            playbooks: None,
            sources: None,
            credentials: None,
            actions: Action::ALL.iter().map(|a| a.bit()).sum(),
            jobs: Visibility::All,
        }
    }

    /// Reads the scope words of a keys-file line: `playbooks=GLOB` (once per
    /// pattern), `actions=run,cancel,read`, `jobs=own|all`. What a line does
    /// not restrict stays unrestricted.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Scopes, String> {
        let mut scopes = Scopes::full();
        let mut patterns: Vec<String> = Vec::new();
        let mut source_patterns: Vec<String> = Vec::new();
        let mut credential_patterns: Vec<String> = Vec::new();
        let mut actions_given = false;
        for word in words {
            let (name, value) = word.split_once('=').ok_or_else(|| {
                format!("scope {word:?}: expected playbooks=GLOB, sources=GLOB, credentials=GLOB, actions=LIST or jobs=own|all")
            })?;
            match name {
                "playbooks" => {
                    glob(name, value)?;
                    patterns.push(value.to_owned());
                }
                "sources" => {
                    glob(name, value)?;
                    source_patterns.push(value.to_owned());
                }
                "credentials" => {
                    glob(name, value)?;
                    credential_patterns.push(value.to_owned());
                }
                "actions" => {
                    if !actions_given {
                        scopes.actions = 0;
                        actions_given = true;
                    }
                    for action in value.split(',') {
                        let action = Action::ALL
                            .into_iter()
                            .find(|a| a.as_str() == action)
                            .ok_or_else(|| {
                                format!("action {action:?}: expected run, cancel or read")
                            })?;
                        scopes.actions |= action.bit();
                    }
                }
                "jobs" => {
                    scopes.jobs = match value {
                        "own" => Visibility::Own,
                        "all" => Visibility::All,
                        _ => return Err(format!("jobs={value}: expected own or all")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown scope {name:?}: expected playbooks, sources, credentials, actions or jobs"
                    ))
                }
            }
        }
        let limited = !patterns.is_empty();
        scopes.playbooks = glob_set("playbooks", patterns)?;
        scopes.sources = glob_set("sources", source_patterns)?;
        scopes.credentials = glob_set("credentials", credential_patterns)?;
        // Limited to some playbooks: no git source, role or credential
        // either, unless named.
        if limited && scopes.sources.is_none() {
            scopes.sources = Some((Vec::new(), GlobSet::empty()));
        }
        if limited && scopes.credentials.is_none() {
            scopes.credentials = Some((Vec::new(), GlobSet::empty()));
        }
        Ok(scopes)
    }

    /// The scope words, as `parse` reads them; empty for full scopes.
    pub fn words(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some((patterns, _)) = &self.playbooks {
            words.extend(patterns.iter().map(|p| format!("playbooks={p}")));
        }
        if let Some((patterns, _)) = &self.sources {
            words.extend(patterns.iter().map(|p| format!("sources={p}")));
        }
        if let Some((patterns, _)) = &self.credentials {
            words.extend(patterns.iter().map(|p| format!("credentials={p}")));
        }
        if self.actions != Scopes::full().actions {
            let actions: Vec<&str> = Action::ALL
                .into_iter()
                .filter(|a| self.allows(*a))
                .map(Action::as_str)
                .collect();
            words.push(format!("actions={}", actions.join(",")));
        }
        if self.jobs == Visibility::Own {
            words.push("jobs=own".into());
        }
        words
    }

    pub fn allows(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }

    /// Whether a catalogue playbook is one this client may run.
    pub fn may_run(&self, playbook: &str) -> bool {
        match &self.playbooks {
            None => true,
            Some((_, set)) => set.is_match(playbook),
        }
    }

    /// Whether a source (`git:HOST/PATH`, `role:NAME`) is one this client
    /// may run.
    pub fn may_run_source(&self, name: &str) -> bool {
        match &self.sources {
            None => true,
            Some((_, set)) => set.is_match(name),
        }
    }

    /// Whether a named credential is one this client may use.
    pub fn may_use_credential(&self, name: &str) -> bool {
        match &self.credentials {
            None => true,
            Some((_, set)) => set.is_match(name),
        }
    }

    pub fn jobs(&self) -> Visibility {
        self.jobs
    }
}

/// The patterns as one set; None when there are none.
fn glob_set(scope: &str, patterns: Vec<String>) -> Result<Option<(Vec<String>, GlobSet)>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for pattern in &patterns {
        set.add(glob(scope, pattern)?);
    }
    let set = set.build().map_err(|e| e.to_string())?;
    Ok(Some((patterns, set)))
}

/// A name pattern: `*` stays within a folder, `**` crosses them.
fn glob(scope: &str, pattern: &str) -> Result<Glob, String> {
    if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{scope}={pattern:?}: a glob without whitespace"));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{scope}={pattern}: {e}"))
}

/// Who is calling: the client of an API key or a client certificate (None
/// when the service runs without keys), and what it may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Option<String>,
    pub scopes: Arc<Scopes>,
}

impl Caller {
    /// A caller of a service without keys: no name, every scope.
    pub fn anonymous() -> Caller {
        Caller {
            name: None,
            scopes: Arc::new(Scopes::full()),
        }
    }

    pub fn named(name: &str, scopes: Arc<Scopes>) -> Caller {
        Caller {
            name: Some(name.to_owned()),
            scopes,
        }
    }

    /// The name limits and logs use for this caller.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("anonymous")
    }

    /// PERMISSION_DENIED unless the caller's scopes allow `action`.
    pub fn require(&self, action: Action) -> Result<(), Error> {
        if self.scopes.allows(action) {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            reason: "ACTION_NOT_PERMITTED",
            message: format!(
                "client {} may not {} jobs (its key's actions: {})",
                self.label(),
                action.as_str(),
                Action::ALL
                    .into_iter()
                    .filter(|a| self.scopes.allows(*a))
                    .map(Action::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// PERMISSION_DENIED unless the caller may run this playbook.
    pub fn require_playbook(&self, playbook: &str) -> Result<(), Error> {
        if self.scopes.may_run(playbook) {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            reason: "PLAYBOOK_NOT_PERMITTED",
            message: format!("client {} may not run playbook {playbook:?}", self.label()),
        })
    }

    /// PERMISSION_DENIED unless the caller may run this git source or role.
    pub fn require_source(&self, name: &str) -> Result<(), Error> {
        if self.scopes.may_run_source(name) {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            reason: "SOURCE_NOT_PERMITTED",
            message: format!(
                "client {} may not run {name:?} (its key's sources= scopes do not allow it)",
                self.label()
            ),
        })
    }

    /// PERMISSION_DENIED unless the caller may use this credential.
    pub fn require_credential(&self, name: &str) -> Result<(), Error> {
        if self.scopes.may_use_credential(name) {
            return Ok(());
        }
        Err(Error::PermissionDenied {
            reason: "CREDENTIAL_NOT_PERMITTED",
            message: format!(
                "client {} may not use credential {name:?} (its key's credentials= scopes do not allow it)",
                self.label()
            ),
        })
    }

    /// Whether the caller sees this job: every job, or only its own.
    pub fn sees(&self, job: &Job) -> bool {
        match self.scopes.jobs() {
            Visibility::All => true,
            Visibility::Own => job.submitted_by == self.name,
        }
    }

    /// The job if the caller sees it; NOT_FOUND (as if it did not exist)
    /// otherwise.
    pub fn visible(&self, job: Job) -> Result<Job, Error> {
        if self.sees(&job) {
            Ok(job)
        } else {
            Err(Error::JobNotFound(job.id.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_back() {
        let scopes = Scopes::parse([
            "playbooks=deploy/*.yml",
            "playbooks=hello.yml",
            "actions=run,read",
            "jobs=own",
        ])
        .unwrap();
        assert!(scopes.may_run("deploy/web.yml"));
        assert!(scopes.may_run("hello.yml"));
        assert!(
            !scopes.may_run("deploy/sub/web.yml"),
            "* stays in its folder"
        );
        assert!(!scopes.may_run("multi.yml"));
        assert!(scopes.allows(Action::Run) && scopes.allows(Action::Read));
        assert!(!scopes.allows(Action::Cancel));
        assert_eq!(scopes.jobs(), Visibility::Own);
        let words = scopes.words();
        assert_eq!(
            Scopes::parse(words.iter().map(String::as_str)).unwrap(),
            scopes
        );
        assert!(Scopes::full().words().is_empty());
        assert!(
            !scopes.may_run_source("git:git.example.com/platform/a.git"),
            "a key limited to playbooks runs no git source"
        );
        let git = Scopes::parse([
            "playbooks=hello.yml",
            "sources=git:git.example.com/platform/*",
        ])
        .unwrap();
        assert!(git.may_run_source("git:git.example.com/platform/a.git"));
        assert!(!git.may_run_source("git:git.example.com/other/a.git"));
        assert!(!git.may_run_source("role:acme.web.nginx"));
        assert_eq!(
            Scopes::parse(git.words().iter().map(String::as_str)).unwrap(),
            git
        );
        assert!(Scopes::parse(["actions=run"])
            .unwrap()
            .may_run_source("role:x"));
        let creds = Scopes::parse(["playbooks=hello.yml", "credentials=prod-*"]).unwrap();
        assert!(creds.may_use_credential("prod-ssh") && !creds.may_use_credential("dev-ssh"));
        assert!(
            !scopes.may_use_credential("prod-ssh"),
            "limited keys use no credential"
        );
        assert!(Scopes::full().may_use_credential("any"));
        assert_eq!(
            Scopes::parse(creds.words().iter().map(String::as_str)).unwrap(),
            creds
        );
        for bad in [
            "actions=delete",
            "jobs=some",
            "colour=red",
            "playbooks=",
            "playbooks=a[",
            "sources=",
            "x",
        ] {
            assert!(Scopes::parse([bad]).is_err(), "{bad} accepted");
        }
    }
}
