//! The run's private folder: the callback plugin, Ansible's temporary folder,
//! the inventory and the extra vars (written as data, never templates,
//! readable by the service's user only), the environment every run gets, and
//! ansible-playbook's argument vector.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::{Prepared, Target};
use crate::domain::credential::{Credential, CredentialKind, HostKeyPolicy};
use crate::domain::{Inventory, JobSpec};
use crate::worker::unsafe_yaml::to_unsafe_yaml;

/// The callback plugin, shipped inside the binary and written next to each run.
pub(super) const CALLBACK_PLUGIN: &str =
    include_str!("../../../ansible/callback_plugins/ars_events.py");
/// The file descriptor the child writes events to.
pub(super) const EVENTS_FD: i32 = 3;

/// The environment every run gets on top of the worker's: the callback
/// plugin as stdout callback, writing events to EVENTS_FD, no colours, no
/// retry files.
pub(super) fn run_environment(plugins: &Path, local_tmp: &Path) -> Vec<(String, String)> {
    [
        ("ANSIBLE_CALLBACK_PLUGINS", plugins.display().to_string()),
        ("ANSIBLE_STDOUT_CALLBACK", "ars_events".into()),
        ("ANSIBLE_LOAD_CALLBACK_PLUGINS", "1".into()),
        ("ARS_EVENTS_FD", EVENTS_FD.to_string()),
        ("ANSIBLE_LOCAL_TEMP", local_tmp.display().to_string()),
        ("ANSIBLE_RETRY_FILES_ENABLED", "False".into()),
        // Inventories are data files: an executable one (a git inventory
        // a caller points at) is never run as an inventory script.
        (
            "ANSIBLE_INVENTORY_ENABLED",
            "host_list,yaml,ini,toml".into(),
        ),
        ("ANSIBLE_NOCOLOR", "True".into()),
        ("ANSIBLE_FORCE_COLOR", "False".into()),
        ("PYTHONUNBUFFERED", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn local_connection() -> Value {
    json!({
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    })
}

/// The environment of this run only: ssh's control sockets in the run's
/// own folder (no other run shares a connection), and the folders of
/// collections installed for its git sources, ahead of the workers' own.
pub(super) fn source_environment(dir: &Path, prepared: &Prepared) -> Vec<(String, String)> {
    let mut env = vec![(
        "ANSIBLE_SSH_CONTROL_PATH_DIR".to_owned(),
        dir.join("cp").display().to_string(),
    )];
    if prepared.collections.is_empty() {
        return env;
    }
    let mut paths: Vec<String> = prepared
        .collections
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    paths.push(
        std::env::var("ANSIBLE_COLLECTIONS_PATH")
            .unwrap_or_else(|_| "~/.ansible/collections:/usr/share/ansible/collections".to_owned()),
    );
    env.push(("ANSIBLE_COLLECTIONS_PATH".to_owned(), paths.join(":")));
    env
}

/// Writes the run's credentials into its private folder (0600 files, gone
/// with the folder) and returns the options that point ansible-playbook at
/// them: paths and a user name, never a secret.
fn credential_files(dir: &Path, credentials: &[Credential]) -> std::io::Result<Vec<String>> {
    let mut args = Vec::new();
    if credentials.is_empty() {
        return Ok(args);
    }
    let folder = dir.join("credentials");
    std::fs::create_dir_all(&folder)?;
    std::fs::set_permissions(&folder, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for credential in credentials {
        let secret = &credential.secret;
        match credential.info.kind {
            CredentialKind::Ssh => {
                let key = folder.join("ssh_key");
                let mut text = secret.ssh_key.clone().unwrap_or_default();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                write_private(&key, &text)?;
                args.push(format!("--private-key={}", key.display()));
                if let Some(user) = &credential.info.username {
                    args.push(format!("--user={user}"));
                }
                let policy = match secret.host_key_policy {
                    HostKeyPolicy::Strict => "yes",
                    HostKeyPolicy::AcceptNew => "accept-new",
                };
                let mut ssh = format!("-o StrictHostKeyChecking={policy}");
                if secret.known_hosts.is_some()
                    || secret.host_key_policy == HostKeyPolicy::AcceptNew
                {
                    // The credential's hosts only (a host accepted as new
                    // is trusted for this run, not remembered).
                    let known = folder.join("known_hosts");
                    write_private(&known, secret.known_hosts.as_deref().unwrap_or(""))?;
                    ssh.push_str(&format!(" -o UserKnownHostsFile={}", known.display()));
                }
                args.push(format!("--ssh-common-args={ssh}"));
            }
            CredentialKind::Vault => {
                let file = folder.join("vault_password");
                write_private(&file, secret.password.as_deref().unwrap_or(""))?;
                let id = secret.vault_id.as_deref().unwrap_or("default");
                args.push(format!("--vault-id={id}@{}", file.display()));
            }
            CredentialKind::Become => {
                let file = folder.join("become_password");
                write_private(&file, secret.password.as_deref().unwrap_or(""))?;
                args.push(format!("--become-password-file={}", file.display()));
            }
        }
    }
    Ok(args)
}

/// A new file readable by the service's user only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The one-play playbook that runs a role over the whole inventory; the
/// role's variables are data (marked unsafe), never templates.
fn role_playbook(name: &str, vars: &Map<String, Value>, gather_facts: bool) -> String {
    // The name is an identifier path (validated), so it is plain YAML.
    format!(
        "[{{name: \"role {name}\", hosts: all, gather_facts: {gather_facts}, roles: [{{role: \"{name}\", vars: {}}}]}}]\n",
        to_unsafe_yaml(&Value::Object(vars.clone()))
    )
}

/// Writes the run's files and returns ansible-playbook's arguments.
pub(super) fn prepare(
    dir: &Path,
    prepared: &Prepared,
    spec: &JobSpec,
) -> std::io::Result<Vec<String>> {
    let plugins = dir.join("callback_plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(plugins.join("ars_events.py"), CALLBACK_PLUGIN)?;
    let playbook = match &prepared.target {
        Target::Playbook(path) => path.clone(),
        Target::Role {
            name,
            vars,
            gather_facts,
        } => {
            let path = dir.join("role.yml");
            std::fs::write(&path, role_playbook(name, vars, *gather_facts))?;
            path
        }
    };
    let playbook = playbook.as_path();
    let mut args = credential_files(dir, &prepared.credentials)?;
    args.extend(inventory_and_arguments(dir, playbook, prepared, spec)?);
    Ok(args)
}

/// Writes the inventory and the extra vars; the rest of the arguments.
fn inventory_and_arguments(
    dir: &Path,
    playbook: &Path,
    prepared: &Prepared,
    spec: &JobSpec,
) -> std::io::Result<Vec<String>> {
    if let (Inventory::Git(_), Some(file)) = (&spec.inventory, &prepared.inventory_file) {
        // The repository's own inventory file, read where it is checked out.
        let (_, vars) = write_files(dir, None, spec)?;
        return Ok(arguments((file.clone(), vars), playbook, spec));
    }

    let inventory = match &spec.inventory {
        Inventory::Localhost => json!({"all": {"hosts": {"localhost": local_connection()}}}),
        Inventory::Hosts(hosts) => {
            // Named in a list, localhost keeps the local connection Ansible
            // gives its implicit localhost, instead of SSH to itself.
            let hosts: Map<String, Value> = hosts
                .iter()
                .map(|h| {
                    let vars = match h.as_str() {
                        "localhost" | "127.0.0.1" => local_connection(),
                        _ => Value::Null,
                    };
                    (h.clone(), vars)
                })
                .collect();
            json!({"all": {"hosts": hosts}})
        }
        // The caller's inventory is data: its values are never templated.
        Inventory::Inline(doc) => {
            let text = to_unsafe_yaml(&Value::Object(doc.clone()));
            return write_files(dir, Some(&text), spec)
                .map(|paths| arguments(paths, playbook, spec));
        }
        Inventory::Git(_) => {
            return Err(std::io::Error::other(
                "the git inventory was not checked out for this run",
            ))
        }
    };
    // Our own inventory (validated host names, our variables) is plain JSON,
    // which is YAML too.
    write_files(dir, Some(&inventory.to_string()), spec)
        .map(|paths| arguments(paths, playbook, spec))
}

/// Writes the inventory and the extra vars (marked unsafe: data, never
/// templates), readable by the service's user only.
fn write_files(
    dir: &Path,
    inventory: Option<&str>,
    spec: &JobSpec,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let write = write_private;
    let inventory_path = dir.join("inventory.yml");
    if let Some(inventory) = inventory {
        write(&inventory_path, inventory)?;
    }
    let vars_path = dir.join("extra_vars.yml");
    write(
        &vars_path,
        &to_unsafe_yaml(&Value::Object(spec.extra_vars.clone())),
    )?;
    Ok((inventory_path, vars_path))
}

/// ansible-playbook's argument vector: options, then `--`, then the playbook.
fn arguments(
    (inventory_path, vars_path): (PathBuf, PathBuf),
    playbook: &Path,
    spec: &JobSpec,
) -> Vec<String> {
    let mut args = vec![
        "-i".to_owned(),
        inventory_path.display().to_string(),
        "-e".to_owned(),
        format!("@{}", vars_path.display()),
    ];
    let options = &spec.options;
    if options.check {
        args.push("--check".into());
    }
    if options.diff {
        args.push("--diff".into());
    }
    if !options.tags.is_empty() {
        args.push(format!("--tags={}", options.tags.join(",")));
    }
    if !options.skip_tags.is_empty() {
        args.push(format!("--skip-tags={}", options.skip_tags.join(",")));
    }
    if !options.limit.is_empty() {
        args.push(format!("--limit={}", options.limit));
    }
    if options.forks > 0 {
        args.push(format!("--forks={}", options.forks));
    }
    if options.verbosity > 0 {
        args.push(format!(
            "-{}",
            "v".repeat(options.verbosity.min(4) as usize)
        ));
    }
    args.push("--".into());
    args.push(playbook.display().to_string());
    args
}
