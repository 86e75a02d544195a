//! A newcomer's first hour, through the real binary and server: TLS from
//! the client and the health check, startup mistakes named with their flag,
//! logs fit for files, Ctrl-C during `run`, and the client's JSON and inputs.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"));
    command
        .env_remove("ARS_TOKEN")
        .env_remove("ARS_SERVER")
        .env_remove("NO_COLOR");
    command
}

/// A client command (`args[0]`) against `server`, with the rest of `args`.
fn cli(server: &str, args: &[&str]) -> Output {
    binary()
        .arg(args[0])
        .args(["--server", server])
        .args(&args[1..])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_and_health_talk_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("cli-user");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let ca = write("client-ca.pem", &pki.ca);
    let cert = write("client.pem", &pki.client_cert);
    let key = write("client.key", &pki.client_key);
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    history.settings.tls = Some(pki.server_tls(dir.path()));
    let server = TestServer::start_tls(&history.settings).await;
    let url = format!("https://localhost:{}", server.addr.port());
    let (playbooks, no_cert, no_ca, health, plain) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let tls = [
                "--ca-cert",
                &ca,
                "--client-cert",
                &cert,
                "--client-key",
                &key,
            ];
            let with = |command: &'static str| {
                let mut args = vec![command];
                args.extend(tls);
                args
            };
            (
                cli(&url, &with("playbooks")),
                cli(&url, &["playbooks", "--ca-cert", &ca]),
                binary()
                    .args(["playbooks", "--server", &url])
                    .env("SSL_CERT_FILE", "/nonexistent")
                    .output()
                    .unwrap(),
                binary()
                    .args(["health", "--addr", &url])
                    .args(tls)
                    .output()
                    .unwrap(),
                cli(&url.replace("https", "http"), &with("playbooks")),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(
        playbooks.status.code(),
        Some(0),
        "{}",
        text(&playbooks.stderr)
    );
    assert!(text(&playbooks.stdout).contains("hello.yml"));
    assert_eq!(
        no_cert.status.code(),
        Some(1),
        "mutual TLS needs the certificate"
    );
    assert!(!text(&no_cert.stderr).is_empty());
    assert_eq!(no_ca.status.code(), Some(1), "an unknown CA is refused");
    assert_eq!(health.status.code(), Some(0), "{}", text(&health.stderr));
    assert_eq!(text(&health.stdout).trim(), "SERVING");
    assert!(
        text(&plain.stderr).contains("plaintext"),
        "certificates with http:// are a mistake: {}",
        text(&plain.stderr)
    );
    server.stop().await;
}

/// `serve` with these arguments (an API server on a free port unless they
/// say otherwise) on the history at `database_url`; its output when it
/// exits, as it should at once.
fn serve_fails(database_url: &str, args: &[&str]) -> Output {
    let mut child = binary()
        .arg("serve")
        .args(args)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("WORKER_CONCURRENCY", "0")
        .env("DATABASE_URL", database_url)
        .env("PLAYBOOKS_DIR", repo_path("playbooks"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Well under CONNECT_TIMEOUT_SECONDS (60): a mistake that is retried as
    // if a server were down does not exit in time.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("serve {args:?} did not exit: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_mistakes_name_their_flag_before_anything_is_announced() {
    let history = History::new(Backend::Embedded).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder.yml");
    std::fs::write(&file, "- hosts: all\n").unwrap();
    let file = file.display().to_string();
    // A port someone else listens on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    // (arguments, exit code, what the one line must say)
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec!["--playbooks-dir", &file],
            1,
            vec!["--playbooks-dir", "PLAYBOOKS_DIR", "is not a folder"],
        ),
        (
            vec!["--playbooks-dir", "/nonexistent/playbooks"],
            1,
            vec![
                "--playbooks-dir",
                "/nonexistent/playbooks",
                "point it at the folder",
            ],
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            1,
            vec!["--tls-cert", "TLS_CERT", "/nonexistent/cert.pem"],
        ),
        (
            vec!["--api-keys-file", "/nonexistent/keys"],
            1,
            vec!["--api-keys-file", "/nonexistent/keys", "keys create"],
        ),
        (
            vec!["--listen", &taken],
            1,
            vec!["--listen", "LISTEN_ADDR", &taken, "choose a free address"],
        ),
        (
            vec!["--metrics-listen", &taken],
            1,
            vec![
                "--metrics-listen",
                "METRICS_LISTEN",
                &taken,
                "choose a free address",
            ],
        ),
        (
            vec!["--metrics-listen", "localhost"],
            2,
            vec!["--metrics-listen", "localhost"],
        ),
        (
            vec!["--database-url", "mariadb:/127.0.0.1/db"],
            1,
            vec![
                "--database-url",
                "DATABASE_URL",
                "mariadb:/127.0.0.1/db",
                "mysql://",
            ],
        ),
        (
            vec!["--database-url", "http://runner:s3cret@127.0.0.1/db"],
            1,
            vec!["--database-url", "http://runner:***@127.0.0.1/db"],
        ),
        (
            vec!["--redis-url", "127.0.0.1:6379"],
            1,
            vec!["--redis-url", "REDIS_URL", "127.0.0.1:6379", "redis://"],
        ),
        (
            vec![
                "--workers",
                "1",
                "--ansible-playbook",
                "/nonexistent/ansible-playbook",
            ],
            1,
            vec![
                "--ansible-playbook",
                "ANSIBLE_PLAYBOOK",
                "/nonexistent/ansible-playbook",
                "ansible-core",
            ],
        ),
    ];
    let url = &history.settings.database_url;
    let out: Vec<Output> = tokio::task::block_in_place(|| {
        cases
            .iter()
            .map(|(args, ..)| serve_fails(url, args))
            .collect()
    });
    for (out, (args, code, words)) in out.iter().zip(cases) {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "{args:?}: no {word:?} in {stderr}");
        }
        assert!(!stderr.contains("internal error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "no password shown: {stderr}");
        assert!(
            !stderr.contains("serving"),
            "nothing announced before the check: {stderr}"
        );
        assert!(!stderr.contains('\x1b'), "no colour in a pipe: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_plain_values() {
    use common::process::ServiceProcess;
    let history = History::new(Backend::Embedded).await;
    let history_url = history.settings.database_url.clone();
    let process = ServiceProcess::serve(&history.settings, &[("LOG_FORMAT", "json")]).await;
    let mut client = connect(process.addr.unwrap()).await;
    submit(&mut client, request("hello.yml")).await;
    let log = eventually(Duration::from_secs(30), "the RPC's log line", || {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        async move { log.contains("SubmitJob").then_some(log) }
    })
    .await;
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "serving")
        .expect("a serving line");
    let history = lines
        .iter()
        .find_map(|l| l["fields"]["history"].as_str())
        .expect("the history it uses is logged");
    assert_eq!(history, history_url);
    let addr = serving["fields"]["addr"].as_str().unwrap();
    assert!(addr.parse::<std::net::SocketAddr>().is_ok(), "{addr}");
    let rpc = lines
        .iter()
        .find(|l| l["fields"]["method"] == "/ansible_runner.v1.JobService/SubmitJob")
        .expect("the RPC line");
    let latency = rpc["fields"]["latency_ms"].as_f64().unwrap();
    let printed = rpc["fields"]["latency_ms"].to_string();
    assert!(
        printed.split('.').nth(1).is_none_or(|d| d.len() <= 3),
        "latency in whole microseconds: {printed}"
    );
    assert!(latency >= 0.0);
    assert!(!log.contains('\x1b'), "no colour in a log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_run_cancels_the_job_and_shows_its_end() {
    use std::io::BufRead;
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let addr = server.addr.to_string();
    let mut child = binary()
        .args(["run", "--server", &addr, "slow.yml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (job_id, rest) = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stderr).lines();
        let first = lines.next().unwrap().unwrap();
        (first.strip_prefix("job ").unwrap().to_owned(), lines)
    })
    .await
    .unwrap();
    let mut client = server.client.clone();
    eventually(Duration::from_secs(60), "the job to run", || {
        let mut client = client.clone();
        let id = job_id.clone();
        async move {
            (status(&get(&mut client, &id).await) == ansible_runner_service::pb::JobStatus::Running)
                .then_some(())
        }
    })
    .await;
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (code, said) = tokio::task::spawn_blocking(move || {
        let said: Vec<String> = rest.map_while(Result::ok).collect();
        (child.wait().unwrap().code(), said.join("\n"))
    })
    .await
    .unwrap();
    assert_eq!(
        code,
        Some(4),
        "canceled, like ansible-playbook's exit codes: {said}"
    );
    assert!(said.contains(&format!("canceling job {job_id}")), "{said}");
    assert!(said.contains("CANCELED"), "the job's end is shown: {said}");
    let job = get(&mut client, &job_id).await;
    assert_eq!(
        status(&job),
        ansible_runner_service::pb::JobStatus::Canceled
    );
    server.stop().await;
}

/// The lines a child process writes to stderr, as they come.
struct StderrLines {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl StderrLines {
    fn of(child: &mut std::process::Child) -> StderrLines {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        StderrLines {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that contains `words`, waiting up to `limit`.
    async fn wait_for(&mut self, words: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(words) {
                        return line;
                    }
                }
                other => panic!(
                    "no line with {words:?} ({}): {}",
                    if other.is_ok() {
                        "it ended"
                    } else {
                        "timed out"
                    },
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Everything it wrote, once it closed stderr.
    async fn all(mut self) -> String {
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// Waits up to `limit` for the child to exit; its exit code.
async fn exit_code_within(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigint(child: &std::process::Child) {
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// A second Ctrl-C while the cancel waits for the run to stop (its task
/// ignores SIGTERM, so it gets the whole kill grace) leaves the job to the
/// server: exit 130, saying the job and how to follow or cancel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_while_the_cancel_is_pending_detaches() {
    use ansible_runner_service::pb::JobStatus;
    let mut history = History::new(Backend::Embedded).await;
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    history.settings.kill_grace = Duration::from_secs(15);
    let server = TestServer::start(&history.settings).await;
    let mut child = binary()
        .args(["run", "--server", &server.addr.to_string(), "stubborn.yml"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = StderrLines::of(&mut child);
    let first = stderr.wait_for("job ", Duration::from_secs(30)).await;
    let job_id = first.strip_prefix("job ").unwrap().to_owned();
    // The task's shell runs, ignoring SIGTERM.
    eventually(Duration::from_secs(60), "the stubborn task to run", || {
        let running = job_processes(&job_id)
            .into_iter()
            .any(|pid| command_line(pid).contains("sleep 300"));
        async move { running.then_some(()) }
    })
    .await;

    sigint(&child);
    stderr
        .wait_for(&format!("canceling job {job_id}"), Duration::from_secs(10))
        .await;
    let store = history.store().await;
    eventually(
        Duration::from_secs(10),
        "the cancel request to be recorded",
        || {
            use ansible_runner_service::store::entities::jobs;
            use sea_orm::EntityTrait;
            let store = store.clone();
            let id = job_id.clone();
            async move {
                let row = jobs::Entity::find_by_id(id)
                    .one(store.connection())
                    .await
                    .unwrap()?;
                row.cancel_requested.then_some(())
            }
        },
    )
    .await;

    sigint(&child);
    let code = exit_code_within(&mut child, Duration::from_secs(10)).await;
    let said = stderr.all().await;
    assert_eq!(code, Some(130), "128 + SIGINT: {said}");
    assert!(
        said.contains(&format!("stopped following job {job_id}")),
        "{said}"
    );
    assert!(
        said.contains(&format!("ansible-runner-service watch {job_id}"))
            && said.contains(&format!("ansible-runner-service cancel {job_id}")),
        "how to follow or cancel it: {said}"
    );
    let mut client = server.client.clone();
    assert_eq!(
        status(&get(&mut client, &job_id).await),
        JobStatus::Running,
        "the client left while the cancel was still pending"
    );
    // The server carries the cancel through without the client.
    let done = wait_terminal(&mut client, &job_id).await;
    assert_eq!(status(&done), JobStatus::Canceled);
    no_process_left(&job_id).await;
    server.stop().await;
}

/// What the binary wrote to a pseudo-terminal, run with `args` and `env`.
/// Python's pty (Python is there wherever Ansible is) stands in for a
/// person's terminal.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))",
            env!("CARGO_BIN_EXE_ansible-runner-service"),
        ])
        .args(args)
        .env_remove("ARS_TOKEN")
        .env_remove("ARS_SERVER")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("python3 on PATH");
    (out.status.code(), text(&out.stdout))
}

/// Colour (the client's tables, the server's log levels) only on a terminal,
/// never under NO_COLOR, never into a pipe; `--color always` still colours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_only_on_a_terminal_and_never_under_no_color() {
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let job = submit(&mut client, request("hello.yml")).await;
    wait_terminal(&mut client, &job.job_id).await;
    let addr = server.addr.to_string();
    let list = ["list", "--server", &addr];
    let green = "\x1b[32mSUCCESSFUL\x1b[0m";

    let (code, terminal) = on_a_terminal(&list, &[]);
    assert_eq!(code, Some(0), "{terminal}");
    assert!(
        terminal.contains(green),
        "coloured on a terminal: {terminal:?}"
    );
    let (_, empty_no_color) = on_a_terminal(&list, &[("NO_COLOR", "")]);
    assert!(
        empty_no_color.contains(green),
        "an empty NO_COLOR does not count: {empty_no_color:?}"
    );
    let (code, no_color) = on_a_terminal(&list, &[("NO_COLOR", "1")]);
    assert_eq!(code, Some(0), "{no_color}");
    assert!(
        no_color.contains(&job.job_id) && !no_color.contains('\x1b'),
        "NO_COLOR: {no_color:?}"
    );
    let piped = cli(&addr, &["list"]);
    assert!(text(&piped.stdout).contains(&job.job_id));
    assert!(!text(&piped.stdout).contains('\x1b'), "no colour in a pipe");
    let always = cli(&addr, &["list", "--color", "always"]);
    assert!(
        text(&always.stdout).contains(green),
        "--color always colours a pipe too"
    );

    // The server's log: a warning and an error, at once.
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}/h.db", dir.path().display());
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "0",
        "--playbooks-dir",
        "/nonexistent/playbooks",
        "--database-url",
        &database_url,
    ];
    let (code, terminal) = on_a_terminal(&serve, &[]);
    assert_eq!(code, Some(1), "{terminal}");
    assert!(
        terminal.contains("WARN") && terminal.contains("\x1b[33m"),
        "levels coloured on a terminal: {terminal:?}"
    );
    let (_, no_color) = on_a_terminal(&serve, &[("NO_COLOR", "1")]);
    assert!(
        no_color.contains("WARN") && !no_color.contains('\x1b'),
        "NO_COLOR: {no_color:?}"
    );
    let piped = binary().args(serve).output().unwrap();
    let piped = text(&piped.stderr);
    assert!(
        piped.contains("WARN") && !piped.contains('\x1b'),
        "no colour in a pipe: {piped:?}"
    );
    server.stop().await;
}

/// `list --submitted-by NAME` shows only that client's jobs, to any client
/// that may read them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_submitted_by_shows_only_that_clients_jobs() {
    use ansible_runner_service::domain::Scopes;
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    let dir = tempfile::tempdir().unwrap();
    let (deploy_key, deploy) =
        ansible_runner_service::grpc::auth::new_key("deploy-bot", Scopes::full()).unwrap();
    let (ci_key, ci) = ansible_runner_service::grpc::auth::new_key("ci", Scopes::full()).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{}\n{}\n", deploy.line(), ci.line())).unwrap();
    history.settings.api_keys_file = Some(keys);
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut deploys = Vec::new();
    for _ in 0..2 {
        deploys.push(
            submit_as(&mut client, request("hello.yml"), &deploy_key)
                .await
                .job_id,
        );
    }
    let by_ci = submit_as(&mut client, request("hello.yml"), &ci_key)
        .await
        .job_id;

    let addr = server.addr.to_string();
    let (filtered, everything, table) = tokio::task::spawn_blocking({
        let ci_key = ci_key.clone();
        move || {
            let as_ci = |args: &[&str]| {
                let mut args = args.to_vec();
                args.extend(["--token", &ci_key]);
                cli(&addr, &args)
            };
            (
                as_ci(&["list", "--submitted-by", "deploy-bot", "--json"]),
                as_ci(&["list", "--json"]),
                as_ci(&["list", "--submitted-by", "ci"]),
            )
        }
    })
    .await
    .unwrap();
    let ids = |out: &Output| -> Vec<String> {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut ids: Vec<String> = jobs
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    deploys.sort();
    assert_eq!(ids(&filtered), deploys, "deploy-bot's jobs only");
    assert_eq!(ids(&everything).len(), 3, "the filter is what narrows it");
    let table = text(&table.stdout);
    assert!(table.contains(&by_ci), "{table}");
    assert!(deploys.iter().all(|id| !table.contains(id)), "{table}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_json_and_inputs_are_complete() {
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let vars_file = dir.path().join("vars.yml");
    std::fs::write(&vars_file, "who: from-file\ncount: 3\n").unwrap();
    let at_file = format!("@{}", vars_file.display());
    let outputs = tokio::task::spawn_blocking(move || {
        let run = cli(
            &addr,
            &[
                "run",
                "hello.yml",
                "-e",
                &at_file,
                "-e",
                r#"{"who": "json", "n": [1]}"#,
                "-e",
                "who=Ada",
                "--secret",
                "token=hunter22",
                "--limit",
                "localhost",
            ],
        );
        let list = cli(&addr, &["list", "--json"]);
        let playbooks = cli(&addr, &["playbooks", "--json"]);
        let bad_status = cli(&addr, &["list", "--status", "done"]);
        let missing = cli(&addr, &["run", "nope.yml"]);
        (run, list, playbooks, bad_status, missing)
    })
    .await
    .unwrap();
    let (run, list, playbooks, bad_status, missing) = outputs;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("Hello, Ada!"), "later -e wins");
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    let job_id = listed[0]["job_id"].as_str().unwrap().to_owned();
    let created = listed[0]["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "RFC 3339: {created}"
    );
    let get = tokio::task::spawn_blocking({
        let addr = server.addr.to_string();
        move || cli(&addr, &["get", &job_id, "--json"])
    })
    .await
    .unwrap();
    let job: Value = serde_json::from_slice(&get.stdout).unwrap();
    assert_eq!(job["extra_vars"]["who"], "Ada");
    assert_eq!(job["extra_vars"]["count"], 3);
    assert_eq!(job["extra_vars"]["n"], serde_json::json!([1]));
    assert_eq!(job["has_secret_extra_vars"], true);
    assert!(
        !text(&get.stdout).contains("hunter22"),
        "secrets never shown"
    );
    assert_eq!(job["options"]["limit"], "localhost");
    assert!(job["stdout"].as_str().unwrap().contains("Hello, Ada!"));
    let names: Value = serde_json::from_slice(&playbooks.stdout).unwrap();
    assert!(names
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "hello.yml"));
    assert_eq!(bad_status.status.code(), Some(1));
    assert!(text(&bad_status.stderr).contains("pending, running, successful"));
    assert!(text(&missing.stderr).contains("playbooks` lists the catalogue"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_names_the_flag() {
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (_, client) = ansible_runner_service::grpc::auth::new_key(
        "someone",
        ansible_runner_service::domain::Scopes::full(),
    )
    .unwrap();
    std::fs::write(&keys, client.line()).unwrap();
    history.settings.api_keys_file = Some(keys);
    let server = TestServer::start(&history.settings).await;
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || cli(&addr, &["playbooks"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--token or ARS_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    server.stop().await;
}

#[test]
fn listen_takes_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = binary()
        .args(["serve", "--listen", "localhost:0", "--workers", "0"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/h.db", dir.path().display()),
        )
        .env("PLAYBOOKS_DIR", repo_path("playbooks"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let serving = {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("serving") || l.contains("error"))
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = serving.unwrap_or_default();
    assert!(
        line.contains("serving") && line.contains("127.0.0.1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_processes_without_redis_are_warned_about() {
    use common::process::ServiceProcess;
    let mut history = History::new(Backend::Embedded).await;
    history.settings.workers = 0;
    let api = ServiceProcess::serve(&history.settings, &[]).await;
    let worker = ServiceProcess::worker(&history.settings);
    for (process, words) in [(&api, "without workers"), (&worker, "separate worker")] {
        let log = eventually(Duration::from_secs(30), "the warning", || {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            async move { log.contains("REDIS_URL").then_some(log) }
        })
        .await;
        assert!(log.contains("WARN") && log.contains(words), "{log}");
    }
}

/// Every command's help: only the flags that apply to it, each with a line
/// of help.
#[test]
fn each_command_shows_only_its_own_flags_each_explained() {
    let help = |command: &[&str]| {
        let out = binary().args(command).arg("--help").output().unwrap();
        assert!(out.status.success(), "{command:?} --help");
        text(&out.stdout)
    };
    let client_flags = ["--server", "--token", "--color"];
    let submit_limits = [
        "--max-forks",
        "--max-hosts",
        "--allow-ansible-vars",
        "--max-pending-per-client",
    ];
    let commands: &[&[&str]] = &[
        &["serve"],
        &["worker"],
        &["migrate"],
        &["prune"],
        &["health"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["run"],
        &["get"],
        &["list"],
        &["watch"],
        &["cancel"],
        &["playbooks"],
    ];
    for command in commands {
        let text = help(command);
        let server_side = !matches!(
            command[0],
            "run" | "get" | "list" | "watch" | "cancel" | "playbooks"
        );
        for flag in client_flags {
            assert_eq!(
                text.contains(flag),
                !server_side,
                "{command:?} --help and {flag}:\n{text}"
            );
        }
        for flag in submit_limits {
            assert_eq!(
                text.contains(flag),
                command == &["serve"],
                "{command:?} --help and {flag}:\n{text}"
            );
        }
        assert_eq!(
            text.contains("--log-format"),
            matches!(command[0], "serve" | "worker" | "migrate" | "prune"),
            "{command:?} --help and --log-format:\n{text}"
        );
        // Each option and argument says what it is for.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let item = line.trim_start();
            let is_item =
                line.starts_with("  ") && (item.starts_with('-') || item.starts_with('<'));
            if !is_item {
                continue;
            }
            let explained = item.split("  ").filter(|s| !s.trim().is_empty()).count() > 1
                || lines
                    .get(i + 1)
                    .is_some_and(|next| next.starts_with("          "));
            assert!(explained, "{command:?}: no help for {item:?}:\n{text}");
        }
    }
}

/// Only serve, worker and migrate create or migrate a history; prune works
/// on one that is there, and says so when it is not.
#[test]
fn prune_never_creates_a_history() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").join("history.db");
    let url = format!("sqlite://{}", missing.display());
    let out = binary()
        .args(["prune", "--older-than", "1d", "--dry-run"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("`migrate` or `serve` creates one"),
        "{stderr}"
    );
    assert!(!missing.parent().unwrap().exists(), "nothing was created");

    // migrate creates it, and says where; then prune works on it.
    let migrated = binary()
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(text(&migrated.stderr).contains("creating a new history"));
    let pruned = binary()
        .args(["prune", "--older-than", "1d", "--dry-run"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(pruned.status.success(), "{}", text(&pruned.stderr));
    assert_eq!(
        text(&pruned.stdout).trim(),
        "would remove 0 jobs and 0 events"
    );
}
