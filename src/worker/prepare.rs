//! Before a run: what it executes, found in the catalogue or checked out of
//! git (at the commit its ref resolves to now), with the collections its
//! git sources need installed once per commit.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::executor::{Prepared, Target};
use super::Worker;
use crate::domain::credential::Credential;
use crate::domain::{ErrorReason, GitFile, Inventory, Job, Outcome, Resolved, RoleSource, Source};
use crate::sources::{
    passed_through, remove_tree, Checkout, GitCache, KillGroupOnDrop, SourceError,
};

/// A prepared run and the checkouts it holds until it ends.
pub(crate) struct Ready {
    pub prepared: Prepared,
    pub resolved: Resolved,
    pub _checkouts: Vec<Checkout>,
}

impl Ready {
    /// What the run's output must never show: its credentials' values.
    pub fn secret_values(&self) -> Vec<String> {
        self.prepared
            .credentials
            .iter()
            .flat_map(|c| c.secret.secret_values())
            .collect()
    }
}

fn outcome_of(e: SourceError) -> Outcome {
    match e {
        SourceError::Unavailable(message) => {
            Outcome::not_run(ErrorReason::SourceUnavailable, message)
        }
        SourceError::NotFound(message) => Outcome::not_run(ErrorReason::SourceNotFound, message),
    }
}

/// The checkout of a git file's commit, and the file in it.
async fn checkout_file(git: &GitCache, file: &GitFile) -> Result<(Checkout, PathBuf), Outcome> {
    let checkout = git
        .checkout(&file.repo, &file.git_ref)
        .await
        .map_err(outcome_of)?;
    let path = checkout.file(&file.path, &file.repo).map_err(outcome_of)?;
    Ok((checkout, path))
}

impl Worker {
    /// What the job runs, ready to start; the outcome when it cannot run.
    pub(crate) async fn prepare(&self, job: &Job) -> Result<Ready, Outcome> {
        let spec = &job.spec;
        let mut checkouts = Vec::new();
        let mut resolved = Resolved::default();
        let mut collections = Vec::new();
        let git = || {
            self.resources.git.as_deref().ok_or_else(|| {
                Outcome::not_run(
                    ErrorReason::SourceUnavailable,
                    "this worker has no git providers (--git-providers), so it cannot fetch git sources",
                )
            })
        };
        let target = match &spec.source {
            Source::Catalogue => match self.catalogue.resolve(&spec.playbook) {
                Ok(path) => Target::Playbook(path),
                Err(e) => {
                    return Err(Outcome::not_run(
                        ErrorReason::ExecutorError,
                        format!("playbook {}: {e}", spec.playbook),
                    ))
                }
            },
            Source::GitPlaybook(file) => {
                let (checkout, path) = checkout_file(git()?, file).await?;
                if let Some(installed) = self.requirements(&checkout).await.map_err(outcome_of)? {
                    collections.push(installed);
                }
                resolved.source_commit = Some(checkout.commit.clone());
                resolved.source_ref = Some(checkout.ref_name.clone());
                checkouts.push(checkout);
                Target::Playbook(path)
            }
            Source::Role(role) if role.repo.is_empty() => Target::Role {
                name: role.name.clone(),
                vars: role.role_vars.clone(),
                gather_facts: role.gather_facts,
            },
            Source::Role(role) => {
                let checkout = git()?
                    .checkout(&role.repo, &role.git_ref)
                    .await
                    .map_err(outcome_of)?;
                let name = install_collection(&checkout, role).map_err(outcome_of)?;
                collections.push(checkout.collections.join("collection"));
                resolved.source_commit = Some(checkout.commit.clone());
                resolved.source_ref = Some(checkout.ref_name.clone());
                checkouts.push(checkout);
                Target::Role {
                    name,
                    vars: role.role_vars.clone(),
                    gather_facts: role.gather_facts,
                }
            }
        };
        let inventory_file = match &spec.inventory {
            Inventory::Git(file) => {
                let (checkout, path) = checkout_file(git()?, file).await?;
                resolved.inventory_commit = Some(checkout.commit.clone());
                checkouts.push(checkout);
                Some(path)
            }
            _ => None,
        };
        let credentials = self.open_credentials(&spec.credentials).await?;
        Ok(Ready {
            prepared: Prepared {
                target,
                inventory_file,
                collections,
                credentials,
            },
            resolved,
            _checkouts: checkouts,
        })
    }

    /// The job's credentials, opened with this worker's master key.
    async fn open_credentials(&self, names: &[String]) -> Result<Vec<Credential>, Outcome> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let unavailable =
            |message: String| Outcome::not_run(ErrorReason::CredentialUnavailable, message);
        let key = self.resources.master_key.as_ref().ok_or_else(|| {
            unavailable(
                "this worker has no master key (--credentials-key-file or CREDENTIALS_KEY), so it cannot open credentials".into(),
            )
        })?;
        let rows = self.store.credentials_named(names).await.map_err(|e| {
            Outcome::not_run(
                ErrorReason::ExecutorError,
                format!("reading credentials: {e}"),
            )
        })?;
        names
            .iter()
            .map(|name| {
                let row = rows.iter().find(|r| &r.info.name == name).ok_or_else(|| {
                    unavailable(format!(
                        "credential {name:?} was deleted after the job was submitted"
                    ))
                })?;
                let secret = key
                    .open(&row.info.name, row.info.kind, &row.nonce, &row.sealed)
                    .map_err(unavailable)?;
                Ok(Credential {
                    info: row.info.clone(),
                    secret,
                })
            })
            .collect()
    }

    /// Installs the collections a git playbook's `requirements.yml` (at the
    /// top or in `collections/`) names, once per commit; their folder.
    async fn requirements(&self, checkout: &Checkout) -> Result<Option<PathBuf>, SourceError> {
        let Some(file) = ["collections/requirements.yml", "requirements.yml"]
            .iter()
            .map(|f| checkout.dir.join(f))
            .find(|f| f.is_file())
        else {
            return Ok(None);
        };
        let installed = checkout.collections.join("requirements");
        if installed.is_dir() {
            return Ok(Some(installed));
        }
        let tmp = checkout
            .collections
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&tmp)
            .map_err(|e| SourceError::Unavailable(format!("git cache: {e}")))?;
        let galaxy = self
            .executor
            .ansible_playbook
            .with_file_name("ansible-galaxy");
        // Like git: no credential of the worker, no user or system git
        // configuration, no prompt; its whole process group ends with it.
        let mut command = tokio::process::Command::new(&galaxy);
        command
            .args(["collection", "install", "--no-deps", "-r"])
            .arg(&file)
            .arg("-p")
            .arg(&tmp)
            .current_dir(&checkout.dir)
            .env_clear()
            .envs(passed_through())
            .env("HOME", &checkout.collections)
            .env("LANG", "C.UTF-8")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("ANSIBLE_NOCOLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn();
        let output = match child {
            Ok(child) => {
                let mut group = KillGroupOnDrop(child.id().map(|p| p as i32));
                let output =
                    tokio::time::timeout(self.git_fetch_timeout(), child.wait_with_output()).await;
                if output.is_ok() {
                    group.disarm();
                }
                output
            }
            Err(e) => Ok(Err(e)),
        };
        let failed = |why: String| {
            remove_tree(&tmp);
            SourceError::Unavailable(format!(
                "installing the collections of {} (commit {}) failed: {why}",
                file.strip_prefix(&checkout.dir).unwrap_or(&file).display(),
                checkout.commit
            ))
        };
        match output {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stderr);
                let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                return Err(failed(last.last().copied().unwrap_or("").to_owned()));
            }
            Ok(Err(e)) => return Err(failed(format!("{}: {e}", galaxy.display()))),
            Err(_) => {
                return Err(failed(format!(
                    "it took longer than {} s (GIT_FETCH_TIMEOUT_SECONDS)",
                    self.git_fetch_timeout().as_secs()
                )))
            }
        }
        if std::fs::rename(&tmp, &installed).is_err() {
            // Another run of this commit installed them first.
            remove_tree(&tmp);
        }
        Ok(Some(installed))
    }

    fn git_fetch_timeout(&self) -> std::time::Duration {
        self.resources
            .git
            .as_ref()
            .map_or(std::time::Duration::from_secs(300), |g| g.fetch_timeout())
    }
}

/// Makes the collection at the top of the checkout (its `galaxy.yml`)
/// visible under the commit's collections folder; the role's full name.
fn install_collection(checkout: &Checkout, role: &RoleSource) -> Result<String, SourceError> {
    let not_found = |why: String| SourceError::NotFound(why);
    let galaxy = std::fs::read_to_string(checkout.dir.join("galaxy.yml")).map_err(|_| {
        not_found(format!(
            "{} at commit {} is not a collection (no galaxy.yml at its top)",
            role.repo, checkout.commit
        ))
    })?;
    #[derive(serde::Deserialize)]
    struct Galaxy {
        namespace: String,
        name: String,
    }
    let meta: Galaxy = serde_yaml::from_str(&galaxy)
        .map_err(|e| SourceError::Unavailable(format!("{}: galaxy.yml: {e}", role.repo)))?;
    let plain = |s: &str| crate::domain::source::role_name(s).is_ok() && !s.contains('.');
    if !plain(&meta.namespace) || !plain(&meta.name) {
        return Err(SourceError::Unavailable(format!(
            "{}: galaxy.yml names an invalid collection {}.{}",
            role.repo, meta.namespace, meta.name
        )));
    }
    let short = match role.name.split('.').collect::<Vec<_>>()[..] {
        [short] => short.to_owned(),
        [ns, name, short] if ns == meta.namespace && name == meta.name => short.to_owned(),
        _ => {
            return Err(not_found(format!(
                "role {} is not in collection {}.{} ({})",
                role.name, meta.namespace, meta.name, role.repo
            )))
        }
    };
    if !checkout.dir.join("roles").join(&short).is_dir() {
        return Err(not_found(format!(
            "collection {}.{} at commit {} has no role {short:?}",
            meta.namespace, meta.name, checkout.commit
        )));
    }
    let link = checkout
        .collections
        .join("collection")
        .join("ansible_collections")
        .join(&meta.namespace)
        .join(&meta.name);
    if !link.exists() {
        link_collection(&checkout.dir, &link).map_err(|e| {
            SourceError::Unavailable(format!("git cache: installing the collection: {e}"))
        })?;
    }
    Ok(format!("{}.{}.{short}", meta.namespace, meta.name))
}

/// `link` -> `dir`, made under a temporary name and renamed into place.
fn link_collection(dir: &Path, link: &Path) -> std::io::Result<()> {
    let parent = link.parent().expect("namespace folder");
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    std::os::unix::fs::symlink(dir, &tmp)?;
    if std::fs::rename(&tmp, link).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(())
}
