//! Git sources on a worker: a cache of bare mirrors (one per repository) and
//! of checkouts (one per commit), shared by the worker slots and the worker
//! processes of a host.
//!
//! Layout under the cache folder:
//! - `repos/<key>/mirror.git`: the bare mirror (`<key>` hashes the URL);
//! - `repos/<key>.lock`: held while a repository is fetched or checked out;
//! - `repos/<key>/fresh/<ref>`: when that ref was last fetched;
//! - `repos/<key>/checkouts/<commit>/`: the commit's files, read-only;
//! - `repos/<key>/checkouts/<commit>.use`: held shared by each run using it,
//!   its time the last use, so eviction skips checkouts in use;
//! - `repos/<key>/collections/<commit>/`: collections installed for it.
//!
//! A ref is fetched at most once per freshness window; a full commit id
//! already in the mirror, or a ref fetched within the window, needs no
//! network at all.

mod git;

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::domain::source::{is_commit_id, Provider};
use crate::domain::Providers;
use crate::settings::GitSettings;
pub(crate) use git::{passed_through, KillGroupOnDrop};
use git::{GitCommand, GitError};

/// Why a source could not be prepared; maps to the job's error reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// SOURCE_UNAVAILABLE: the repository could not be fetched or used.
    #[error("{0}")]
    Unavailable(String),
    /// SOURCE_NOT_FOUND: the ref, the path or the role is not there.
    #[error("{0}")]
    NotFound(String),
}

/// Local git commands (no network) get this long.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// The cache of one host.
pub struct GitCache {
    settings: GitSettings,
    providers: Arc<Providers>,
    askpass: PathBuf,
    last_evicted: Mutex<Option<Instant>>,
}

/// A commit's files, in use by a run until dropped.
#[derive(Debug)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The full commit id.
    pub commit: String,
    /// The full ref name it came from (`refs/heads/main`), `HEAD` for the
    /// default branch, or the commit id when one was asked for.
    pub ref_name: String,
    /// Where collections installed for this commit live (a folder per
    /// purpose: `collection` for the repository as a collection,
    /// `requirements` for its requirements file).
    pub collections: PathBuf,
    _in_use: File,
}

impl Checkout {
    /// The file at `path` inside the checkout; NotFound when it is not
    /// there or leads (through a symbolic link) out of the checkout.
    pub fn file(&self, path: &str, repo: &str) -> Result<PathBuf, SourceError> {
        let not_found = |why: &str| {
            SourceError::NotFound(format!(
                "{path:?} {why} in {repo} at commit {}",
                self.commit
            ))
        };
        let full = self.dir.join(path);
        let real = std::fs::canonicalize(&full).map_err(|_| not_found("is not"))?;
        let root = std::fs::canonicalize(&self.dir).map_err(|_| not_found("is not"))?;
        if !real.starts_with(&root) {
            return Err(not_found("leads out of the repository (a symbolic link)"));
        }
        if !real.is_file() {
            return Err(not_found("is not a file"));
        }
        Ok(real)
    }
}

impl GitCache {
    pub fn new(settings: &GitSettings, providers: Arc<Providers>) -> std::io::Result<GitCache> {
        std::fs::create_dir_all(settings.cache_dir.join("repos"))?;
        // Absolute: links, collection paths and ansible-galaxy's working
        // folder all name places in it.
        let mut settings = settings.clone();
        settings.cache_dir = settings.cache_dir.canonicalize()?;
        let askpass = git::write_askpass(&settings.cache_dir)?;
        Ok(GitCache {
            settings,
            providers,
            askpass,
            last_evicted: Mutex::new(None),
        })
    }

    /// How long a fetch (or an install from the network) may take.
    pub fn fetch_timeout(&self) -> Duration {
        self.settings.fetch_timeout
    }

    /// The repository's files at `git_ref`, fetched when needed.
    pub async fn checkout(&self, repo: &str, git_ref: &str) -> Result<Checkout, SourceError> {
        let (provider, _) = self.providers.allow(repo).map_err(|e| {
            SourceError::Unavailable(format!("{repo} may not be used on this worker: {e}"))
        })?;
        let key = hex::encode(&Sha256::digest(repo.as_bytes())[..12]);
        let repos = self.settings.cache_dir.join("repos");
        let base = repos.join(&key);
        let lock = lock(&repos.join(format!("{key}.lock")), libc::LOCK_EX).await?;
        let checkout = self.checkout_locked(provider, repo, git_ref, &base).await;
        drop(lock);
        if checkout.is_ok() {
            self.evict_now_and_then().await;
        }
        checkout
    }

    async fn checkout_locked(
        &self,
        provider: &Provider,
        repo: &str,
        git_ref: &str,
        base: &Path,
    ) -> Result<Checkout, SourceError> {
        let mirror = base.join("mirror.git");
        self.ensure_mirror(base, &mirror).await?;
        let stamp = base
            .join("fresh")
            .join(hex::encode(&Sha256::digest(git_ref.as_bytes())[..16]));
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < self.settings.fetch_fresh_for);
        let local = if fresh || is_commit_id(git_ref) {
            self.resolve(&mirror, git_ref).await?
        } else {
            None
        };
        let (ref_name, commit) = match local {
            Some(found) => found,
            None => {
                self.fetch(provider, repo, &mirror).await?;
                touch(&stamp);
                self.resolve(&mirror, git_ref).await?.ok_or_else(|| {
                    SourceError::NotFound(format!(
                        "ref {:?} is not in {repo} (no such branch, tag or commit)",
                        if git_ref.is_empty() { "HEAD" } else { git_ref }
                    ))
                })?
            }
        };
        let dir = base.join("checkouts").join(&commit);
        if !dir.is_dir() {
            self.write_checkout(repo, &mirror, &commit, &dir).await?;
        }
        let in_use = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(base.join("checkouts").join(format!("{commit}.use")))
            .map_err(|e| io_error("mark the checkout in use", e))?;
        let _ = in_use.set_modified(SystemTime::now());
        flock(&in_use, libc::LOCK_SH).map_err(|e| io_error("mark the checkout in use", e))?;
        Ok(Checkout {
            collections: base.join("collections").join(&commit),
            dir,
            commit,
            ref_name,
            _in_use: in_use,
        })
    }

    fn git<'a>(&'a self, provider: Option<&'a Provider>, args: &[&str]) -> GitCommand<'a> {
        GitCommand {
            askpass: &self.askpass,
            home: &self.settings.cache_dir,
            provider,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            timeout: LOCAL_TIMEOUT,
            watch: None,
        }
    }

    async fn ensure_mirror(&self, base: &Path, mirror: &Path) -> Result<(), SourceError> {
        if mirror.join("HEAD").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(base.join("fresh"))
            .and_then(|()| std::fs::create_dir_all(base.join("checkouts")))
            .map_err(|e| io_error("create the repository's cache folder", e))?;
        let _ = std::fs::remove_dir_all(mirror);
        let path = mirror.display().to_string();
        self.git(None, &["init", "--quiet", "--bare", "--", &path])
            .run()
            .await
            .map_err(|e| local_error("create the mirror", e))?;
        Ok(())
    }

    async fn fetch(
        &self,
        provider: &Provider,
        repo: &str,
        mirror: &Path,
    ) -> Result<(), SourceError> {
        let git_dir = format!("--git-dir={}", mirror.display());
        let started = Instant::now();
        let mut fetch = self.git(
            Some(provider),
            &[
                &git_dir,
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                "--no-recurse-submodules",
                "--",
                repo,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
                "+HEAD:refs/ars/HEAD",
            ],
        );
        fetch.timeout = self.settings.fetch_timeout;
        fetch.watch = Some((mirror.to_owned(), self.settings.max_repo_bytes));
        let result = fetch.run().await;
        crate::metrics::get()
            .git_fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                tracing::info!(
                    repo,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "fetched"
                );
                Ok(())
            }
            Err(e) => {
                // A fetch cut short may leave temporary packs behind; an
                // oversize mirror goes whole.
                remove_temporary_packs(mirror);
                if matches!(e, GitError::TooLarge(_)) {
                    remove_tree(mirror);
                }
                Err(SourceError::Unavailable(match e {
                    GitError::Failed(why) => format!("fetching {repo} failed: {why}"),
                    GitError::TimedOut(after) => format!(
                        "fetching {repo} took longer than {} s (GIT_FETCH_TIMEOUT_SECONDS)",
                        after.as_secs()
                    ),
                    GitError::TooLarge(limit) => format!(
                        "{repo} is larger than the limit of {} MiB (GIT_MAX_REPO_MIB)",
                        limit >> 20
                    ),
                    GitError::Io(e) => format!("could not run git to fetch {repo}: {e}"),
                }))
            }
        }
    }

    /// The full ref name and commit `git_ref` names in the mirror, if any.
    async fn resolve(
        &self,
        mirror: &Path,
        git_ref: &str,
    ) -> Result<Option<(String, String)>, SourceError> {
        let candidates: Vec<(String, String)> = if git_ref.is_empty() {
            vec![("HEAD".into(), "refs/ars/HEAD".into())]
        } else if is_commit_id(git_ref) || git_ref.starts_with("refs/") {
            vec![(git_ref.into(), git_ref.into())]
        } else {
            ["refs/heads/", "refs/tags/"]
                .iter()
                .map(|p| (format!("{p}{git_ref}"), format!("{p}{git_ref}")))
                .collect()
        };
        let git_dir = format!("--git-dir={}", mirror.display());
        for (name, rev) in candidates {
            let spec = format!("{rev}^{{commit}}");
            match self
                .git(
                    None,
                    &[
                        &git_dir,
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        "--end-of-options",
                        &spec,
                    ],
                )
                .run()
                .await
            {
                Ok(out) => {
                    let commit = out.trim().to_owned();
                    if is_commit_id(&commit) {
                        return Ok(Some((name, commit)));
                    }
                }
                Err(GitError::Failed(_)) => {}
                Err(e) => return Err(local_error("resolve a ref", e)),
            }
        }
        Ok(None)
    }

    /// Writes the commit's files to `dir` (via a temporary folder, so a
    /// checkout is there whole or not at all), read-only.
    async fn write_checkout(
        &self,
        repo: &str,
        mirror: &Path,
        commit: &str,
        dir: &Path,
    ) -> Result<(), SourceError> {
        let parent = dir.parent().expect("checkouts folder");
        let tmp = parent.join(format!(".tmp-{commit}-{}", uuid::Uuid::new_v4().simple()));
        let index = parent.join(format!(".index-{}", uuid::Uuid::new_v4().simple()));
        let git_dir = format!("--git-dir={}", mirror.display());
        let work_tree = format!("--work-tree={}", tmp.display());
        let env = vec![("GIT_INDEX_FILE".to_owned(), index.display().to_string())];
        let mut read = self.git(None, &[&git_dir, "read-tree", "--end-of-options", commit]);
        read.env = env.clone();
        let mut write = self.git(
            None,
            &[&git_dir, &work_tree, "checkout-index", "--all", "--force"],
        );
        write.env = env;
        let size = self.tree_size(mirror, commit).await?;
        if size > self.settings.max_repo_bytes {
            return Err(SourceError::Unavailable(format!(
                "{repo} at commit {commit} holds {} MiB of files, more than the limit of {} MiB (GIT_MAX_REPO_MIB)",
                size >> 20,
                self.settings.max_repo_bytes >> 20
            )));
        }
        let result = async {
            read.run().await?;
            std::fs::create_dir_all(&tmp).map_err(GitError::Io)?;
            write.run().await
        }
        .await;
        let _ = std::fs::remove_file(&index);
        if let Err(e) = result {
            remove_tree(&tmp);
            return Err(local_error("check out the commit", e));
        }
        let root = tmp
            .canonicalize()
            .map_err(|e| io_error("check out the commit", e))?;
        if let Some(link) = escaping_link(&root, &root) {
            remove_tree(&tmp);
            return Err(SourceError::Unavailable(format!(
                "{repo} at commit {commit} has a symbolic link {} that leads out of the repository; refused",
                link.strip_prefix(&root).unwrap_or(&link).display()
            )));
        }
        make_read_only(&tmp);
        std::fs::rename(&tmp, dir).map_err(|e| io_error("keep the checkout", e))?;
        Ok(())
    }

    /// The bytes of the files of `commit`, before they are written.
    async fn tree_size(&self, mirror: &Path, commit: &str) -> Result<u64, SourceError> {
        let git_dir = format!("--git-dir={}", mirror.display());
        let listing = self
            .git(
                None,
                &[
                    &git_dir,
                    "ls-tree",
                    "-r",
                    "-l",
                    "--full-tree",
                    "--end-of-options",
                    commit,
                ],
            )
            .run()
            .await
            .map_err(|e| local_error("list the commit's files", e))?;
        // "<mode> <type> <object> <size>\t<path>"; links and submodules have "-".
        Ok(listing
            .lines()
            .filter_map(|line| {
                line.split('\t')
                    .next()?
                    .split_whitespace()
                    .nth(3)?
                    .parse::<u64>()
                    .ok()
            })
            .sum())
    }

    /// Evicts, at most once per `evict_every` (a minute) per process, checkouts unused for
    /// longer than the maximum age, then the least recently used ones while
    /// the cache is larger than its maximum; never one a run holds.
    async fn evict_now_and_then(&self) {
        {
            let mut last = self.last_evicted.lock().expect("evict lock");
            if last.is_some_and(|t| t.elapsed() < self.settings.evict_every) {
                return;
            }
            *last = Some(Instant::now());
        }
        let repos = self.settings.cache_dir.join("repos");
        let (max_age, max_bytes) = (self.settings.cache_max_age, self.settings.cache_max_bytes);
        let evicted = tokio::task::spawn_blocking(move || evict(&repos, max_age, max_bytes))
            .await
            .unwrap_or(0);
        if evicted > 0 {
            tracing::info!(evicted, "git cache: evicted checkouts");
        }
    }
}

/// Takes a lock on `path` (created when missing), waiting for it.
async fn lock(path: &Path, kind: i32) -> Result<File, SourceError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        flock(&file, kind)?;
        Ok(file)
    })
    .await
    .map_err(|e| SourceError::Unavailable(format!("git cache lock: {e}")))?
    .map_err(|e| io_error("lock the repository's cache", e))
}

fn flock(file: &File, kind: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock(2) on a descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), kind) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn touch(path: &Path) {
    if let Err(e) = File::create(path) {
        tracing::warn!(path = %path.display(), error = %e, "git cache: marking a fetch");
    }
}

fn io_error(what: &str, e: std::io::Error) -> SourceError {
    SourceError::Unavailable(format!("git cache: could not {what}: {e}"))
}

fn local_error(what: &str, e: GitError) -> SourceError {
    SourceError::Unavailable(match e {
        GitError::Failed(why) => format!("git cache: could not {what}: {why}"),
        GitError::TimedOut(_) => format!("git cache: could not {what}: git took too long"),
        GitError::TooLarge(_) => format!("git cache: could not {what}: too large"),
        GitError::Io(e) => format!("git cache: could not {what}: {e}"),
    })
}

fn remove_temporary_packs(mirror: &Path) {
    if let Ok(entries) = std::fs::read_dir(mirror.join("objects/pack")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The first symbolic link under `dir` that leaves `root` (an absolute,
/// canonical path): by its text, or once the kernel resolves it (through
/// other links), or that cannot be resolved at all.
fn escaping_link(root: &Path, dir: &Path) -> Option<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Some(dir.to_owned());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            return Some(path);
        };
        if kind.is_symlink() {
            let lexically_inside = std::fs::read_link(&path).is_ok_and(|target| {
                !target.is_absolute()
                    && path
                        .parent()
                        .and_then(|p| p.strip_prefix(root).ok())
                        .is_some_and(|p| stays_inside(&p.join(&target)))
            });
            let resolved_inside =
                std::fs::canonicalize(&path).is_ok_and(|real| real.starts_with(root));
            if !lexically_inside || !resolved_inside {
                return Some(path);
            }
        } else if kind.is_dir() {
            if let Some(found) = escaping_link(root, &path) {
                return Some(found);
            }
        }
    }
    None
}

/// Whether a relative path, taken lexically, stays at or below its start.
fn stays_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Files 0444, folders 0555: a run cannot change what the next one runs.
fn make_read_only(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => make_read_only(&entry.path()),
                Ok(t) if t.is_file() => {
                    let mode = entry
                        .metadata()
                        .map(|m| m.permissions().mode())
                        .unwrap_or(0);
                    let read_only = if mode & 0o100 != 0 { 0o555 } else { 0o444 };
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(read_only),
                    );
                }
                _ => {}
            }
        }
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555));
}

/// Removes a tree, read-only folders included.
pub(crate) fn remove_tree(dir: &Path) {
    fn writable(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    writable(&entry.path());
                }
            }
        }
    }
    writable(dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// One eviction pass over every repository; returns the checkouts removed.
fn evict(repos: &Path, max_age: Duration, max_bytes: u64) -> usize {
    struct Candidate {
        repo_lock: PathBuf,
        dir: PathBuf,
        use_file: PathBuf,
        collections: PathBuf,
        used: SystemTime,
        bytes: u64,
    }
    let mut candidates = Vec::new();
    let mut total = 0u64;
    let now = SystemTime::now();
    for repo in std::fs::read_dir(repos).into_iter().flatten().flatten() {
        if !repo.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let base = repo.path();
        let lock_path = repos.join(format!("{}.lock", repo.file_name().to_string_lossy()));
        if remove_unused_repository(&base, &lock_path, now, max_age) {
            continue;
        }
        total += git::folder_size(&base.join("mirror.git"));
        for entry in std::fs::read_dir(base.join("checkouts"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_commit_id(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let use_file = base.join("checkouts").join(format!("{name}.use"));
            let used = std::fs::metadata(&use_file)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let collections = base.join("collections").join(&name);
            let bytes = git::folder_size(&entry.path()) + git::folder_size(&collections);
            total += bytes;
            candidates.push(Candidate {
                repo_lock: repos.join(format!("{}.lock", repo.file_name().to_string_lossy())),
                dir: entry.path(),
                use_file,
                collections,
                used,
                bytes,
            });
        }
    }
    candidates.sort_by_key(|c| c.used);
    let mut evicted = 0;
    for c in candidates {
        let old = now.duration_since(c.used).is_ok_and(|age| age > max_age);
        if !old && total <= max_bytes {
            continue;
        }
        // The repository's lock (no checkout being made or handed out) and
        // the checkout's own (no run using it), both without waiting.
        let Ok(repo_lock) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&c.repo_lock)
        else {
            continue;
        };
        if flock(&repo_lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue;
        }
        let Ok(use_file) = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&c.use_file)
        else {
            continue;
        };
        if flock(&use_file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
            continue;
        }
        remove_tree(&c.collections);
        remove_tree(&c.dir);
        let _ = std::fs::remove_file(&c.use_file);
        total = total.saturating_sub(c.bytes);
        evicted += 1;
    }
    evicted
}

/// The newest modification time among the files directly under `dir`.
fn newest_in(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .max()
}

/// Removes a repository's whole cache (mirror included) when nothing of it
/// was fetched or used for `max_age`, and leftovers of checkouts cut short
/// (older than an hour) otherwise; true when the repository went.
fn remove_unused_repository(
    base: &Path,
    lock_path: &Path,
    now: SystemTime,
    max_age: Duration,
) -> bool {
    let Ok(lock) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
    else {
        return false;
    };
    if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return false;
    }
    let checkouts = base.join("checkouts");
    let last_use = [newest_in(&base.join("fresh")), newest_in(&checkouts)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if now.duration_since(last_use).is_ok_and(|age| age > max_age) {
        remove_tree(base);
        return true;
    }
    for entry in std::fs::read_dir(&checkouts)
        .into_iter()
        .flatten()
        .flatten()
    {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale && entry.file_name().to_string_lossy().starts_with('.') {
            if entry.path().is_dir() {
                remove_tree(&entry.path());
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_stay_inside_or_not() {
        assert!(stays_inside(Path::new("a/b/../c")));
        assert!(stays_inside(Path::new("a/..")));
        assert!(!stays_inside(Path::new("a/../../b")));
        assert!(!stays_inside(Path::new("../b")));
        assert!(!stays_inside(Path::new("/etc")));
    }

    #[test]
    fn links_that_leave_the_checkout_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = &dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("../x", root.join("a/b/up")).unwrap();
        assert_eq!(
            escaping_link(root, root),
            Some(root.join("a/b/up")),
            "a link to nothing is refused"
        );
        std::fs::write(root.join("a/x"), "").unwrap();
        assert_eq!(escaping_link(root, root), None);
        std::os::unix::fs::symlink("../../../etc/passwd", root.join("a/b/out")).unwrap();
        assert_eq!(escaping_link(root, root), Some(root.join("a/b/out")));
        std::fs::remove_file(root.join("a/b/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        assert_eq!(escaping_link(root, root), Some(root.join("abs")));
        std::fs::remove_file(root.join("abs")).unwrap();
        // Each link stays inside by its text; through the first, the
        // second leads out.
        std::os::unix::fs::symlink("../..", root.join("a/b/top")).unwrap();
        std::fs::create_dir_all(root.join("a/b/x")).unwrap();
        assert_eq!(escaping_link(root, root), None);
        std::os::unix::fs::symlink("b/top/../etc/passwd", root.join("a/chain")).unwrap();
        assert_eq!(escaping_link(root, root), Some(root.join("a/chain")));
    }
}
