//! Section (h): a fleet over SSH. One playbook of 5 tasks over 50 hosts (the
//! tests' sshd processes on loopback, tests/common/sshd.rs), `forks` 25, on
//! one service (warm executor) reaching them with a named SSH credential;
//! next to ansible-playbook run directly with the same inventory, key, user,
//! host key checking and a fresh ssh control folder per run, as the service
//! gives each run. The runs alternate service / direct (which goes first
//! alternates from pair to pair), after one warm-up run of each.
//!
//! While the service runs, a watcher receives every event: how many per
//! second reached it, how long each took from the callback plugin's
//! timestamp to the watcher, and the CPU time of this process (the service
//! with its API, worker, live state and history writes, and the watcher;
//! not Ansible's processes) per event: all of it, and what is left after
//! taking off what the idle service spends over as long (measured for
//! `IDLE_SECONDS` between the warm-up and the measured runs).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ansible_runner_service::credentials::MasterKey;
use ansible_runner_service::domain::credential::{
    CredentialInfo, CredentialKind, CredentialSecret,
};
use ansible_runner_service::pb::{self, watch_job_response::Kind};
use ansible_runner_service::store::SealedCredential;
use serde_json::{json, Map, Value};

use crate::harness::{
    median, now_us, progress, submit_request, summary, summary_ms, Bench, Service,
};
use crate::sshd::SshFleet;

/// Hosts, and the forks that run them.
pub const HOSTS: usize = 50;
pub const FORKS: u32 = 25;
/// The service's median may exceed direct's by this much (issue 14).
pub const TARGET_RATIO: f64 = 1.10;
const CREDENTIAL: &str = "bench-fleet";
/// Seconds the idle service's CPU time is measured over.
const IDLE_SECONDS: u64 = 10;

/// Five tasks, four of them over SSH on every host.
const PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - ping:
    - command: echo "on {{ inventory_hostname }}"
      changed_when: false
    - stat:
        path: /etc/hostname
    - command: uname -r
      changed_when: false
    - debug:
        msg: "{{ inventory_hostname }} done"
"#;

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The hosts as inventory: addresses and ports only.
fn hosts(fleet: &SshFleet) -> Map<String, Value> {
    fleet
        .hosts
        .iter()
        .map(|h| {
            (
                h.name.clone(),
                json!({"ansible_host": h.address, "ansible_port": h.port}),
            )
        })
        .collect()
}

/// One service run as a watcher saw it.
struct Watched {
    seconds: f64,
    ok: bool,
    events: usize,
    /// From the first event's arrival to the last's.
    event_span_seconds: f64,
    /// Per event, from its timestamp (the callback plugin's) to its arrival.
    delays_ms: Vec<f64>,
    cpu_seconds: f64,
}

async fn run_on_service(service: &Service, request: &pb::SubmitJobRequest) -> Watched {
    let mut client = service.client.clone();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let job_id = submit_request(&client, request).await;
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id,
            after_sequence: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let (mut events, mut delays_ms, mut ok) = (0, Vec::new(), false);
    let (mut first, mut last) = (None, None);
    while let Some(message) = stream.message().await.expect("stream") {
        match message.kind {
            Some(Kind::Event(event)) => {
                let arrived = now_us();
                events += 1;
                first.get_or_insert(arrived);
                last = Some(arrived);
                if let Some(time) = event.time {
                    let emitted = time.seconds * 1_000_000 + i64::from(time.nanos) / 1_000;
                    delays_ms.push((arrived - emitted) as f64 / 1e3);
                }
            }
            Some(Kind::StatusChange(job)) => {
                ok = job.status == pb::JobStatus::Successful as i32;
                if !ok {
                    eprintln!("bench: (h) a fleet job did not succeed: {job:?}");
                }
                break;
            }
            _ => {}
        }
    }
    Watched {
        seconds: started.elapsed().as_secs_f64(),
        ok,
        events,
        event_span_seconds: first.zip(last).map_or(0.0, |(f, l)| (l - f) as f64 / 1e6),
        delays_ms,
        cpu_seconds: cpu_seconds() - cpu,
    }
}

/// ansible-playbook as the service runs it, minus the service.
struct Direct {
    dir: PathBuf,
    inventory: PathBuf,
    playbook: PathBuf,
    key: PathBuf,
    user: String,
    known_hosts: PathBuf,
}

impl Direct {
    /// One run with a control folder of its own (ended with it, as the
    /// service ends a run's ssh masters); its seconds and whether it passed.
    async fn run(&self, n: usize) -> (f64, bool) {
        let control = self.dir.join(format!("cp-{n}"));
        std::fs::create_dir_all(&control).expect("control folder");
        let started = Instant::now();
        let output = tokio::process::Command::new("ansible-playbook")
            .arg("-i")
            .arg(&self.inventory)
            .args(["--forks", &FORKS.to_string()])
            .arg("--private-key")
            .arg(&self.key)
            .args(["--user", &self.user])
            .arg(format!(
                "--ssh-common-args=-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                self.known_hosts.display()
            ))
            .arg("--")
            .arg(&self.playbook)
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &control)
            .output()
            .await
            .expect("ansible-playbook");
        let seconds = started.elapsed().as_secs_f64();
        ansible_runner_service::worker::end_ssh_masters(&control).await;
        if !output.status.success() {
            eprintln!(
                "bench: (h) ansible-playbook direct failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        (seconds, output.status.success())
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// (h) the fleet on the service and direct.
pub async fn section_h(bench: &mut Bench) -> Value {
    let runs = bench.args.fleet_runs;
    progress(&format!("(h) starting {HOSTS} sshd hosts on loopback"));
    let fleet = SshFleet::start(HOSTS);
    let dir = tempfile::tempdir().expect("temp dir");
    let books = dir.path().join("playbooks");
    std::fs::create_dir_all(&books).expect("playbooks folder");
    write(&books.join("fleet5.yml"), PLAYBOOK);
    let inventory = json!({"all": {"hosts": hosts(&fleet)}});
    let inventory_file = dir.path().join("inventory.json");
    write(&inventory_file, &inventory.to_string());
    let key_file = dir.path().join("master.key");
    write(&key_file, &MasterKey::generate().expect("a master key"));

    let mut settings = bench.settings("h").await;
    settings.playbooks_dir = books.clone();
    settings.credentials_key_file = Some(key_file.clone());
    let service = Service::start(&settings).await;
    let master = MasterKey::load(Some(&key_file))
        .expect("the master key")
        .expect("a key file gives a key");
    let secret = CredentialSecret {
        ssh_key: Some(std::fs::read_to_string(&fleet.client_key).expect("the client key")),
        known_hosts: Some(std::fs::read_to_string(&fleet.known_hosts).expect("known hosts")),
        ..Default::default()
    };
    let (nonce, sealed) = master
        .seal(CREDENTIAL, CredentialKind::Ssh, &secret)
        .expect("seal");
    service
        .state
        .store
        .put_credential(&SealedCredential {
            info: CredentialInfo {
                name: CREDENTIAL.into(),
                kind: CredentialKind::Ssh,
                username: Some(fleet.user.clone()),
                fingerprint: "bench".into(),
                created_at: chrono::Utc::now(),
            },
            nonce,
            sealed,
        })
        .await
        .expect("store the credential");
    let Value::Object(inline) = inventory else {
        unreachable!()
    };
    let request = pb::SubmitJobRequest {
        playbook: "fleet5.yml".into(),
        inventory: Some(pb::Inventory {
            source: Some(pb::inventory::Source::Inline(
                ansible_runner_service::grpc::convert::json_to_struct(&inline),
            )),
        }),
        options: Some(pb::JobOptions {
            forks: FORKS,
            ..Default::default()
        }),
        credentials: vec![CREDENTIAL.into()],
        ..Default::default()
    };
    let direct = Direct {
        dir: dir.path().to_owned(),
        inventory: inventory_file,
        playbook: books.join("fleet5.yml"),
        key: fleet.client_key.clone(),
        user: fleet.user.clone(),
        known_hosts: fleet.known_hosts.clone(),
    };

    progress(&format!(
        "(h) {runs} runs on the service and {runs} direct, {HOSTS} hosts, forks {FORKS}"
    ));
    let mut failed = 0;
    let warm_up = run_on_service(&service, &request).await;
    let (_, direct_ok) = direct.run(0).await;
    failed += usize::from(!warm_up.ok) + usize::from(!direct_ok);
    // What the idle service spends (sweeps, polls), to tell the events' cost
    // from the time a run lasts.
    let idle_from = (cpu_seconds(), Instant::now());
    tokio::time::sleep(std::time::Duration::from_secs(IDLE_SECONDS)).await;
    let idle_cpu_per_second = (cpu_seconds() - idle_from.0) / idle_from.1.elapsed().as_secs_f64();
    let (mut service_samples, mut direct_samples) = (Vec::new(), Vec::new());
    let mut watched = Vec::new();
    for i in 0..runs {
        for service_turn in [i % 2 == 0, i % 2 == 1] {
            if service_turn {
                let run = run_on_service(&service, &request).await;
                failed += usize::from(!run.ok);
                service_samples.push(run.seconds);
                watched.push(run);
            } else {
                let (seconds, ok) = direct.run(i + 1).await;
                failed += usize::from(!ok);
                direct_samples.push(seconds);
            }
        }
    }
    service.stop().await;
    drop(fleet);

    let service_median = median(&service_samples);
    let direct_median = median(&direct_samples);
    let ratio = service_median / direct_median;
    let events: usize = watched.iter().map(|w| w.events).sum();
    let rates: Vec<f64> = watched
        .iter()
        .filter(|w| w.event_span_seconds > 0.0)
        .map(|w| w.events as f64 / w.event_span_seconds)
        .collect();
    let cpu: f64 = watched.iter().map(|w| w.cpu_seconds).sum();
    let idle: f64 = watched
        .iter()
        .map(|w| w.seconds * idle_cpu_per_second)
        .sum();
    let delays: Vec<f64> = watched.iter().flat_map(|w| w.delays_ms.clone()).collect();
    json!({
        "hosts": HOSTS,
        "forks": FORKS,
        "tasks": 5,
        "runs": runs,
        "service": summary(service_samples),
        "ansible_playbook_direct": summary(direct_samples),
        "ratio_of_medians": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio <= TARGET_RATIO,
        "events_per_run": events as f64 / watched.len().max(1) as f64,
        "events_per_second_median": median(&rates),
        "delivery_from_event_time": summary_ms(delays),
        "service_cpu_ms_per_event": cpu * 1e3 / events.max(1) as f64,
        "service_idle_cpu_ms_per_second": idle_cpu_per_second * 1e3,
        "service_cpu_ms_per_event_above_idle": (cpu - idle) * 1e3 / events.max(1) as f64,
        "service_cpu_seconds_per_run": cpu / watched.len().max(1) as f64,
        "failed": failed,
    })
}
