//! The command-line client against the real server: output, exit codes,
//! tables and JSON, and a watch that survives a server restart.

mod common;

use std::time::Duration;

use common::process::ServiceProcess;
use common::*;
use tokio::io::AsyncBufReadExt;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_like_ansible_playbook_and_exits_with_the_result() {
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let addr = server.addr.to_string();
    let (ok, failed, colored, listed, json, playbooks) = tokio::task::spawn_blocking(move || {
        (
            cli(&addr, &["run", "hello.yml", "-e", "who=CLI"]),
            cli(&addr, &["run", "fail.yml"]),
            cli(&addr, &["run", "--color", "always", "hello.yml"]),
            cli(&addr, &["list"]),
            cli(&addr, &["list", "--json", "--status", "failed"]),
            cli(&addr, &["playbooks"]),
        )
    })
    .await
    .unwrap();

    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let stdout = text(&ok.stdout);
    for expected in [
        "PLAY [Say hello]",
        "TASK [Print greeting]",
        "Hello, CLI!",
        "PLAY RECAP",
        "ok=1",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    assert!(text(&ok.stderr).contains("SUCCESSFUL"));
    assert_eq!(
        failed.status.code(),
        Some(2),
        "a failed job exits 2, like ansible-playbook"
    );
    assert!(text(&failed.stdout).contains("fatal: [localhost]"));
    assert!(
        text(&colored.stdout).contains("\x1b[32mok: [localhost]"),
        "ok lines are green"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colour when not asked and not a terminal"
    );

    let table = text(&listed.stdout);
    assert!(table.starts_with("JOB ID"), "{table}");
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three jobs:\n{table}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("list --json is JSON");
    let failed_jobs = json.as_array().unwrap();
    assert_eq!(failed_jobs.len(), 1);
    assert_eq!(failed_jobs[0]["status"], "FAILED");
    assert_eq!(failed_jobs[0]["rc"], 2);
    assert!(text(&playbooks.stdout).contains("hello.yml  Say hello"));

    let id = failed_jobs[0]["job_id"].as_str().unwrap().to_owned();
    let addr = server.addr.to_string();
    let (got, cancel) = tokio::task::spawn_blocking(move || {
        (cli(&addr, &["get", &id]), cli(&addr, &["cancel", &id]))
    })
    .await
    .unwrap();
    assert!(text(&got.stdout).contains("status:    FAILED"));
    assert_eq!(
        cancel.status.code(),
        Some(1),
        "a finished job cannot be canceled"
    );
    assert!(text(&cancel.stderr).contains("FailedPrecondition"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_the_server_restarts() {
    let mut history = History::new(Backend::Shared).await;
    history.settings.workers = 1;
    let mut api_settings = history.settings.clone();
    api_settings.workers = 0;
    let mut api = ServiceProcess::serve(&api_settings, &[]).await;
    let addr = api.addr.unwrap();
    let _worker = ServiceProcess::worker(&history.settings);
    let mut client = connect(addr).await;
    let mut req = request("slow.yml");
    req.extra_vars = vars(serde_json::json!({"steps": 6, "step_seconds": 0.5}));
    let job = submit(&mut client, req).await;

    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"))
        .args(["watch", &job.job_id])
        .env("ARS_SERVER", addr.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Wait for the task to start, then take the server away and bring it back.
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        let started = line.starts_with("TASK [Run");
        seen.push(line);
        if started {
            break;
        }
    }
    api.kill9();
    let _api = ServiceProcess::serve_on(&api_settings, addr, &[]).await;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(line);
    }
    let status = watch.wait().await.unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("connection lost; resuming after event"),
        "{stderr}"
    );
    let output = seen.join("\n");
    assert_eq!(
        output.matches("TASK [Run").count(),
        1,
        "nothing printed twice:\n{output}"
    );
    assert_eq!(output.matches("PLAY RECAP").count(), 1, "{output}");
    assert_eq!(
        output.matches("(item=Step").count(),
        6,
        "every step, once:\n{output}"
    );
}
