//! Named credentials: created by operators with the real binary, sealed in
//! the history with a master key, attached to jobs by name, written into the
//! run's private folder for the run only, and never shown. Fleet hosts are
//! real sshd processes on loopback (tests/common/sshd.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ansible_runner_service::pb::{self, ListJobsRequest, SubmitJobRequest};
use ansible_runner_service::settings::Settings;
use common::process::ServiceProcess;
use common::sshd::{
    keygen, SshFleet, BECOME_LOGIN, BECOME_PASSWORD, BECOME_TARGET, FLEET_PLAYBOOK,
};
use common::*;
use serde_json::{json, Map, Value};
use tonic::Code;

/// The binary's `credentials` command against `settings`' history.
fn credentials(settings: &Settings, key_file: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .arg("credentials")
        .args(args)
        .env("DATABASE_URL", &settings.database_url)
        .env("CREDENTIALS_KEY_FILE", key_file)
        .env_remove("CREDENTIALS_KEY")
        .output()
        .unwrap()
}

/// `credentials create --name NAME --kind KIND ARGS...`.
fn create(settings: &Settings, key_file: &Path, name: &str, kind: &str, args: &[&str]) -> Output {
    let mut all = vec!["create", "--name", name, "--kind", kind];
    all.extend_from_slice(args);
    credentials(settings, key_file, &all)
}

/// An ssh credential `name` for the fleet: its client key and known hosts,
/// logging in as `user`. Returns what `create` printed.
fn fleet_credential(
    settings: &Settings,
    key_file: &Path,
    name: &str,
    fleet: &SshFleet,
    user: &str,
) -> String {
    let (private, known) = (
        fleet.client_key.display().to_string(),
        fleet.known_hosts.display().to_string(),
    );
    let args = [
        "--ssh-key-file",
        &private,
        "--user",
        user,
        "--known-hosts-file",
        &known,
    ];
    ok(create(settings, key_file, name, "ssh", &args))
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new master key in a file of `dir`.
fn master_key(dir: &Path) -> PathBuf {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args(["credentials", "new-key"])
        .output()
        .unwrap();
    let path = dir.join("master.key");
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all(ok(out).as_bytes())
        .unwrap();
    path
}

/// A history, a new master key in `key_dir`, and settings for a service
/// whose workers hold the key, with `playbooks(extra)` as its catalogue.
struct Keyed {
    history: History,
    key: PathBuf,
    settings: Settings,
    books: tempfile::TempDir,
}

async fn keyed(backend: Backend, key_dir: &Path, extra: &[(&str, &str)]) -> Keyed {
    let history = History::new(backend).await;
    let key = master_key(key_dir);
    let books = playbooks(extra);
    let mut settings = history.settings.clone();
    settings.playbooks_dir = books.path().to_owned();
    settings.credentials_key_file = Some(key.clone());
    Keyed {
        history,
        key,
        settings,
        books,
    }
}

/// A playbooks folder with the fleet playbook (and whatever `extra` adds).
fn playbooks(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.yml"), FLEET_PLAYBOOK).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// The fleet as an inline inventory a caller may send: addresses and
/// ports only, nothing about keys or users.
fn fleet_inventory(fleet: &SshFleet) -> Option<pb::Inventory> {
    let mut hosts = Map::new();
    for host in &fleet.hosts {
        hosts.insert(
            host.name.clone(),
            json!({"ansible_host": host.address, "ansible_port": host.port}),
        );
    }
    let Value::Object(doc) = json!({"all": {"hosts": hosts}}) else {
        unreachable!()
    };
    Some(pb::Inventory {
        source: Some(pb::inventory::Source::Inline(
            ansible_runner_service::grpc::convert::json_to_struct(&doc),
        )),
    })
}

fn with_credentials(playbook: &str, names: &[&str]) -> SubmitJobRequest {
    let mut req = request(playbook);
    req.credentials = names.iter().map(|n| n.to_string()).collect();
    req
}

async fn run(client: &mut JobClient, req: SubmitJobRequest) -> pb::Job {
    let job = submit(client, req).await;
    wait_terminal(client, &job.job_id).await;
    get(client, &job.job_id).await
}

type JobClient =
    ansible_runner_service::pb::job_service_client::JobServiceClient<tonic::transport::Channel>;

fn stdout(job: &pb::Job) -> &str {
    job.result.as_ref().map_or("", |r| r.stdout.as_str())
}

/// Files under the temporary folder's run folders that hold `needle`.
fn run_files_holding(needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, needle, found);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle)) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("ars-job-") {
            walk(&entry.path(), needle, &mut found);
        }
    }
    found
}

/// A line from the middle of a private key: what a leak would show.
fn key_line(key_file: &Path) -> String {
    let text = std::fs::read_to_string(key_file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("-----")).collect();
    lines[lines.len() / 2].to_owned()
}

/// A ping on every host, then a 30 s pause: a run to stop or kill midway.
const SLOW_FLEET_PLAYBOOK: &str =
    "- hosts: all\n  gather_facts: false\n  tasks:\n    - ping:\n    - pause:\n        seconds: 30\n";

/// Live ssh connection masters with their control socket under a folder
/// whose name starts with `folder` (a master's command line is
/// `ssh: <control path> [mux]`).
fn ssh_masters_in(folder: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let line = command_line(*pid);
            alive(*pid) && line.starts_with("ssh: ") && line.contains(folder)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_credential_reaches_the_fleet_and_is_never_shown() {
    let fleet = SshFleet::start(3);
    let Keyed {
        history,
        key,
        settings,
        books: _books,
    } = keyed(
        Backend::Shared,
        fleet.dir(),
        &[("slow.yml", SLOW_FLEET_PLAYBOOK)],
    )
    .await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let created = fleet_credential(&settings, &key, "prod-ssh", &fleet, &fleet.user);
    assert!(created.contains("SHA256:"), "{created}");

    let mut req = with_credentials("fleet.yml", &["prod-ssh"]);
    req.inventory = fleet_inventory(&fleet);
    let job = submit(&mut client, req).await;
    let events = events(&watch_all(&mut client, &job.job_id, 0).await);
    let done = get(&mut client, &job.job_id).await;
    assert_eq!(
        status(&done),
        pb::JobStatus::Successful,
        "{}\n{}",
        done.error,
        stdout(&done)
    );
    assert_eq!(done.credentials, vec!["prod-ssh".to_owned()]);
    for host in &fleet.hosts {
        assert_eq!(done.result.as_ref().unwrap().stats[&host.name].ok, 2);
    }

    // A run that times out, and one that is canceled, leave nothing either.
    let mut slow = with_credentials("slow.yml", &["prod-ssh"]);
    slow.inventory = fleet_inventory(&fleet);
    slow.timeout_seconds = 3;
    let timed_out = run(&mut client, slow.clone()).await;
    assert_eq!(status(&timed_out), pb::JobStatus::TimedOut);
    slow.timeout_seconds = 0;
    let canceled = submit(&mut client, slow).await;
    eventually(Duration::from_secs(30), "the slow job to start", || {
        let mut client = client.clone();
        let id = canceled.job_id.clone();
        async move { (status(&get(&mut client, &id).await) == pb::JobStatus::Running).then_some(()) }
    })
    .await;
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: canceled.job_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        status(&wait_terminal(&mut client, &canceled.job_id).await),
        pb::JobStatus::Canceled
    );

    // Each run's ssh connection masters ended with it.
    for id in [&job.job_id, &timed_out.job_id, &canceled.job_id] {
        let folder = format!("ars-job-{id}-");
        eventually(
            Duration::from_secs(10),
            "the run's ssh masters to end",
            || {
                let left = ssh_masters_in(&folder);
                async move { left.is_empty().then_some(()) }
            },
        )
        .await;
    }

    // The key is nowhere: not in any answer, the history, Redis, the
    // listing, or a run's folder once the run is over.
    let secret = key_line(&fleet.client_key);
    let listed = ok(credentials(&settings, &key, &["list", "--json"]));
    let listed_json: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed_json[0]["name"], "prod-ssh");
    assert_eq!(listed_json[0]["kind"], "ssh");
    assert_eq!(listed_json[0]["user"], fleet.user.as_str());
    let rows = history
        .table_rows(&["jobs", "job_events", "job_output", "credentials"])
        .await;
    let redis = history.redis_dump().await;
    let list = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    for (place, text) in [
        ("GetJob", format!("{done:?}")),
        ("the events", format!("{events:?}")),
        ("ListJobs", format!("{list:?}")),
        ("credentials list", listed),
        ("the history", rows),
        ("Redis", redis),
    ] {
        assert!(!text.contains(&secret), "{place} shows the key");
    }
    assert_eq!(run_files_holding(&secret), Vec::<PathBuf>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_an_unknown_host_key_is_unreachable_unless_accept_new() {
    let fleet = SshFleet::start(2);
    let Keyed {
        history: _history,
        key,
        settings,
        books: _books,
    } = keyed(Backend::Embedded, fleet.dir(), &[]).await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let other_key = fleet.dir().join("other");
    keygen(&other_key, "");
    let nobody_known = fleet.dir().join("empty_known_hosts");
    std::fs::write(&nobody_known, "").unwrap();
    let (known, private, other) = (
        fleet.known_hosts.display().to_string(),
        fleet.client_key.display().to_string(),
        other_key.display().to_string(),
    );
    let user = fleet.user.as_str();
    let empty = nobody_known.display().to_string();
    for (name, args) in [
        (
            "wrong-key",
            [
                "--ssh-key-file",
                &other,
                "--user",
                user,
                "--known-hosts-file",
                &known,
            ],
        ),
        (
            "unknown-hosts",
            [
                "--ssh-key-file",
                &private,
                "--user",
                user,
                "--known-hosts-file",
                &empty,
            ],
        ),
        (
            "wrong-user",
            [
                "--ssh-key-file",
                &private,
                "--user",
                "no-such-user",
                "--known-hosts-file",
                &known,
            ],
        ),
    ] {
        ok(create(&settings, &key, name, "ssh", &args));
    }
    let accept_new = [
        "--ssh-key-file",
        &private,
        "--user",
        user,
        "--accept-new-host-keys",
    ];
    ok(create(&settings, &key, "accept-new", "ssh", &accept_new));
    for (credential, expected) in [
        ("wrong-key", pb::JobStatus::Failed),
        ("unknown-hosts", pb::JobStatus::Failed),
        ("wrong-user", pb::JobStatus::Failed),
        ("accept-new", pb::JobStatus::Successful),
    ] {
        let mut req = with_credentials("fleet.yml", &[credential]);
        req.inventory = fleet_inventory(&fleet);
        let job = run(&mut client, req).await;
        assert_eq!(status(&job), expected, "{credential}: {}", stdout(&job));
        let result = job.result.as_ref().unwrap();
        for host in &fleet.hosts {
            let unreachable = result.stats[&host.name].unreachable;
            assert_eq!(
                unreachable,
                u32::from(expected == pb::JobStatus::Failed),
                "{credential}"
            );
        }
        if expected == pb::JobStatus::Failed {
            assert_eq!(result.rc, 4, "{credential}");
        }
    }
    // A failed run leaves its key behind no more than a successful one.
    assert_eq!(
        run_files_holding(&key_line(&fleet.client_key)),
        Vec::<PathBuf>::new()
    );
    server.stop().await;
}

const VAULTED_PLAYBOOK: &str = r#"- hosts: localhost
  gather_facts: false
  vars_files:
    - vaulted_vars.yml
  tasks:
    - debug:
        msg: "the word is {{ secret_word }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_credential_opens_vaulted_vars_and_without_it_the_run_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let Keyed {
        history: _history,
        key,
        settings,
        books,
    } = keyed(
        Backend::Embedded,
        dir.path(),
        &[
            ("vaulted.yml", VAULTED_PLAYBOOK),
            ("vaulted_vars.yml", "secret_word: swordfish\n"),
        ],
    )
    .await;
    let password_file = dir.path().join("vault-password");
    std::fs::write(&password_file, "correct-horse-battery\n").unwrap();
    let vault = std::process::Command::new("ansible-vault")
        .arg("encrypt")
        .arg("--vault-password-file")
        .arg(&password_file)
        .arg(books.path().join("vaulted_vars.yml"))
        .output()
        .unwrap();
    assert!(
        vault.status.success(),
        "{}",
        String::from_utf8_lossy(&vault.stderr)
    );

    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let password = password_file.display().to_string();
    ok(create(
        &settings,
        &key,
        "prod-vault",
        "vault",
        &["--password-file", &password],
    ));

    let job = run(
        &mut client,
        with_credentials("vaulted.yml", &["prod-vault"]),
    )
    .await;
    assert_eq!(status(&job), pb::JobStatus::Successful, "{}", stdout(&job));
    assert!(
        stdout(&job).contains("the word is swordfish"),
        "{}",
        stdout(&job)
    );
    assert!(!format!("{job:?}").contains("correct-horse-battery"));

    let without = run(&mut client, request("vaulted.yml")).await;
    assert_eq!(status(&without), pb::JobStatus::Failed);
    assert!(
        stdout(&without).to_lowercase().contains("vault"),
        "{}",
        stdout(&without)
    );
    assert_eq!(
        run_files_holding("correct-horse-battery"),
        Vec::<PathBuf>::new()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_forbidden_or_doubled_credentials_are_refused_and_nothing_is_written() {
    use ansible_runner_service::domain::Scopes;
    use ansible_runner_service::grpc::auth;
    let dir = tempfile::tempdir().unwrap();
    let key_line = |name: &str, words: &[&str]| {
        let (key, client) =
            auth::new_key(name, Scopes::parse(words.iter().copied()).unwrap()).unwrap();
        (key, client.line())
    };
    let (limited, limited_line) = key_line("limited", &["playbooks=hello.yml"]);
    let (prod, prod_line) = key_line("prod", &["playbooks=hello.yml", "credentials=prod-*"]);
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, [limited_line, prod_line].join("\n")).unwrap();
    let history = History::new(Backend::Embedded).await;
    let key = master_key(dir.path());
    let mut settings = history.settings.clone();
    settings.api_keys_file = Some(keys_file);
    settings.credentials_key_file = Some(key.clone());
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "a-become-password\n").unwrap();
    let pw = password_file.display().to_string();
    for name in ["prod-become", "prod-become-2", "dev-become"] {
        ok(create(
            &settings,
            &key,
            name,
            "become",
            &["--password-file", &pw],
        ));
    }

    let refused = |req: SubmitJobRequest, key: &str| {
        let mut client = client.clone();
        let key = key.to_owned();
        async move { client.submit_job(with_key(req, &key)).await.unwrap_err() }
    };
    // (Outside the scopes is PERMISSION_DENIED, whether it exists or not.)
    let err = refused(with_credentials("hello.yml", &["prod-nope"]), &prod).await;
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "CREDENTIAL_NOT_FOUND")
    );
    let err = refused(with_credentials("hello.yml", &["prod-become"]), &limited).await;
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "CREDENTIAL_NOT_PERMITTED")
    );
    let err = refused(with_credentials("hello.yml", &["dev-become"]), &prod).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = refused(
        with_credentials("hello.yml", &["prod-become", "prod-become-2"]),
        &prod,
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = refused(with_credentials("hello.yml", &["-bad name"]), &prod).await;
    assert_eq!(violations(&err), vec!["credentials[0]"]);
    let job = submit_as(
        &mut client,
        with_credentials("hello.yml", &["prod-become"]),
        &prod,
    )
    .await;
    let page = client
        .list_jobs(with_key(ListJobsRequest::default(), &prod))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 1, "only the allowed submit wrote a job");
    let done = eventually(Duration::from_secs(60), "the job to end", || {
        let mut client = client.clone();
        let (id, key) = (job.job_id.clone(), prod.clone());
        async move {
            let job = client
                .get_job(with_key(pb::GetJobRequest { job_id: id }, &key))
                .await
                .ok()?
                .into_inner()
                .job?;
            (status(&job) != pb::JobStatus::Pending && status(&job) != pb::JobStatus::Running)
                .then_some(job)
        }
    })
    .await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{}", done.error);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_master_key_fails_the_job_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::new(Backend::Embedded).await;
    let key = master_key(dir.path());
    let settings = history.settings.clone();
    // The server has no key: it accepts the name, its workers cannot open it.
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a-password\n").unwrap();
    let pw = pw.display().to_string();
    ok(create(
        &settings,
        &key,
        "v",
        "vault",
        &["--password-file", &pw],
    ));
    let job = run(&mut client, with_credentials("hello.yml", &["v"])).await;
    assert_eq!(status(&job), pb::JobStatus::Failed);
    assert_eq!(job.error_reason, "CREDENTIAL_UNAVAILABLE");
    assert!(job.error.contains("master key"), "{}", job.error);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_seals_every_credential_again_and_delete_removes_one() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::new(Backend::Embedded).await;
    let old_key = master_key(dir.path());
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new_key = master_key(&new_dir);
    let mut settings = history.settings.clone();
    settings.credentials_key_file = Some(old_key.clone());
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a-vault-password\n").unwrap();
    let pw = pw.display().to_string();
    ok(create(
        &settings,
        &old_key,
        "v",
        "vault",
        &["--password-file", &pw],
    ));
    let before = ok(credentials(&settings, &old_key, &["list", "--json"]));

    let new = new_key.display().to_string();
    let rekeyed = ok(credentials(
        &settings,
        &old_key,
        &["rekey", "--new-key-file", &new],
    ));
    assert!(rekeyed.contains("1 credentials"), "{rekeyed}");
    // A worker still on the old key cannot open it; one on the new key can.
    let job = run(&mut client, with_credentials("hello.yml", &["v"])).await;
    assert_eq!(job.error_reason, "CREDENTIAL_UNAVAILABLE", "{}", job.error);
    server.stop().await;
    settings.credentials_key_file = Some(new_key.clone());
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let job = run(&mut client, with_credentials("hello.yml", &["v"])).await;
    assert_eq!(status(&job), pb::JobStatus::Successful, "{}", job.error);
    let after = ok(credentials(&settings, &new_key, &["list", "--json"]));
    assert_ne!(before, after, "the password's keyed hash follows the key");

    ok(credentials(&settings, &new_key, &["delete", "--name", "v"]));
    let err = client
        .submit_job(with_credentials("hello.yml", &["v"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        !credentials(&settings, &new_key, &["delete", "--name", "v"])
            .status
            .success()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_key_file_and_ssh_masters_are_gone_once_a_worker_starts_again() {
    let fleet = SshFleet::start(2);
    let Keyed {
        history: _history,
        key,
        mut settings,
        books: _books,
    } = keyed(
        Backend::Shared,
        fleet.dir(),
        &[("slow.yml", SLOW_FLEET_PLAYBOOK)],
    )
    .await;
    settings.lease = Duration::from_secs(3);
    settings.workers = 1;
    let mut api_settings = settings.clone();
    api_settings.workers = 0;
    let api = TestServer::start(&api_settings).await;
    let mut client = api.client.clone();
    fleet_credential(&settings, &key, "prod-ssh", &fleet, &fleet.user);
    // Workers log everything they do (debug), to be searched for the key.
    let key_path = key.display().to_string();
    let env = [
        ("CREDENTIALS_KEY_FILE", key_path.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let mut worker = ServiceProcess::start_worker(&settings, &env);
    let mut req = with_credentials("slow.yml", &["prod-ssh"]);
    req.inventory = fleet_inventory(&fleet);
    let job = submit(&mut client, req).await;
    let folder = format!("ars-job-{}-", job.job_id);
    let secret = key_line(&fleet.client_key);

    // Midway (the ping done, the pause running), over kept-open connections.
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job.job_id.clone(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = stream.message().await.unwrap() {
            if let Some(pb::watch_job_response::Kind::Event(e)) = message.kind {
                if e.event == "playbook_on_task_start" && e.task.contains("pause") {
                    return;
                }
            }
        }
        panic!("the job ended before its pause");
    })
    .await
    .expect("the pause to start");
    assert!(
        !ssh_masters_in(&folder).is_empty(),
        "the run keeps ssh masters"
    );
    worker.kill9();
    // Nothing else removes them: the key is still in the run's folder,
    // which only its user may enter.
    let left = run_files_holding(&secret);
    assert!(!left.is_empty(), "the key file is left");
    for file in &left {
        use std::os::unix::fs::PermissionsExt;
        let run_folder = file
            .ancestors()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&folder))
            })
            .expect("the run's folder");
        let mode = std::fs::metadata(run_folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", run_folder.display());
    }

    let restarted = ServiceProcess::start_worker(&settings, &env);
    eventually(
        Duration::from_secs(30),
        "the lost run's folder to be removed",
        || async { run_files_holding(&secret).is_empty().then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the lost run's ssh masters to end",
        || async { ssh_masters_in(&folder).is_empty().then_some(()) },
    )
    .await;
    no_process_left(&job.job_id).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(done.error_reason, "WORKER_LOST", "{}", done.error);
    let log = restarted.log_text();
    assert!(
        log.contains("removed the private folder of a run left by a dead worker"),
        "{log}"
    );
    for (name, text) in [("first", worker.log_text()), ("second", log)] {
        assert!(
            !text.contains(&secret),
            "the {name} worker's log shows the key"
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_passphrase_is_opened_at_create_and_reaches_the_fleet() {
    let fleet = SshFleet::start(1);
    let Keyed {
        history,
        key,
        settings,
        books: _books,
    } = keyed(Backend::Embedded, fleet.dir(), &[]).await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let locked = fleet.dir().join("locked");
    let passphrase = "tell no one 42";
    keygen(&locked, passphrase);
    fleet.authorize(&locked.with_extension("pub"));
    let right = fleet.dir().join("passphrase");
    std::fs::write(&right, format!("{passphrase}\n")).unwrap();
    let wrong = fleet.dir().join("wrong-passphrase");
    std::fs::write(&wrong, "not it\n").unwrap();
    let (locked_path, known) = (
        locked.display().to_string(),
        fleet.known_hosts.display().to_string(),
    );
    let create_locked = |extra: &[&str]| {
        let mut args = vec!["--ssh-key-file", &locked_path, "--user", &fleet.user];
        args.extend_from_slice(&["--known-hosts-file", &known]);
        args.extend_from_slice(extra);
        create(&settings, &key, "locked", "ssh", &args)
    };
    let said = |out: &Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let without = said(&create_locked(&[]));
    assert!(without.contains("--passphrase-file"), "{without}");
    let (right, wrong) = (right.display().to_string(), wrong.display().to_string());
    let mistaken = said(&create_locked(&["--passphrase-file", &wrong]));
    assert!(
        mistaken.contains("the passphrase does not open the key"),
        "{mistaken}"
    );
    let created = ok(create_locked(&["--passphrase-file", &right]));
    let listed = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(locked.with_extension("pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(created.contains(&fingerprint), "{created} / {fingerprint}");

    let mut req = with_credentials("fleet.yml", &["locked"]);
    req.inventory = fleet_inventory(&fleet);
    let job = run(&mut client, req).await;
    assert_eq!(status(&job), pb::JobStatus::Successful, "{}", stdout(&job));
    // The key as workers use it (opened) is nowhere, nor the passphrase.
    let opened = fleet.dir().join("opened");
    std::fs::copy(&locked, &opened).unwrap();
    let unlocked = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", passphrase, "-N", "", "-f"])
        .arg(&opened)
        .status()
        .unwrap();
    assert!(unlocked.success());
    let secret = key_line(&opened);
    let rows = history.table_rows(&["jobs", "credentials"]).await;
    assert!(!rows.contains(passphrase));
    assert!(!rows.contains(&secret));
    assert!(!format!("{job:?}").contains(&secret));
    assert_eq!(run_files_holding(&secret), Vec::<PathBuf>::new());
    server.stop().await;
}

/// A command run as another user through sudo (`become`), over pipelining
/// (the modules go through sudo's standard input, no temporary files).
const BECOME_PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  vars:
    ansible_pipelining: true
  tasks:
    - command: id -un
      become: true
      become_user: "{{ become_to }}"
      register: who
      changed_when: false
    - debug:
        msg: "ran as {{ who.stdout }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_become_credential_gives_sudo_its_password_and_without_it_the_task_fails() {
    let fleet = SshFleet::start(2);
    let Keyed {
        history,
        key,
        settings,
        books: _books,
    } = keyed(
        Backend::Embedded,
        fleet.dir(),
        &[("become.yml", BECOME_PLAYBOOK)],
    )
    .await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    fleet_credential(&settings, &key, "fleet-ssh", &fleet, BECOME_LOGIN);
    let password_file = fleet.dir().join("become-password");
    std::fs::write(&password_file, format!("{BECOME_PASSWORD}\n")).unwrap();
    let password = password_file.display().to_string();
    ok(create(
        &settings,
        &key,
        "fleet-sudo",
        "become",
        &["--password-file", &password],
    ));
    let become_job = |names: &[&str]| {
        let mut req = with_credentials("become.yml", names);
        req.inventory = fleet_inventory(&fleet);
        req.extra_vars = vars(json!({"become_to": BECOME_TARGET}));
        req
    };

    // Without the password sudo refuses, on every host.
    let without = run(&mut client, become_job(&["fleet-ssh"])).await;
    assert_eq!(
        status(&without),
        pb::JobStatus::Failed,
        "{}",
        stdout(&without)
    );
    let said = stdout(&without).to_lowercase();
    assert!(said.contains("sudo") && said.contains("password"), "{said}");
    let with = run(&mut client, become_job(&["fleet-ssh", "fleet-sudo"])).await;
    assert_eq!(
        status(&with),
        pb::JobStatus::Successful,
        "{}",
        stdout(&with)
    );
    assert_eq!(
        stdout(&with)
            .matches(&format!("ran as {BECOME_TARGET}"))
            .count(),
        fleet.hosts.len(),
        "{}",
        stdout(&with)
    );
    let rows = history
        .table_rows(&["jobs", "job_events", "job_output"])
        .await;
    assert!(!rows.contains(BECOME_PASSWORD));
    assert!(!format!("{with:?}").contains(BECOME_PASSWORD));
    assert_eq!(run_files_holding(BECOME_PASSWORD), Vec::<PathBuf>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credential_names_users_and_vault_ids_run_nothing() {
    let fleet = SshFleet::start(1);
    let Keyed {
        history: _history,
        key,
        settings,
        books: _books,
    } = keyed(Backend::Embedded, fleet.dir(), &[]).await;
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();
    let marker = fleet.dir().join("marker");
    let touch = format!("touch {}", marker.display());

    // A name a shell would run: refused at submit, nothing written.
    let name = format!("$({touch})");
    let err = client
        .submit_job(with_credentials("fleet.yml", &[&name]))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["credentials[0]"]);

    // A user that ssh would take for an option, a vault id that would name
    // another file: refused at create. Had either been stored, the runs
    // below would use it.
    let private = fleet.client_key.display().to_string();
    // (`--user=VALUE`: as a word of its own clap would take it for a flag.)
    let user = format!("--user=-oProxyCommand={touch}");
    let known = fleet.known_hosts.display().to_string();
    let hostile_user = create(
        &settings,
        &key,
        "hostile-user",
        "ssh",
        &[
            "--ssh-key-file",
            &private,
            &user,
            "--known-hosts-file",
            &known,
        ],
    );
    let said = String::from_utf8_lossy(&hostile_user.stderr);
    assert!(said.contains("--user"), "{said}");
    let password = fleet.dir().join("pw");
    std::fs::write(&password, "a-password\n").unwrap();
    let password = password.display().to_string();
    let vault_id = format!("x@{}", marker.display());
    let hostile_vault = create(
        &settings,
        &key,
        "hostile-vault",
        "vault",
        &["--password-file", &password, "--vault-id", &vault_id],
    );
    assert!(!hostile_vault.status.success());
    let listed = ok(credentials(&settings, &key, &["list", "--json"]));
    for name in ["hostile-user", "hostile-vault"] {
        if listed.contains(name) {
            let mut req = with_credentials("fleet.yml", &[name]);
            req.inventory = fleet_inventory(&fleet);
            run(&mut client, req).await;
        }
    }
    assert_eq!(listed.trim(), "[]");
    assert!(!marker.exists(), "a hostile value ran a command");
    let page = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_size, 0);
    server.stop().await;
}
