//! Playbooks over SSH to many hosts: real `sshd` processes on loopback
//! addresses (tests/common/sshd.rs), each with its own host key, and one
//! address where nothing listens. Each host's events stream as they happen;
//! an unreachable host is `runner_on_unreachable` and counted in the stats,
//! and the job ends FAILED with rc 4, as ansible-playbook does.

mod common;

use ansible_runner_service::pb;
use common::sshd::{free_port_on, SshFleet, FLEET_PLAYBOOK};
use common::*;
use serde_json::{json, Map, Value};

// The history and the live state are the other tests' concern: one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_over_ssh_hosts_streams_each_host_and_counts_the_unreachable() {
    let backend = Backend::Shared;
    let fleet = SshFleet::start(6);
    let history = History::new(backend).await;
    let mut settings = history.settings.clone();
    // The connection settings come from the inventory here, which only a
    // trusted caller may set (ALLOW_ANSIBLE_VARS); tests/credentials.rs
    // reaches hosts with named credentials instead.
    settings.limits.allow_ansible_vars = true;
    let playbooks = tempfile::tempdir().unwrap();
    std::fs::write(playbooks.path().join("fleet.yml"), FLEET_PLAYBOOK).unwrap();
    settings.playbooks_dir = playbooks.path().to_owned();
    let server = TestServer::start(&settings).await;
    let mut client = server.client.clone();

    let mut hosts = Map::new();
    for host in &fleet.hosts {
        hosts.insert(
            host.name.clone(),
            json!({"ansible_host": host.address, "ansible_port": host.port}),
        );
    }
    let dead_port = free_port_on("127.0.0.99");
    hosts.insert(
        "dead".into(),
        json!({"ansible_host": "127.0.0.99", "ansible_port": dead_port}),
    );
    let inventory = json!({"all": {
        "hosts": hosts,
        "vars": {
            "ansible_user": fleet.user,
            "ansible_ssh_private_key_file": fleet.client_key.display().to_string(),
            "ansible_ssh_common_args": format!(
                "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ConnectTimeout=10",
                fleet.known_hosts.display()
            ),
            "ansible_python_interpreter": "/usr/bin/python3",
            // Ansible's own ssh arguments would keep connections open
            // (ControlPersist, ended with the run); here each task opens its
            // own, a setting an inventory may choose.
            "ansible_ssh_args": "-o ControlMaster=no",
            "ansible_pipelining": true,
        },
    }});
    let Value::Object(inventory) = inventory else {
        unreachable!()
    };
    let mut req = request("fleet.yml");
    req.inventory = Some(pb::Inventory {
        source: Some(pb::inventory::Source::Inline(
            ansible_runner_service::grpc::convert::json_to_struct(&inventory),
        )),
    });
    req.options = Some(pb::JobOptions {
        forks: 10,
        ..Default::default()
    });
    let job = submit(&mut client, req).await;
    let messages = watch_all(&mut client, &job.job_id, 0).await;
    let events = events(&messages);
    let done = get(&mut client, &job.job_id).await;

    assert_eq!(status(&done), pb::JobStatus::Failed, "{}", done.error);
    assert_eq!(done.error_reason, "PLAYBOOK_FAILED");
    let result = done.result.as_ref().unwrap();
    assert_eq!(result.rc, 4, "{}", result.stdout);
    for host in &fleet.hosts {
        let stats = &result.stats[&host.name];
        assert_eq!(
            (stats.ok, stats.unreachable, stats.failed),
            (2, 0, 0),
            "{}",
            host.name
        );
        let oks = events
            .iter()
            .filter(|e| e.event == "runner_on_ok" && e.host == host.name)
            .count();
        assert_eq!(oks, 2, "{} runner_on_ok", host.name);
        let said = format!("on {}", host.name);
        assert!(
            events.iter().any(|e| e.host == host.name
                && e.event == "runner_on_ok"
                && format!("{:?}", e.event_data).contains(&said)),
            "no event of {} says {said:?}",
            host.name
        );
    }
    assert_eq!(result.stats["dead"].unreachable, 1);
    assert!(events
        .iter()
        .any(|e| e.event == "runner_on_unreachable" && e.host == "dead"));
    // Streamed in order, without gaps.
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
    server.stop().await;
}
