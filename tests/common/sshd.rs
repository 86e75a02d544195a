//! Real SSH hosts on loopback: one `sshd` (Debian's openssh-server) per host,
//! each on an address and port of its own, with its own host key, accepting
//! one client key. Tests reach them with the key and a known_hosts file of
//! every host's key; nothing leaves loopback.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Two tasks on every host: a ping, and a command that names its host.
pub const FLEET_PLAYBOOK: &str = r#"- hosts: all
  gather_facts: false
  tasks:
    - ping:
    - command: echo "on {{ inventory_hostname }}"
      changed_when: false
"#;

/// A user the hosts also let in (with the client key), who may run commands
/// as [`BECOME_TARGET`] through sudo after its password,
/// [`BECOME_PASSWORD`] (tests/run makes both users).
pub const BECOME_LOGIN: &str = "ars-fleet";
pub const BECOME_TARGET: &str = "ars-target";
pub const BECOME_PASSWORD: &str = "ars-fleet-become-pw";

/// One sshd.
pub struct SshHost {
    /// The inventory name, e.g. "host3".
    pub name: String,
    pub address: String,
    pub port: u16,
    child: Child,
}

/// Several sshd processes and what a client needs to reach them.
pub struct SshFleet {
    pub hosts: Vec<SshHost>,
    /// The client's private key (authorized on every host).
    pub client_key: PathBuf,
    /// `[address]:port keytype key` of every host.
    pub known_hosts: PathBuf,
    /// The user to log in as (the tests' own).
    pub user: String,
    dir: TempDir,
}

/// A new ed25519 key pair at `path` (and `path`.pub), with `passphrase`
/// (none when empty).
pub fn keygen(path: &Path, passphrase: &str) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "", "-N", passphrase, "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success(), "ssh-keygen {}", path.display());
}

/// The sshd binary: Debian's, or the first on PATH.
fn sshd() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("sshd (openssh-server; tests/run installs it)")
}

impl SshFleet {
    /// `count` hosts on 127.0.0.(10+i), each on a free port.
    pub fn start(count: usize) -> SshFleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let client_key = dir.path().join("client");
        keygen(&client_key, "");
        let authorized = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        // sshd reads it as the user logging in (BECOME_LOGIN too); the
        // private keys stay readable by their owner only.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Sessions get the system's PATH, and SHLVL above 1 so that bash
        // does not read the login user's ~/.bashrc (this machine's may put a
        // pyenv shim first): the hosts look like plain Debian hosts.
        // sshd run as root wants its privilege separation folder.
        if nix_is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let user = whoami();
        let mut hosts = Vec::new();
        let mut known = String::new();
        for i in 0..count {
            let address = format!("127.0.0.{}", 10 + i);
            let port = free_port_on(&address);
            let host_key = dir.path().join(format!("host{i}"));
            keygen(&host_key, "");
            let config = dir.path().join(format!("sshd{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress {address}\nHostKey {}\nPidFile {}\n\
                     AuthorizedKeysFile {}\nStrictModes no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
                     PermitRootLogin prohibit-password\nAllowUsers {user} {BECOME_LOGIN}\nLogLevel ERROR\n\
                     MaxStartups 100:30:200\nMaxSessions 100\nSubsystem sftp internal-sftp\n\
                     SetEnv SHLVL=5 PATH=/usr/bin:/bin\n",
                    host_key.display(),
                    dir.path().join(format!("sshd{i}.pid")).display(),
                    authorized.display(),
                ),
            )
            .unwrap();
            let child = Command::new(sshd())
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start sshd");
            let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
            let mut parts = public.split_whitespace();
            known.push_str(&format!(
                "[{address}]:{port} {} {}\n",
                parts.next().unwrap(),
                parts.next().unwrap()
            ));
            hosts.push(SshHost {
                name: format!("host{i}"),
                address,
                port,
                child,
            });
        }
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, known).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        for host in &mut hosts {
            while TcpStream::connect((host.address.as_str(), host.port)).is_err() {
                if let Ok(Some(status)) = host.child.try_wait() {
                    panic!("sshd for {} exited: {status}", host.name);
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd for {} did not listen",
                    host.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        SshFleet {
            hosts,
            client_key,
            known_hosts,
            user,
            dir,
        }
    }

    /// Lets the key of `public_key_file` log in too, on every host.
    pub fn authorize(&self, public_key_file: &Path) {
        use std::io::Write;
        let key = std::fs::read_to_string(public_key_file).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .unwrap()
            .write_all(key.as_bytes())
            .unwrap();
    }

    /// A folder of this fleet's own, removed with it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SshFleet {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            let _ = host.child.kill();
            let _ = host.child.wait();
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: getuid(2) has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A port nothing listens on at `address` now.
pub fn free_port_on(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .expect("bind a loopback address")
        .local_addr()
        .unwrap()
        .port()
}
