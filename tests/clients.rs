//! A client in another language: the Python example, generated from proto/,
//! runs a playbook against the real server and prints its events.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_a_playbook_and_prints_its_events() {
    let history = History::new(Backend::Embedded).await;
    let server = TestServer::start(&history.settings).await;
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(repo_path("examples/python/run_playbook.py"))
            .args(["--server", &addr, "hello.yml", "-e", "who=Python"])
            .output()
            .expect("python3 with grpcio and grpcio-tools (pip install -r examples/python/requirements.txt)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("playbook_on_start"), "{stdout}");
    assert!(
        stdout.contains("runner_on_ok [localhost] Print greeting"),
        "{stdout}"
    );
    assert!(stdout.contains("Hello, Python!"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("JOB_STATUS_SUCCESSFUL"),
        "{stdout}"
    );
    server.stop().await;
}
