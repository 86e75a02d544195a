//! Every route by which request data reaches Ansible, attacked: each hostile
//! value would create a marker file on the worker if it ran. Each is refused
//! at submit with the field that carried it, and no marker appears. Values
//! that are only data reach the playbook intact, whatever their characters.

mod common;

use std::path::Path;

use ansible_runner_service::grpc::convert::struct_to_json;
use ansible_runner_service::pb::{self, inventory::Source, Inventory, JobOptions};
use common::*;
use serde_json::{json, Value};
use tonic::Code;

fn inline(doc: Value) -> Option<Inventory> {
    Some(Inventory {
        source: Some(Source::Inline(vars(doc).unwrap())),
    })
}

/// A command that creates `marker`.
fn touch(marker: &Path) -> String {
    format!("touch {}", marker.display())
}

async fn no_route_runs_a_command(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    let dir = tempfile::tempdir().unwrap();
    let marker = |n: usize| dir.path().join(format!("marker-{n}"));
    let local = |extra: Value| {
        let mut vars = json!({"ansible_connection": "local"});
        vars.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        vars
    };
    let attacks: Vec<(&str, pb::SubmitJobRequest, String)> = vec![
        (
            "inventory host var: shell executable",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"localhost": local(json!({
                    "ansible_shell_executable": format!("/bin/sh -c '{}' ; /bin/sh", touch(&marker(1)))
                }))}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.localhost.ansible_shell_executable".into(),
        ),
        (
            "inventory host var: ssh ProxyCommand",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"target": {
                    "ansible_host": "127.0.0.1",
                    "ansible_ssh_common_args": format!("-o ProxyCommand='{}'", touch(&marker(2)))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.target.ansible_ssh_common_args".into(),
        ),
        (
            "group var deep in children: interpreter",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"children": {"web": {"children": {"eu": {
                    "hosts": {"localhost": local(json!({}))},
                    "vars": {"ansible_python_interpreter": format!("/bin/sh -c '{}'", touch(&marker(3)))}
                }}}}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.children.web.children.eu.vars.ansible_python_interpreter".into(),
        ),
        (
            "upper-case ansible var",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"vars": {
                    "ANSIBLE_SSH_EXTRA_ARGS": format!("-oProxyCommand='{}'", touch(&marker(4)))
                }, "hosts": {"target": null}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.vars.ANSIBLE_SSH_EXTRA_ARGS".into(),
        ),
        (
            "ansible_host as an ssh option",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"target": {
                    "ansible_host": format!("-oProxyCommand={}", touch(&marker(5)))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.target.ansible_host".into(),
        ),
        (
            "ansible_user with an option after it",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"target": {
                    "ansible_user": format!("x -oProxyCommand={}", touch(&marker(6)))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.target.ansible_user".into(),
        ),
        (
            "ansible_port with an option after it",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"target": {
                    "ansible_port": format!("22 -oProxyCommand={}", touch(&marker(7)))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.target.ansible_port".into(),
        ),
        (
            "a connection plugin of the caller's choice",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"target": {
                    "ansible_connection": "paramiko_ssh",
                    "ansible_paramiko_proxy_command": touch(&marker(8))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.target.ansible_connection".into(),
        ),
        (
            "inventory host name as an ssh option",
            pb::SubmitJobRequest {
                inventory: Some(Inventory {
                    source: Some(Source::Hosts("-oProxyCommand=touch".into())),
                }),
                ..request("hello.yml")
            },
            "inventory.hosts".into(),
        ),
        (
            "inline host name as an ssh option",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"-oProxyCommand=touch": null}}})),
                ..request("hello.yml")
            },
            r#"inventory.inline.all.hosts["-oProxyCommand=touch"]"#.into(),
        ),
        (
            "extra var",
            pb::SubmitJobRequest {
                extra_vars: vars(json!({
                    "ansible_shell_executable": format!("/bin/sh -c '{}' ; /bin/sh", touch(&marker(9)))
                })),
                ..request("hello.yml")
            },
            "extra_vars".into(),
        ),
        (
            "extra var: the magic inventory_hostname, ssh's host without ansible_host",
            pb::SubmitJobRequest {
                inventory: Some(Inventory {
                    source: Some(Source::Hosts("web1".into())),
                }),
                extra_vars: vars(json!({
                    "inventory_hostname": format!("-oProxyCommand={}", touch(&marker(12)))
                })),
                ..request("hello.yml")
            },
            "extra_vars".into(),
        ),
        (
            "inventory host var: the magic inventory_hostname",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"web1": {
                    "inventory_hostname": format!("-oProxyCommand={}", touch(&marker(13)))
                }}}})),
                ..request("hello.yml")
            },
            "inventory.inline.all.hosts.web1.inventory_hostname".into(),
        ),
        (
            "a port out of range in host:port",
            pb::SubmitJobRequest {
                inventory: inline(json!({"all": {"hosts": {"web1:99999": null}}})),
                ..request("hello.yml")
            },
            r#"inventory.inline.all.hosts["web1:99999"]"#.into(),
        ),
        (
            "a group named plugin (the inventory would be ignored)",
            pb::SubmitJobRequest {
                inventory: inline(json!({"plugin": {"hosts": {"web1": null}}})),
                ..request("hello.yml")
            },
            "inventory.inline.plugin".into(),
        ),
        (
            "secret var",
            pb::SubmitJobRequest {
                secret_extra_vars: vars(json!({
                    "ansible_ssh_common_args": format!("-o ProxyCommand='{}'", touch(&marker(10)))
                })),
                ..request("hello.yml")
            },
            "secret_extra_vars".into(),
        ),
        (
            "limit as a file of hosts",
            pb::SubmitJobRequest {
                options: Some(JobOptions {
                    limit: "@/etc/passwd".into(),
                    ..Default::default()
                }),
                ..request("hello.yml")
            },
            "options.limit".into(),
        ),
        (
            "tag with shell syntax",
            pb::SubmitJobRequest {
                options: Some(JobOptions {
                    tags: vec![format!("$({})", touch(&marker(11)))],
                    ..Default::default()
                }),
                ..request("hello.yml")
            },
            "options.tags[0]".into(),
        ),
        (
            "playbook outside the catalogue",
            request("../tests/playbooks/flood.yml"),
            "playbook".into(),
        ),
        (
            "playbook as an option",
            request("--version.yml"),
            "playbook".into(),
        ),
    ];
    for (name, req, field) in attacks {
        let err = client.submit_job(req).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert_eq!(violations(&err), [field], "{name}: {err:?}");
    }

    // The connection facts a caller may give are taken, and the job runs.
    let mut allowed = request("hello.yml");
    allowed.inventory = inline(json!({"all": {"children": {"web": {"hosts": {"web1": {
        "ansible_host": "127.0.0.1",
        "ansible_port": 22,
        "ansible_user": "deploy",
        "ansible_connection": "local",
    }}}}}}));
    let job = submit(&mut client, allowed).await;
    let done = wait_terminal(&mut client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    assert_eq!(
        done.result.unwrap().stats.keys().collect::<Vec<_>>(),
        ["web1"]
    );

    for n in 1..=13 {
        assert!(!marker(n).exists(), "marker {n} was created");
    }
    server.stop().await;
}

/// The message hello.yml printed for its greeting task, as Ansible had it.
async fn greeting(client: &mut Client, job: &pb::Job) -> String {
    let messages = watch_all(client, &job.job_id, 0).await;
    let done = get(client, &job.job_id).await;
    assert_eq!(status(&done), pb::JobStatus::Successful, "{done:?}");
    let ok = events(&messages)
        .into_iter()
        .find(|e| e.event == "runner_on_ok")
        .expect("the greeting ran");
    let data = struct_to_json(ok.event_data.unwrap());
    data["res"]["msg"].as_str().expect("a message").to_owned()
}

type Client =
    ansible_runner_service::pb::job_service_client::JobServiceClient<tonic::transport::Channel>;

async fn any_string_reaches_the_playbook_intact(backend: Backend) {
    let history = History::new(backend).await;
    let server = TestServer::start(&history.settings).await;
    let mut client = server.client.clone();
    // Characters YAML cannot carry raw (DEL, BOM, C1 controls), line breaks it
    // folds (NEL, LS, PS, CR), quotes, escapes, templates and non-BMP text.
    let hard = "\u{0}a\u{7f}b\u{feff}c\u{85}d\u{2028}e\u{2029}f\rg\th\ni\u{1}j\"k'l\\m{{ n }}o{% p %}q\u{e9}\u{1F600}r\u{9f}s\u{fffd}";

    // Keys too: YAML parsers drop an implicit key over 1024 characters.
    let long_key = "k".repeat(1100);
    let wide_key = "\u{1F600}".repeat(110);
    let mut from_vars = request("hello.yml");
    from_vars.extra_vars = vars(json!({"who": hard, "nested": {long_key: 1, wide_key: hard}}));
    let from_vars = submit(&mut client, from_vars).await;
    let mut from_inventory = request("hello.yml");
    from_inventory.inventory = inline(json!({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "who": hard,
    }}}}));
    let from_inventory = submit(&mut client, from_inventory).await;

    let expected = format!("Hello, {hard}!");
    assert_eq!(greeting(&mut client, &from_vars).await, expected);
    assert_eq!(greeting(&mut client, &from_inventory).await, expected);
    server.stop().await;
}

on_both_backends!(
    no_route_runs_a_command,
    any_string_reaches_the_playbook_intact
);
