//! Playbooks, roles and inventories from git, against a real smart-HTTP git
//! server with basic auth on loopback (tests/common/git_server.rs): each job
//! is pinned to the commit it ran, fetched once and checked out once, and
//! only what the providers file allows is ever fetched.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ansible_runner_service::pb::{self, ListJobsRequest, SubmitJobRequest};
use ansible_runner_service::settings::Settings;
use common::git_server::{GitServer, TestRepo, USER};
use common::process::ServiceProcess;
use common::*;
use tonic::Code;

const SITE: &str = r#"- hosts: all
  gather_facts: false
  vars:
    version: one
  tasks:
    - debug:
        msg: "site {{ version }} inv={{ inv_var | default('none') }}"
"#;

const INVENTORY: &str = r#"all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
      inv_var: from-git
"#;

/// The git server, its repositories and the providers file pointing at it.
struct Git {
    server: GitServer,
    automation: TestRepo,
    collection: TestRepo,
    dir: tempfile::TempDir,
}

impl Git {
    fn start() -> Git {
        let server = GitServer::start();
        let automation = server.repo("platform/automation.git");
        automation.write("site.yml", SITE);
        automation.write("inventories/hosts.yml", INVENTORY);
        automation.commit("site and inventory");
        automation.tag("v1");

        let collection = server.repo("platform/web.git");
        collection.write(
            "galaxy.yml",
            "namespace: platform\nname: web\nversion: 1.0.0\nreadme: README.md\nauthors: [test]\n",
        );
        collection.write("README.md", "web\n");
        collection.write("roles/greet/defaults/main.yml", "who: nobody\n");
        collection.write(
            "roles/greet/tasks/main.yml",
            "- debug:\n    msg: \"hello {{ who }}\"\n",
        );
        collection.commit("a collection with a role");

        let dir = tempfile::tempdir().unwrap();
        let git = Git {
            server,
            automation,
            collection,
            dir,
        };
        git.write_providers(&git.server.password_file());
        git
    }

    fn providers_path(&self) -> PathBuf {
        self.dir.path().join("providers.yml")
    }

    /// The providers file: this server's `platform` organisation over http,
    /// the credential read from `password_file`.
    fn write_providers(&self, password_file: &Path) {
        let host = self.server.base_url.trim_start_matches("http://");
        std::fs::write(
            self.providers_path(),
            format!(
                "providers:\n  - name: test\n    scheme: http\n    host: \"{host}\"\n    organizations: [platform]\n    username: {USER}\n    credential_file: {}\n",
                password_file.display()
            ),
        )
        .unwrap();
    }

    /// `settings` with git sources on and a cache of this test's own.
    fn settings(&self, settings: &Settings) -> Settings {
        let mut settings = settings.clone();
        settings.git.providers_file = Some(self.providers_path());
        settings.git.cache_dir = self.dir.path().join("cache");
        settings
    }

    fn fetches(&self) -> usize {
        self.server
            .log()
            .iter()
            .filter(|l| l.contains("git-upload-pack") && l.starts_with("POST"))
            .count()
    }
}

fn git_playbook(repo: &str, git_ref: &str, path: &str) -> SubmitJobRequest {
    SubmitJobRequest {
        source: Some(pb::submit_job_request::Source::GitPlaybook(pb::GitFile {
            repo: repo.into(),
            r#ref: git_ref.into(),
            path: path.into(),
        })),
        ..Default::default()
    }
}

fn git_inventory(repo: &TestRepo, git_ref: &str, path: &str) -> Option<pb::Inventory> {
    Some(pb::Inventory {
        source: Some(pb::inventory::Source::Git(pb::GitFile {
            repo: repo.url.clone(),
            r#ref: git_ref.into(),
            path: path.into(),
        })),
    })
}

fn role(name: &str, repo: &str, vars_json: serde_json::Value) -> SubmitJobRequest {
    SubmitJobRequest {
        source: Some(pb::submit_job_request::Source::Role(pb::RoleSource {
            name: name.into(),
            repo: repo.into(),
            r#ref: String::new(),
            role_vars: vars(vars_json),
            gather_facts: false,
        })),
        ..Default::default()
    }
}

async fn run(client: &mut JobClient, req: SubmitJobRequest) -> pb::Job {
    let job = submit(client, req).await;
    let done = wait_terminal(client, &job.job_id).await;
    get(client, &done.job_id).await
}

fn stdout(job: &pb::Job) -> &str {
    job.result.as_ref().map_or("", |r| r.stdout.as_str())
}

fn assert_successful(job: &pb::Job) {
    assert_eq!(
        status(job),
        pb::JobStatus::Successful,
        "{} {}\n{}",
        job.error_reason,
        job.error,
        stdout(job)
    );
}

type JobClient =
    ansible_runner_service::pb::job_service_client::JobServiceClient<tonic::transport::Channel>;

async fn each_source_kind_runs_and_records_its_commit(backend: Backend) {
    let git = Git::start();
    let history = History::new(backend).await;
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let mut client = server.client.clone();
    let head = git.automation.head();

    // A playbook from git, by branch.
    let job = run(
        &mut client,
        git_playbook(&git.automation.url, "main", "site.yml"),
    )
    .await;
    assert_successful(&job);
    assert!(
        stdout(&job).contains("site one inv=none"),
        "{}",
        stdout(&job)
    );
    assert_eq!(job.source_commit, head);
    assert_eq!(job.source_ref, "refs/heads/main");
    assert_eq!(job.playbook, "");
    assert_eq!(job.git_playbook.as_ref().unwrap().path, "site.yml");

    // By tag, with the inventory from git too.
    let mut req = git_playbook(&git.automation.url, "v1", "site.yml");
    req.inventory = git_inventory(&git.automation, "", "inventories/hosts.yml");
    let job = run(&mut client, req).await;
    assert_successful(&job);
    assert!(stdout(&job).contains("inv=from-git"), "{}", stdout(&job));
    assert_eq!(job.source_ref, "refs/tags/v1");
    assert_eq!(job.source_commit, head);
    assert_eq!(job.inventory_commit, head);

    // A git inventory under a catalogue playbook.
    let mut req = request("hello.yml");
    req.inventory = git_inventory(&git.automation, "main", "inventories/hosts.yml");
    let job = run(&mut client, req).await;
    assert_successful(&job);
    assert_eq!(job.inventory_commit, head);
    assert_eq!(job.source_commit, "");

    // A role of a git collection, by its short and its full name; its vars
    // are data: a template in them is printed, never run.
    let marker = tempfile::tempdir().unwrap().path().join("role-var-ran");
    let hostile = format!("{{{{ lookup('pipe', 'touch {}') }}}}", marker.display());
    let job = run(
        &mut client,
        role(
            "greet",
            &git.collection.url,
            serde_json::json!({"who": hostile}),
        ),
    )
    .await;
    assert_successful(&job);
    assert!(
        stdout(&job).contains("hello {{ lookup('pipe'"),
        "{}",
        stdout(&job)
    );
    assert!(!marker.exists(), "a role var was templated");
    assert_eq!(job.source_commit, git.collection.head());
    let job = run(
        &mut client,
        role(
            "platform.web.greet",
            &git.collection.url,
            serde_json::json!({"who": "world"}),
        ),
    )
    .await;
    assert_successful(&job);
    assert!(stdout(&job).contains("hello world"), "{}", stdout(&job));

    // ListJobs shows what each job resolved to.
    let page = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 5);
    assert!(page
        .jobs
        .iter()
        .all(|j| !j.source_commit.is_empty() || !j.inventory_commit.is_empty()));
    server.stop().await;
}

async fn a_moved_branch_gives_two_commits_and_a_pinned_commit_still_runs(backend: Backend) {
    let git = Git::start();
    let history = History::new(backend).await;
    let mut settings = git.settings(&history.settings);
    // Every job looks at the branch again.
    settings.git.fetch_fresh_for = Duration::ZERO;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let first = run(
        &mut client,
        git_playbook(&git.automation.url, "main", "site.yml"),
    )
    .await;
    assert_successful(&first);
    git.automation
        .write("site.yml", &SITE.replace("version: one", "version: two"));
    let second_commit = git.automation.commit("version two");
    let second = run(
        &mut client,
        git_playbook(&git.automation.url, "main", "site.yml"),
    )
    .await;
    assert_successful(&second);
    assert_eq!(second.source_commit, second_commit);
    assert_ne!(first.source_commit, second.source_commit);
    assert!(stdout(&second).contains("site two"));

    // The first commit, named by the id the first job recorded, runs the
    // first commit's files although the branch moved on.
    let pinned = run(
        &mut client,
        git_playbook(&git.automation.url, &first.source_commit, "site.yml"),
    )
    .await;
    assert_successful(&pinned);
    assert_eq!(pinned.source_commit, first.source_commit);
    assert_eq!(pinned.source_ref, first.source_commit);
    assert!(stdout(&pinned).contains("site one"), "{}", stdout(&pinned));
    server.stop().await;
}

on_both_backends!(
    each_source_kind_runs_and_records_its_commit,
    a_moved_branch_gives_two_commits_and_a_pinned_commit_still_runs
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_commit_needs_no_network() {
    let git = Git::start();
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let mut client = server.client.clone();
    let first = run(
        &mut client,
        git_playbook(&git.automation.url, "main", "site.yml"),
    )
    .await;
    assert_successful(&first);
    let requests = git.server.requests();
    // The same ref within the freshness window, and the commit itself.
    for git_ref in ["main", first.source_commit.as_str()] {
        let again = run(
            &mut client,
            git_playbook(&git.automation.url, git_ref, "site.yml"),
        )
        .await;
        assert_successful(&again);
        assert_eq!(again.source_commit, first.source_commit);
    }
    assert_eq!(
        git.server.requests(),
        requests,
        "a cached commit reached the git server: {:?}",
        git.server.log()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sources_are_refused_at_submit_and_nothing_is_written() {
    let git = Git::start();
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let mut client = server.client.clone();
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("pwned");
    let port = git.server.base_url.rsplit(':').next().unwrap().to_owned();
    let good = git.automation.url.clone();
    let cases: Vec<(SubmitJobRequest, &str)> = vec![
        // Hosts, organisations and schemes the providers file does not name.
        (
            git_playbook(
                &format!("http://127.0.0.2:{port}/platform/automation.git"),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!("http://127.0.0.1:{port}/other/automation.git"),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!("https://127.0.0.1:{port}/platform/automation.git"),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!(
                    "file://{}/platform/automation.git",
                    git.server.root().display()
                ),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!("ext::sh -c touch% {}", marker.display()),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!("http://{USER}:x@127.0.0.1:{port}/platform/automation.git"),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        (
            git_playbook(
                &format!("http://127.0.0.1:{port}/platform/../other/a.git"),
                "main",
                "site.yml",
            ),
            "git_playbook.repo",
        ),
        // Refs git would take as options or that git refuses.
        (
            git_playbook(
                &good,
                &format!("--upload-pack=touch {}", marker.display()),
                "site.yml",
            ),
            "git_playbook.ref",
        ),
        (git_playbook(&good, "-main", "site.yml"), "git_playbook.ref"),
        (
            git_playbook(&good, "main..v1", "site.yml"),
            "git_playbook.ref",
        ),
        (
            git_playbook(&good, "main@{1}", "site.yml"),
            "git_playbook.ref",
        ),
        // Paths out of the repository.
        (
            git_playbook(&good, "main", "../../etc/passwd.yml"),
            "git_playbook.path",
        ),
        (
            git_playbook(&good, "main", "/etc/site.yml"),
            "git_playbook.path",
        ),
        (
            git_playbook(&good, "main", ".git/hooks/x.yml"),
            "git_playbook.path",
        ),
        (
            git_playbook(&good, "main", "inventories/hosts"),
            "git_playbook.path",
        ),
        // A catalogue playbook and a git one at once.
        (
            SubmitJobRequest {
                playbook: "hello.yml".into(),
                ..git_playbook(&good, "main", "site.yml")
            },
            "playbook",
        ),
        // Roles.
        (role("../../x", "", serde_json::json!({})), "role.name"),
        (role("a.b", "", serde_json::json!({})), "role.name"),
        (
            role(
                "greet",
                "https://github.com/platform/web.git",
                serde_json::json!({}),
            ),
            "role.repo",
        ),
        (
            role(
                "greet",
                &good,
                serde_json::json!({"ansible_connection": "ssh"}),
            ),
            "role.role_vars",
        ),
    ];
    let inventory_case = SubmitJobRequest {
        inventory: git_inventory(&git.automation, "main", "../hosts"),
        ..request("hello.yml")
    };
    for (req, field) in cases
        .into_iter()
        .chain([(inventory_case, "inventory.git.path")])
    {
        let err = client.submit_job(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
        assert!(
            violations(&err).contains(&field.to_owned()),
            "{req:?}: {:?} {}",
            violations(&err),
            err.message()
        );
    }
    let page = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 0, "a refused submit wrote a job");
    assert_eq!(git.server.requests(), 0, "a refused submit reached git");
    assert!(!marker.exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_sources_end_failed_with_their_reasons() {
    let git = Git::start();
    let history = History::new(Backend::Embedded).await;
    let mut settings = git.settings(&history.settings);
    settings.git.fetch_timeout = Duration::from_secs(3);
    settings.git.max_repo_bytes = 2 << 20;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let escape = git.server.repo("platform/escape.git");
    escape.write("site.yml", SITE);
    escape.symlink("passwd.yml", "../../../../../../../../etc/passwd");
    escape.commit("a link out of the repository");
    let big = git.server.repo("platform/big.git");
    big.write("site.yml", SITE);
    big.commit_big_file("blob.bin", 4 << 20);

    // Small in the mirror, large once checked out.
    let zeros = git.server.repo("platform/zeros.git");
    zeros.write("site.yml", SITE);
    zeros.write("zeros.bin", &"\0".repeat(3 << 20));
    zeros.commit("three MiB of zeros");

    let cases = [
        (
            git_playbook(&zeros.url, "main", "site.yml"),
            "SOURCE_UNAVAILABLE",
            "GIT_MAX_REPO_MIB",
        ),
        (
            git_playbook(&git.automation.url, "no-such-branch", "site.yml"),
            "SOURCE_NOT_FOUND",
            "no-such-branch",
        ),
        (
            git_playbook(&git.automation.url, "main", "missing.yml"),
            "SOURCE_NOT_FOUND",
            "missing.yml",
        ),
        (
            git_playbook(
                &format!("{}/platform/nothing.git", git.server.base_url),
                "main",
                "site.yml",
            ),
            "SOURCE_UNAVAILABLE",
            "nothing.git",
        ),
        (
            git_playbook(&escape.url, "main", "site.yml"),
            "SOURCE_UNAVAILABLE",
            "symbolic link",
        ),
        (
            git_playbook(&big.url, "main", "site.yml"),
            "SOURCE_UNAVAILABLE",
            "GIT_MAX_REPO_MIB",
        ),
        (
            role("nope", &git.collection.url, serde_json::json!({})),
            "SOURCE_NOT_FOUND",
            "nope",
        ),
    ];
    for (req, reason, names) in cases {
        let job = run(&mut client, req).await;
        assert_eq!(status(&job), pb::JobStatus::Failed, "{job:?}");
        assert_eq!(job.error_reason, reason, "{}", job.error);
        assert!(job.error.contains(names), "{}", job.error);
        assert!(!job.error.contains(&git.server.password), "{}", job.error);
    }

    // An executable file given as the inventory is never run.
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("inventory-script-ran");
    git.automation.write(
        "inventories/script.sh",
        &format!(
            "#!/bin/sh\ntouch {}\necho '{{\"all\": {{\"hosts\": [\"localhost\"]}}}}'\n",
            marker.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let script = git.automation.work().join("inventories/script.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // (By its commit: "main" was fetched moments ago, within the window.)
    let with_script = git.automation.commit("an inventory script");
    let mut req = request("hello.yml");
    req.inventory = git_inventory(&git.automation, &with_script, "inventories/script.sh");
    let job = run(&mut client, req).await;
    assert_eq!(job.inventory_commit, with_script, "{}", job.error);
    assert!(!marker.exists(), "an executable inventory was run");

    // A wrong credential: refused by the server, named without the value.
    let wrong = git.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    git.write_providers(&wrong);
    server.stop().await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let other = git.server.repo("platform/other.git");
    other.write("site.yml", SITE);
    other.commit("first");
    let job = run(&mut client, git_playbook(&other.url, "main", "site.yml")).await;
    assert_eq!(job.error_reason, "SOURCE_UNAVAILABLE", "{}", job.error);
    assert!(job.error.contains("other.git"), "{}", job.error);
    assert!(!job.error.contains("not-the-password"), "{}", job.error);
    assert!(git
        .server
        .log()
        .iter()
        .any(|l| l.contains(" 401 user=ci-bot")));
    git.write_providers(&git.server.password_file());

    // A fetch slower than GIT_FETCH_TIMEOUT_SECONDS.
    let slow = git.server.repo("platform/slow.git");
    slow.write("site.yml", SITE);
    slow.commit("first");
    git.server.set_delay(10);
    let job = run(&mut client, git_playbook(&slow.url, "main", "site.yml")).await;
    git.server.set_delay(0);
    assert_eq!(job.error_reason, "SOURCE_UNAVAILABLE", "{}", job.error);
    assert!(
        job.error.contains("GIT_FETCH_TIMEOUT_SECONDS"),
        "{}",
        job.error
    );
    server.stop().await;
}

/// The environment that points a service process at the git server.
fn process_env(git: &Git, cache: &Path) -> Vec<(String, String)> {
    vec![
        (
            "GIT_PROVIDERS_FILE".into(),
            git.providers_path().display().to_string(),
        ),
        ("GIT_CACHE_DIR".into(), cache.display().to_string()),
    ]
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_fetch_the_same_repository_concurrently() {
    let git = Git::start();
    let history = History::new(Backend::Shared).await;
    let cache = git.dir.path().join("shared-cache");
    let env = process_env(&git, &cache);
    let mut api = history.settings.clone();
    api.workers = 0;
    let api = ServiceProcess::serve(&api, &borrowed(&env)).await;
    let mut workers_settings = history.settings.clone();
    workers_settings.workers = 3;
    let workers = [
        ServiceProcess::start_worker(&workers_settings, &borrowed(&env)),
        ServiceProcess::start_worker(&workers_settings, &borrowed(&env)),
    ];
    let mut client = connect(api.addr.unwrap()).await;
    let mut submitted = Vec::new();
    for _ in 0..6 {
        submitted.push(
            submit(
                &mut client,
                git_playbook(&git.automation.url, "main", "site.yml"),
            )
            .await,
        );
    }
    let head = git.automation.head();
    for job in &submitted {
        let done = wait_terminal(&mut client, &job.job_id).await;
        let done = get(&mut client, &done.job_id).await;
        assert_successful(&done);
        assert_eq!(done.source_commit, head);
    }
    // Both workers ran some of them, from one fetch and one checkout.
    for worker in &workers {
        assert!(
            worker.log_text().contains("sources resolved"),
            "a worker ran none of the jobs:\n{}",
            worker.log_tail()
        );
    }
    assert_eq!(
        git.fetches(),
        2,
        "one fetch (ls-refs and fetch) for six jobs: {:?}",
        git.server.log()
    );
    let checkouts: Vec<_> = std::fs::read_dir(cache.join("repos"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|repo| {
            std::fs::read_dir(repo.path().join("checkouts"))
                .unwrap()
                .flatten()
        })
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(checkouts, vec![head]);
}

/// Command lines of every process, read while something runs.
fn all_command_lines() -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            out.push_str(&String::from_utf8_lossy(&cmdline).replace('\0', " "));
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_appears_nowhere() {
    let git = Git::start();
    // The credential comes from the worker's environment this time.
    let host = git.server.base_url.trim_start_matches("http://").to_owned();
    std::fs::write(
        git.providers_path(),
        format!(
            "providers:\n  - name: test\n    scheme: http\n    host: \"{host}\"\n    organizations: [platform]\n    username: {USER}\n    credential_env: ARS_TEST_GIT_TOKEN\n"
        ),
    )
    .unwrap();
    let token = git.server.password.clone();
    let leak = git.server.repo("platform/leak.git");
    leak.write(
        "site.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - debug:\n        msg: \"token=[{{ lookup('env', 'ARS_TEST_GIT_TOKEN') }}]\"\n",
    );
    leak.commit("tries to read the worker's credential");

    let history = History::new(Backend::Shared).await;
    let cache = git.dir.path().join("cache");
    let mut env = process_env(&git, &cache);
    env.push(("ARS_TEST_GIT_TOKEN".into(), token.clone()));
    env.push((
        "RUST_LOG".into(),
        "debug,sqlx=warn,h2=info,tower=info,hyper=info".into(),
    ));
    let service = ServiceProcess::serve(&history.settings, &borrowed(&env)).await;
    let mut client = connect(service.addr.unwrap()).await;

    // While the fetch waits on the server, no process shows the credential.
    git.server.set_delay(2);
    let job = submit(&mut client, git_playbook(&leak.url, "main", "site.yml")).await;
    let mut command_lines = String::new();
    for _ in 0..10 {
        command_lines.push_str(&all_command_lines());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    git.server.set_delay(0);
    assert!(
        command_lines.contains("fetch"),
        "the scan missed the fetch: {command_lines}"
    );
    let done = wait_terminal(&mut client, &job.job_id).await;
    let done = get(&mut client, &done.job_id).await;
    assert_successful(&done);
    assert!(stdout(&done).contains("token=[]"), "{}", stdout(&done));
    let events = watch_all(&mut client, &job.job_id, 0).await;
    let list = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let rows = history
        .table_rows(&["jobs", "job_events", "job_output"])
        .await;
    let mut cached_files = String::new();
    fn read_all(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                read_all(&path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    read_all(&cache, &mut cached_files);
    for (place, text) in [
        ("a command line", command_lines),
        ("GetJob", format!("{done:?}")),
        ("the events", format!("{events:?}")),
        ("ListJobs", format!("{list:?}")),
        ("the history", rows),
        ("Redis", history.redis_dump().await),
        ("the service's log", service.log_text()),
        ("the git cache", cached_files),
        ("the git server's log", git.server.log().join("\n")),
    ] {
        assert!(
            !text.is_empty() || place == "Redis",
            "nothing read from {place}"
        );
        assert!(!text.contains(&token), "{place} shows the credential");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_playbook_gets_the_collections_its_requirements_name() {
    let git = Git::start();
    let repo = git.server.repo("platform/with-requirements.git");
    repo.write(
        "tools/galaxy.yml",
        "namespace: platform\nname: tools\nversion: 1.0.0\nreadme: README.md\nauthors: [test]\n",
    );
    repo.write("tools/README.md", "tools\n");
    repo.write(
        "tools/roles/hello/tasks/main.yml",
        "- debug:\n    msg: \"from the required collection\"\n",
    );
    repo.write(
        "collections/requirements.yml",
        "collections:\n  - name: ./tools\n    type: dir\n",
    );
    repo.write(
        "site.yml",
        "- hosts: all\n  gather_facts: false\n  roles:\n    - platform.tools.hello\n",
    );
    let commit = repo.commit("a playbook and the collection it needs");
    let history = History::new(Backend::Embedded).await;
    let settings = git.settings(&history.settings);
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    for _ in 0..2 {
        let job = run(&mut client, git_playbook(&repo.url, "main", "site.yml")).await;
        assert_successful(&job);
        assert!(
            stdout(&job).contains("from the required collection"),
            "{}",
            stdout(&job)
        );
    }
    // Installed once, for the commit.
    let installed: Vec<_> = std::fs::read_dir(settings.git.cache_dir.join("repos"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("collections").join(&commit).is_dir())
        .collect();
    assert_eq!(installed.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_installed_on_the_workers_runs_with_its_vars() {
    let roles = tempfile::tempdir().unwrap();
    let tasks = roles.path().join("installed_greet/tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    std::fs::write(
        tasks.join("main.yml"),
        "- debug:\n    msg: \"installed role says {{ word }}\"\n",
    )
    .unwrap();
    let history = History::new(Backend::Embedded).await;
    let roles_path = roles.path().display().to_string();
    let service =
        ServiceProcess::serve(&history.settings, &[("ANSIBLE_ROLES_PATH", &roles_path)]).await;
    let mut client = connect(service.addr.unwrap()).await;
    let job = run(
        &mut client,
        role("installed_greet", "", serde_json::json!({"word": "hi"})),
    )
    .await;
    assert_successful(&job);
    assert!(
        stdout(&job).contains("installed role says hi"),
        "{}",
        stdout(&job)
    );
    assert_eq!(job.source_commit, "");
    let missing = run(
        &mut client,
        role("not_installed", "", serde_json::json!({})),
    )
    .await;
    assert_eq!(status(&missing), pb::JobStatus::Failed);
    assert_eq!(missing.error_reason, "PLAYBOOK_FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_run_only_the_sources_their_scopes_allow() {
    use ansible_runner_service::domain::Scopes;
    use ansible_runner_service::grpc::auth;
    let key = |name: &str, words: &[&str]| {
        let (key, client) =
            auth::new_key(name, Scopes::parse(words.iter().copied()).unwrap()).unwrap();
        (key, client.line())
    };
    let git = Git::start();
    let host = git.server.base_url.trim_start_matches("http://").to_owned();
    let (open, open_line) = key("open", &[]);
    let (catalogue, catalogue_line) = key("catalogue-only", &["playbooks=hello.yml"]);
    let automation_scope = format!("sources=git:{host}/platform/automation.git");
    let (automation, automation_line) =
        key("automation", &["playbooks=hello.yml", &automation_scope]);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(
        &keys_file,
        [open_line, catalogue_line, automation_line].join("\n"),
    )
    .unwrap();
    let mut history = History::new(Backend::Embedded).await;
    history.settings.api_keys_file = Some(keys_file);
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let mut client = server.client.clone();
    let site = || git_playbook(&git.automation.url, "main", "site.yml");
    let greet = || role("greet", &git.collection.url, serde_json::json!({}));
    let denied = |status: tonic::Status| {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(reason(&status), "SOURCE_NOT_PERMITTED", "{status:?}");
    };

    // A key limited to a catalogue playbook runs no git source.
    denied(
        client
            .submit_job(with_key(site(), &catalogue))
            .await
            .unwrap_err(),
    );
    let mut inventory_from_git = request("hello.yml");
    inventory_from_git.inventory = git_inventory(&git.automation, "main", "inventories/hosts.yml");
    denied(
        client
            .submit_job(with_key(inventory_from_git.clone(), &catalogue))
            .await
            .unwrap_err(),
    );
    // sources= opens that repository, and only it.
    submit_as(&mut client, site(), &automation).await;
    submit_as(&mut client, inventory_from_git, &automation).await;
    denied(
        client
            .submit_job(with_key(greet(), &automation))
            .await
            .unwrap_err(),
    );
    // A key without playbook scopes runs what the providers allow.
    submit_as(&mut client, greet(), &open).await;
    let page = client
        .list_jobs(with_key(ListJobsRequest::default(), &open))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 3, "each refusal wrote nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_runs_git_sources_and_shows_their_commits() {
    let git = Git::start();
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let addr = server.addr.to_string();
    let (repo, collection) = (git.automation.url.clone(), git.collection.url.clone());
    let head = git.automation.head();
    let (run, role_run, list) = tokio::task::spawn_blocking(move || {
        let run = cli(
            &addr,
            &[
                "run",
                "--git",
                &repo,
                "--ref",
                "v1",
                "site.yml",
                "--inventory-repo",
                &repo,
                "--inventory-file",
                "inventories/hosts.yml",
            ],
        );
        let role_run = cli(
            &addr,
            &[
                "run",
                "--role",
                "greet",
                "--git",
                &collection,
                "--role-vars",
                "who=CLI",
            ],
        );
        let list = cli(&addr, &["list", "--json"]);
        (run, role_run, list)
    })
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    assert!(
        text(&run.stdout).contains("inv=from-git"),
        "{}",
        text(&run.stdout)
    );
    assert_eq!(
        role_run.status.code(),
        Some(0),
        "{}",
        text(&role_run.stderr)
    );
    assert!(
        text(&role_run.stdout).contains("hello CLI"),
        "{}",
        text(&role_run.stdout)
    );
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let git_job = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|j| !j["git_playbook"].is_null())
        .unwrap()
        .clone();
    assert_eq!(git_job["source_commit"], head.as_str());
    assert_eq!(git_job["source_ref"], "refs/tags/v1");
    assert_eq!(git_job["inventory_commit"], head.as_str());
    assert_eq!(git_job["git_playbook"]["path"], "site.yml");
    let id = git_job["job_id"].as_str().unwrap().to_owned();
    let addr = server.addr.to_string();
    let (get, table) =
        tokio::task::spawn_blocking(move || (cli(&addr, &["get", &id]), cli(&addr, &["list"])))
            .await
            .unwrap();
    let shown = text(&get.stdout);
    assert!(
        shown.contains(&format!("commit:    {head} (refs/tags/v1)")),
        "{shown}"
    );
    assert!(shown.contains("inventory:"), "{shown}");
    assert!(
        text(&table.stdout).contains(&format!("site.yml@{}", &head[..12])),
        "{}",
        text(&table.stdout)
    );
    server.stop().await;
}

/// The commits checked out in the cache.
fn checkouts(cache: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(cache.join("repos"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|repo| {
            std::fs::read_dir(repo.path().join("checkouts"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_checkouts_in_use_and_removes_the_rest() {
    let git = Git::start();
    let history = History::new(Backend::Embedded).await;
    let mut settings = git.settings(&history.settings);
    // Over the size limit at once, and looked at on every checkout.
    settings.git.cache_max_bytes = 0;
    settings.git.evict_every = Duration::ZERO;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let cache = settings.git.cache_dir.clone();

    let first = run(
        &mut client,
        git_playbook(&git.automation.url, "main", "site.yml"),
    )
    .await;
    assert_successful(&first);
    git.automation.write(
        "slow.yml",
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - pause:\n        seconds: 4\n",
    );
    let second_commit = git.automation.commit("a slow playbook");
    let slow = submit(
        &mut client,
        git_playbook(&git.automation.url, &second_commit, "slow.yml"),
    )
    .await;
    // While the slow run holds its checkout, the first commit's goes.
    // (It is RUNNING from its claim; its commit is recorded once checked out.)
    eventually(Duration::from_secs(30), "the slow job to run", || {
        let mut client = client.clone();
        let id = slow.job_id.clone();
        async move {
            let job = get(&mut client, &id).await;
            (status(&job) == pb::JobStatus::Running && !job.source_commit.is_empty()).then_some(())
        }
    })
    .await;
    assert_eq!(checkouts(&cache), vec![second_commit.clone()]);
    // Another checkout while it runs: the one in use stays.
    let again = run(
        &mut client,
        git_playbook(&git.automation.url, &first.source_commit, "site.yml"),
    )
    .await;
    assert_successful(&again);
    assert!(
        checkouts(&cache).contains(&second_commit),
        "{:?}",
        checkouts(&cache)
    );
    let slow = wait_terminal(&mut client, &slow.job_id).await;
    assert_eq!(status(&slow), pb::JobStatus::Successful);
    server.stop().await;
}

/// The processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    all_command_lines()
        .lines()
        .filter(|l| l.contains(needle) && !l.contains("git_http.py"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_canceled_while_fetching_ends_at_once_and_leaves_no_git_behind() {
    let git = Git::start();
    let slow = git.server.repo("platform/slow-cancel.git");
    slow.write("site.yml", SITE);
    slow.commit("first");
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&git.settings(&history.settings)).await;
    let mut client = server.client.clone();
    git.server.set_delay(30);
    let job = submit(&mut client, git_playbook(&slow.url, "main", "site.yml")).await;
    eventually(Duration::from_secs(20), "git to fetch", || async {
        (!processes_mentioning("slow-cancel.git").is_empty()).then_some(())
    })
    .await;
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap();
    let done = wait_terminal(&mut client, &job.job_id).await;
    git.server.set_delay(0);
    assert_eq!(status(&done), pb::JobStatus::Canceled, "{}", done.error);
    eventually(Duration::from_secs(10), "git to be gone", || async {
        processes_mentioning("slow-cancel.git")
            .is_empty()
            .then_some(())
    })
    .await;
    server.stop().await;
}
