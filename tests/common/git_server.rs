//! A real git smart-HTTP server on loopback: `git http-backend` behind
//! tests/common/git_http.py, with HTTP basic auth, serving bare repositories
//! read-only from a temp dir. Tests make repositories with
//! [`GitServer::repo`], commit into them through a work clone (pushed by file
//! path, not over HTTP), and point the service at `TestRepo::url`.
//!
//! Every git command here runs without system or global config and without a
//! terminal prompt, so the machine's git setup cannot leak in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The user every [`GitServer`] accepts.
pub const USER: &str = "ci-bot";

/// `git` with the harness's isolation: no system or global config, no
/// prompt, nothing from a surrounding repository.
pub fn git_command() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .env_remove("GIT_CONFIG")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null());
    command
}

/// Runs `git args` in `dir`; its trimmed stdout, or a panic with its stderr.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("git on PATH");
    assert!(
        output.status.success(),
        "git {} (in {}) failed: {}\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    hex::encode(buf)
}

/// Writes `contents` to `path` readable by its owner only.
fn write_private(path: &Path, contents: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create private file");
    file.write_all(contents.as_bytes()).expect("write file");
}

/// `git http-backend` on 127.0.0.1, behind basic auth (user [`USER`], a
/// random password). Killed on drop.
pub struct GitServer {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub base_url: String,
    pub user: String,
    pub password: String,
    root: TempDir,
    /// Port file, log, password file and stderr of the server.
    aux: TempDir,
    child: Child,
    log: PathBuf,
    stderr: PathBuf,
    /// Dirs of the files from [`GitServer::password_file`], kept as long as
    /// the server.
    password_dirs: Mutex<Vec<TempDir>>,
}

impl GitServer {
    /// Starts the server with a random password, user "ci-bot"; returns once
    /// it listens.
    pub fn start() -> GitServer {
        let root = tempfile::tempdir().expect("temp dir");
        let aux = tempfile::tempdir().expect("temp dir");
        let password = random_hex(16);
        let password_file = aux.path().join("password");
        write_private(&password_file, &format!("{password}\n"));
        let port_file = aux.path().join("port");
        let log = aux.path().join("requests.log");
        let stderr = aux.path().join("stderr.log");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/common/git_http.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--root")
            .arg(root.path())
            .arg("--user")
            .arg(USER)
            .arg("--password-file")
            .arg(&password_file)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("server stderr file"))
            .spawn()
            .expect("python3 on PATH");

        let deadline = Instant::now() + Duration::from_secs(10);
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                if let Ok(port) = text.trim().parse() {
                    break port;
                }
            }
            let exited = child.try_wait().expect("poll git_http.py");
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "git_http.py did not come up ({}): {}",
                    match exited {
                        Some(status) => format!("exited {status}"),
                        None => "no port after 10 s".to_owned(),
                    },
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };

        GitServer {
            base_url: format!("http://127.0.0.1:{port}"),
            user: USER.to_owned(),
            password,
            root,
            aux,
            child,
            log,
            stderr,
            password_dirs: Mutex::new(Vec::new()),
        }
    }

    /// The folder served (repositories live under it).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A bare repository at `<root>/<path>` (e.g. "platform/automation.git"),
    /// HEAD on `main` and empty, with a work clone in a temp dir of its own.
    pub fn repo(&self, path: &str) -> TestRepo {
        let path = path.trim_matches('/');
        let bare = self.root().join(path);
        std::fs::create_dir_all(&bare).expect("create bare repository dir");
        git(
            &bare,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        git(&bare, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        // Read-only over HTTP (the server also says so for every repository).
        git(&bare, &["config", "http.receivepack", "false"]);

        let work_dir = tempfile::tempdir().expect("temp dir");
        let work = work_dir.path().join("work");
        std::fs::create_dir_all(&work).expect("create work dir");
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        for (key, value) in [
            ("user.name", "Test Author"),
            ("user.email", "author@example.test"),
            ("commit.gpgsign", "false"),
            ("tag.gpgsign", "false"),
            ("core.autocrlf", "false"),
            ("core.symlinks", "true"),
        ] {
            git(&work, &["config", key, value]);
        }
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                bare.to_str().expect("UTF-8 path"),
            ],
        );

        TestRepo {
            url: format!("{}/{path}", self.base_url),
            bare,
            work,
            _work_dir: work_dir,
        }
    }

    /// The request log lines so far: `METHOD PATH STATUS user=NAME`.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Number of requests answered so far (401s included). A line is logged
    /// before its response is sent, so a request a client saw is counted.
    pub fn requests(&self) -> usize {
        self.log().len()
    }

    /// What the server (and git http-backend) wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Delays every answer by `secs` from now on (0 removes the delay).
    pub fn set_delay(&self, secs: u64) {
        let file = self.root().join(".delay");
        if secs == 0 {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {e}", file.display()),
            }
        } else {
            // Renamed into place: the server never reads half a number.
            let tmp = self.aux.path().join("delay.tmp");
            std::fs::write(&tmp, secs.to_string()).expect("write delay");
            std::fs::rename(&tmp, &file).expect("move delay into place");
        }
    }

    /// The password in a file of its own (no trailing newline), in a fresh
    /// temp dir that lives as long as the server.
    pub fn password_file(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("git-password");
        write_private(&path, &self.password);
        self.password_dirs.lock().unwrap().push(dir);
        path
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.wait();
    }
}

/// A bare repository served by a [`GitServer`] and the work clone that
/// feeds it.
pub struct TestRepo {
    /// `<base_url>/<path>`: what a client clones.
    pub url: String,
    /// The bare repository on disk, under the server's root.
    pub bare: PathBuf,
    work: PathBuf,
    _work_dir: TempDir,
}

impl TestRepo {
    /// The work clone.
    pub fn work(&self) -> &Path {
        &self.work
    }

    fn at(&self, path: &str) -> PathBuf {
        let full = self.work.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create parent dirs");
        }
        full
    }

    /// Writes `contents` to `path` in the work tree (parent dirs created).
    pub fn write(&self, path: &str, contents: &str) {
        std::fs::write(self.at(path), contents).expect("write file");
    }

    /// Makes `path` a symbolic link to `target` (replacing what was there).
    pub fn symlink(&self, path: &str, target: &str) {
        let full = self.at(path);
        if full.symlink_metadata().is_ok() {
            self.remove(path);
        }
        std::os::unix::fs::symlink(target, full).expect("create symlink");
    }

    /// Removes a file, a link or a whole directory from the work tree.
    pub fn remove(&self, path: &str) {
        let full = self.work.join(path);
        let meta = full.symlink_metadata().expect("path to remove exists");
        if meta.is_dir() {
            std::fs::remove_dir_all(&full).expect("remove dir");
        } else {
            std::fs::remove_file(&full).expect("remove file");
        }
    }

    /// `git add -A`, commits (empty commits allowed), force-pushes the
    /// current branch and all tags to the bare repository by path; returns
    /// the full commit SHA.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "--no-verify",
                "-m",
                message,
            ],
        );
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "HEAD", "--tags"],
        );
        self.head()
    }

    /// An annotated tag `name` at HEAD (message: the name), pushed; moves
    /// the tag if it exists.
    pub fn tag(&self, name: &str) {
        git(&self.work, &["tag", "--force", "-a", "-m", name, name]);
        self.push_tag(name);
    }

    /// A lightweight tag `name` at HEAD, pushed; moves the tag if it exists.
    pub fn lightweight_tag(&self, name: &str) {
        git(&self.work, &["tag", "--force", name]);
        self.push_tag(name);
    }

    fn push_tag(&self, name: &str) {
        let refspec = format!("refs/tags/{name}");
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", &refspec],
        );
    }

    /// Switches the work tree to `branch`, creating it at HEAD if new. The
    /// branch reaches the server with the next [`TestRepo::commit`].
    pub fn switch(&self, branch: &str) {
        let local = format!("refs/heads/{branch}");
        let exists = git_command()
            .current_dir(&self.work)
            .args(["rev-parse", "--verify", "--quiet", &local])
            .stdout(Stdio::null())
            .status()
            .expect("git on PATH")
            .success();
        let born = git_command()
            .current_dir(&self.work)
            .args(["rev-parse", "--verify", "--quiet", "HEAD"])
            .stdout(Stdio::null())
            .status()
            .expect("git on PATH")
            .success();
        if exists {
            git(&self.work, &["switch", "--quiet", branch]);
        } else if born {
            git(&self.work, &["switch", "--quiet", "-c", branch]);
        } else {
            // No commit yet: the first commit will start `branch`.
            git(&self.work, &["symbolic-ref", "HEAD", &local]);
        }
    }

    /// The full SHA of the work tree's HEAD.
    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Writes `bytes` of random (incompressible) data to `path` and commits
    /// it; returns the commit.
    pub fn commit_big_file(&self, path: &str, bytes: usize) -> String {
        use std::io::Write;
        let mut file = std::fs::File::create(self.at(path)).expect("create big file");
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            getrandom::fill(&mut buf[..n]).expect("random bytes");
            file.write_all(&buf[..n]).expect("write big file");
            left -= n;
        }
        drop(file);
        self.commit(&format!("add {bytes} random bytes in {path}"))
    }
}
