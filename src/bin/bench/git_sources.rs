//! Section (g): git sources. A playbook from a git repository (hello.yml's
//! content as `site.yml`), served over smart HTTP with basic auth on loopback
//! by tests/common/git_http.py, runs on one service (warm executor) one job at
//! a time: the first run (the mirror's fetch and the checkout included), then
//! `--latency-jobs` runs of it with `main` fetched within the freshness window,
//! interleaved with as many runs of the catalogue's hello.yml. Counts the git
//! server's requests during the cached runs and checks every job's commit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ansible_runner_service::pb::{self, submit_job_request::Source};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::harness::{
    median, percentile, playbook_request, progress, sorted, summary, Bench, Service,
};
use crate::submit_to_terminal::{run_to_end, successful};

/// The user the git server accepts.
const GIT_USER: &str = "ci-bot";
/// The repository, under the server's root and the provider's prefix.
const REPO_PATH: &str = "bench/automation.git";
/// The playbook's path in the repository.
const REPO_PLAYBOOK: &str = "site.yml";
/// What the cached git runs' median may exceed the catalogue's by (issue 13).
pub const TARGET_MS: f64 = 20.0;

/// `git` without system or global config, prompts or a surrounding
/// repository's environment.
fn git_command() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .stdin(Stdio::null());
    command
}

/// Runs `git args` in `dir`; its trimmed stdout, or a panic with its stderr.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git on PATH");
    assert!(
        output.status.success(),
        "git {} (in {}) failed: {}\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Writes `contents` to `path`, readable by its owner only.
fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create private file");
    file.write_all(contents.as_bytes()).expect("write file");
}

/// tests/common/git_http.py on 127.0.0.1 (user [`GIT_USER`], a random
/// password), serving the bare repositories under `root`; stopped on drop,
/// a panic included.
struct GitServer {
    /// `http://127.0.0.1:PORT`.
    base_url: String,
    host: String,
    /// The password alone, in a file of its own (the provider's credential).
    password_file: PathBuf,
    log: PathBuf,
    root: TempDir,
    _aux: TempDir,
    child: Child,
}

impl GitServer {
    fn start() -> GitServer {
        let root = tempfile::tempdir().expect("temp dir");
        let aux = tempfile::tempdir().expect("temp dir");
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).expect("random bytes");
        let password_file = aux.path().join("password");
        write_private(&password_file, &hex::encode(random));
        let port_file = aux.path().join("port");
        let log = aux.path().join("requests.log");
        let stderr = aux.path().join("stderr.log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/git_http.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--root")
            .arg(root.path())
            .arg("--user")
            .arg(GIT_USER)
            .arg("--password-file")
            .arg(&password_file)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("server stderr file"))
            .spawn()
            .expect("python3 on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                break port;
            }
            let exited = child.try_wait().expect("poll git_http.py");
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "git_http.py did not come up ({exited:?}): {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let host = format!("127.0.0.1:{port}");
        GitServer {
            base_url: format!("http://{host}"),
            host,
            password_file,
            log,
            root,
            _aux: aux,
            child,
        }
    }

    /// A bare repository at `<root>/<path>`, read-only over HTTP, whose `main`
    /// holds one commit with `files`, pushed from a work clone by file path.
    /// Returns its URL and the commit.
    fn repo(&self, path: &str, files: &[(&str, &str)]) -> (String, String) {
        let bare = self.root.path().join(path);
        std::fs::create_dir_all(&bare).expect("create bare repository dir");
        git(
            &bare,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        git(&bare, &["config", "http.receivepack", "false"]);
        let work_dir = tempfile::tempdir().expect("temp dir");
        let work = work_dir.path();
        git(work, &["init", "--quiet", "--initial-branch=main"]);
        for (key, value) in [
            ("user.name", "Bench"),
            ("user.email", "bench@example.test"),
            ("commit.gpgsign", "false"),
        ] {
            git(work, &["config", key, value]);
        }
        for (name, contents) in files {
            std::fs::write(work.join(name), contents).expect("write file");
            git(work, &["add", "--", name]);
        }
        git(work, &["commit", "--quiet", "-m", "bench playbook"]);
        let bare_path = bare.to_str().expect("UTF-8 path");
        git(work, &["push", "--quiet", bare_path, "main"]);
        let head = git(work, &["rev-parse", "HEAD"]);
        (format!("{}/{path}", self.base_url), head)
    }

    /// Requests answered so far (a line of the log each, 401s included).
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our
            // child's, not yet waited for.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
    }
}

/// Median and p90 (and the usual percentiles) of samples in seconds, in ms.
fn figures(samples: &[f64]) -> Value {
    let p90 = percentile(&sorted(samples.to_vec()), 0.9) * 1e3;
    let mut figures = summary(samples.to_vec());
    figures["p90_ms"] = json!(p90);
    figures
}

/// (g) the first run of a git playbook, then the cached runs of it
/// interleaved with the catalogue's hello.yml (pair i runs git first when i
/// is even, the catalogue first when odd; the median of the differences
/// within pairs is reported too, as it is less moved by the load of the
/// machine changing during the run), on one service after one
/// catalogue warm-up run, not counted. A job counts as failed unless it ends
/// SUCCESSFUL with the expected `source_commit` (the repository's head for a
/// git run, none for a catalogue run).
pub async fn section_g(bench: &mut Bench) -> Value {
    let jobs = bench.args.latency_jobs;
    let hello = std::fs::read_to_string(bench.playbooks.join("hello.yml")).expect("read hello.yml");
    let server = GitServer::start();
    let (repo, head) = server.repo(REPO_PATH, &[(REPO_PLAYBOOK, &hello)]);

    let dir = tempfile::tempdir().expect("temp dir");
    let providers = dir.path().join("providers.yml");
    std::fs::write(
        &providers,
        format!(
            "providers:\n  - name: bench\n    scheme: http\n    host: \"{}\"\n    \
             path_prefixes: [bench]\n    username: {GIT_USER}\n    credential_file: {}\n",
            server.host,
            server.password_file.display()
        ),
    )
    .expect("write the providers file");
    let mut settings = bench.settings("g").await;
    settings.git.providers_file = Some(providers);
    settings.git.cache_dir = dir.path().join("git-cache");
    let fresh_for = settings.git.fetch_fresh_for;
    let service = Service::start(&settings).await;
    let client = &service.client;

    let git_request = pb::SubmitJobRequest {
        source: Some(Source::GitPlaybook(pb::GitFile {
            repo: repo.clone(),
            r#ref: "main".into(),
            path: REPO_PLAYBOOK.into(),
        })),
        ..Default::default()
    };
    let catalogue_request = playbook_request("hello.yml");
    let mut failed = 0;
    let mut check = |job: &Option<pb::Job>, commit: &str| {
        let ok = successful(job) && job.as_ref().is_some_and(|j| j.source_commit == commit);
        if !ok {
            failed += 1;
            eprintln!("bench: (g) unexpected job (expected commit {commit:?}): {job:?}");
        }
    };

    progress(&format!("(g) git sources: {repo} at {head}"));
    let (_, job) = run_to_end(client, &catalogue_request).await;
    check(&job, "");
    let before_first = server.requests();
    let (first, job) = run_to_end(client, &git_request).await;
    check(&job, &head);
    let first_requests = server.requests() - before_first;

    progress(&format!(
        "(g) {jobs} cached git runs interleaved with {jobs} catalogue runs"
    ));
    let before_cached = server.requests();
    let cached_started = Instant::now();
    let (mut git_samples, mut catalogue_samples) = (Vec::new(), Vec::new());
    let mut paired = Vec::new();
    for i in 0..jobs {
        for git_turn in [i % 2 == 0, i % 2 == 1] {
            if git_turn {
                let (seconds, job) = run_to_end(client, &git_request).await;
                check(&job, &head);
                git_samples.push(seconds);
            } else {
                let (seconds, job) = run_to_end(client, &catalogue_request).await;
                check(&job, "");
                catalogue_samples.push(seconds);
            }
        }
        paired.push((git_samples[i] - catalogue_samples[i]) * 1e3);
    }
    let cached_seconds = cached_started.elapsed().as_secs_f64();
    let cached_requests = server.requests() - before_cached;
    if cached_seconds > fresh_for.as_secs_f64() {
        progress(&format!(
            "(g) the cached runs took {cached_seconds:.0} s, longer than the freshness \
             window ({} s): refetches are expected",
            fresh_for.as_secs()
        ));
    }
    service.stop().await;
    drop(server);

    let git_median = median(&git_samples);
    let catalogue_median = median(&catalogue_samples);
    let difference_ms = (git_median - catalogue_median) * 1e3;
    json!({
        "jobs": jobs,
        "repo_commit": head,
        "fetch_fresh_for_seconds": fresh_for.as_secs(),
        "first_run_ms": first * 1e3,
        "git_requests_first_run": first_requests,
        "git_cached": figures(&git_samples),
        "catalogue": figures(&catalogue_samples),
        "git_median_minus_catalogue_median_ms": difference_ms,
        "target_ms": TARGET_MS,
        "met": difference_ms <= TARGET_MS,
        "median_of_paired_differences_ms": median(&paired),
        "clone_cost_ms": (first - catalogue_median) * 1e3,
        "cached_runs_seconds": cached_seconds,
        "git_requests_during_cached_runs": cached_requests,
        "failed": failed,
    })
}
