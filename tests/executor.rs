//! The warm executor against the plain one: same results, and what happens
//! when the warm path cannot be had. (The rest of the suite runs once with
//! each executor: tests/run sets ARS_TEST_EXECUTOR.)

mod common;

use std::time::Duration;

use ansible_runner_service::pb::{self, watch_job_response::Kind};
use ansible_runner_service::worker::ExecutorKind;
use common::process::ServiceProcess;
use common::*;

/// Runs started by this test process, by executor. (nextest runs every test
/// in a process of its own.)
fn runs_started(kind: ExecutorKind) -> u64 {
    ansible_runner_service::metrics::get()
        .runs_started
        .get_or_create(&vec![("executor".to_owned(), kind.as_str().to_owned())])
        .get()
}

/// What a run produced, without what differs between any two runs (times,
/// ids, durations, pids).
#[derive(Debug)]
struct Produced {
    status: pb::JobStatus,
    rc: i32,
    stdout: String,
    stats: Vec<(String, String)>,
    events: Vec<(String, String, String, String, String)>,
}

async fn run_and_record(kind: ExecutorKind, playbook: &str) -> Produced {
    let mut history = History::new(Backend::Embedded).await;
    history.settings.executor = kind;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let mut req = request(playbook);
    req.extra_vars = vars(serde_json::json!({"greeting": "same on both"}));
    // One fork: hosts report in inventory order, so two runs can be compared
    // line by line.
    req.options = Some(pb::JobOptions {
        forks: 1,
        ..Default::default()
    });
    let job = submit(&mut client, req).await;
    let messages = watch_all(&mut client, &job.job_id, 0).await;
    let job = get(&mut client, &job.job_id).await;
    let result = job.result.clone().expect("a result");
    let mut stats: Vec<(String, String)> = result
        .stats
        .iter()
        .map(|(host, s)| (host.clone(), format!("{s:?}")))
        .collect();
    stats.sort();
    let produced = Produced {
        status: status(&job),
        rc: result.rc,
        stdout: result.stdout,
        stats,
        events: events(&messages)
            .into_iter()
            .map(|e| (e.event, e.host, e.task, e.play, e.stdout))
            .collect(),
    };
    server.stop().await;
    produced
}

/// Where two runs' products first differ, readably.
fn first_difference(a: &Produced, b: &Produced) -> Option<String> {
    if (a.status, a.rc, &a.stats) != (b.status, b.rc, &b.stats) {
        return Some(format!(
            "status/rc/stats {:?} vs {:?}",
            (a.status, a.rc, &a.stats),
            (b.status, b.rc, &b.stats)
        ));
    }
    // The same lines; their order across hosts depends on timing (below).
    let lines = |s: &str| {
        let mut lines = s.lines().map(str::to_owned).collect::<Vec<_>>();
        lines.sort();
        lines
    };
    let (la, lb) = (lines(&a.stdout), lines(&b.stdout));
    for i in 0..la.len().max(lb.len()) {
        if la.get(i) != lb.get(i) {
            return Some(format!(
                "stdout line {i}: {:?} vs {:?}",
                la.get(i),
                lb.get(i)
            ));
        }
    }
    // Hosts run in parallel (forks), so how one host's events interleave
    // with another's depends on timing; each host's own events (and the
    // events of no host) come in one order.
    let by_host = |p: &Produced| {
        let mut hosts: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for event in &p.events {
            hosts
                .entry(event.1.clone())
                .or_default()
                .push(event.clone());
        }
        hosts
    };
    let (ha, hb) = (by_host(a), by_host(b));
    for host in ha.keys().chain(hb.keys()) {
        let (ea, eb) = (&ha.get(host), &hb.get(host));
        let (ea, eb) = (
            ea.map(Vec::as_slice).unwrap_or(&[]),
            eb.map(Vec::as_slice).unwrap_or(&[]),
        );
        for i in 0..ea.len().max(eb.len()) {
            if ea.get(i) != eb.get(i) {
                return Some(format!(
                    "host {host:?} event {i}: {:?} vs {:?}",
                    ea.get(i),
                    eb.get(i)
                ));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_runs_produce_what_plain_runs_produce() {
    for playbook in ["multi.yml", "fail.yml"] {
        let warm = run_and_record(ExecutorKind::Warm, playbook).await;
        let plain = run_and_record(ExecutorKind::Plain, playbook).await;
        assert!(!warm.events.is_empty(), "{playbook}: events arrive");
        if let Some(difference) = first_difference(&warm, &plain) {
            panic!("{playbook}: warm and plain runs differ: {difference}");
        }
    }
    assert_eq!(runs_started(ExecutorKind::Warm), 2, "two runs were warm");
    assert_eq!(runs_started(ExecutorKind::Plain), 2, "two runs were plain");
}

/// Waits until the job's playbook runs its first task.
async fn wait_for_first_task(
    client: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    job_id: &str,
) {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_owned(),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("stream open");
        if let Some(Kind::Event(event)) = message.kind {
            if event.event == "playbook_on_task_start" {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_process_that_dies_mid_run_fails_the_run_and_is_replaced() {
    let mut history = History::new(Backend::Embedded).await;
    history.settings.executor = ExecutorKind::Warm;
    history.settings.workers = 1;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();

    let job = submit(&mut client, request("slow.yml")).await;
    wait_for_first_task(&mut client, &job.job_id).await;
    let pgid = run_pgid(&history, &job.job_id).await;
    // The run is a child of the warm process, which carries its program's
    // name; the job id is in the environment of the run's processes.
    let warm = parent_pid(pgid);
    assert!(
        command_line(warm).contains("warm_executor.py"),
        "the run's parent is a warm process: {}",
        command_line(warm)
    );
    assert!(job_processes(&job.job_id).contains(&pgid));

    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(warm, libc::SIGKILL);
    }
    let ended = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&ended), pb::JobStatus::Failed, "{ended:?}");
    assert_eq!(ended.error_reason, "EXECUTOR_ERROR");
    assert!(
        ended.error.contains("warm executor"),
        "the error says what happened: {}",
        ended.error
    );
    no_process_left(&job.job_id).await;

    // The next run gets a new warm process.
    let next = submit(&mut client, request("hello.yml")).await;
    let next = wait_terminal(&mut client, &next.job_id).await;
    assert_eq!(status(&next), pb::JobStatus::Successful, "{next:?}");
    assert_eq!(runs_started(ExecutorKind::Warm), 2);
    assert_eq!(runs_started(ExecutorKind::Plain), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_plain_when_no_warm_process_can_start() {
    let dir = tempfile::tempdir().unwrap();
    // An ansible-playbook whose interpreter cannot import Ansible: the warm
    // process dies at start, saying why; the job still runs, plainly.
    let python = dir.path().join("python-without-ansible");
    std::fs::write(
        &python,
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'ansible'\" >&2\nexit 1\n",
    )
    .unwrap();
    let wrapper = dir.path().join("ansible-playbook");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then\n  echo 'ansible-playbook [core 2.99.0]'\n  echo '  python version = 3.11.7 (main) [GCC] ({})'\n  exit 0\nfi\nexec ansible-playbook \"$@\"\n",
            python.display()
        ),
    )
    .unwrap();
    for file in [&python, &wrapper] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut history = History::new(Backend::Embedded).await;
    history.settings.executor = ExecutorKind::Warm;
    history.settings.ansible_playbook = wrapper;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    for _ in 0..2 {
        let job = submit(&mut client, request("hello.yml")).await;
        let job = wait_terminal(&mut client, &job.job_id).await;
        assert_eq!(status(&job), pb::JobStatus::Successful, "{job:?}");
        assert!(job.result.unwrap().stdout.contains("Hello"));
    }
    assert_eq!(runs_started(ExecutorKind::Warm), 0);
    assert_eq!(runs_started(ExecutorKind::Plain), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_ansible_configuration_reaches_the_next_warm_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ansible.cfg");
    let mut history = History::new(Backend::Embedded).await;
    history.settings.executor = ExecutorKind::Warm;
    history.settings.workers = 1;
    history.settings.playbooks_dir = repo_path("tests/playbooks");
    let config_env = config.display().to_string();
    let service = ServiceProcess::serve(
        &history.settings,
        &[("ANSIBLE_CONFIG", config_env.as_str())],
    )
    .await;
    let mut client = connect(service.addr.unwrap()).await;
    for timeout in [17, 23] {
        std::fs::write(&config, format!("[defaults]\ntimeout = {timeout}\n")).unwrap();
        let job = submit(&mut client, request("config.yml")).await;
        let job = wait_terminal(&mut client, &job.job_id).await;
        assert_eq!(status(&job), pb::JobStatus::Successful, "{job:?}");
        let stdout = job.result.unwrap().stdout;
        assert!(
            stdout.contains(&format!("timeout={timeout}")),
            "the run read the configuration as it is now ({timeout}): {stdout}"
        );
        // The file's new modification time must differ from the last one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(&service.log).unwrap_or_default();
    assert!(
        log.contains("replacing a warm executor process"),
        "the warm process was replaced: {log}"
    );
}
