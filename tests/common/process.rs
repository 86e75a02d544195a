//! The service as a real process (where a crash must be simulated: kill -9,
//! SIGSTOP), and a private redis-server that a test may restart empty.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ansible_runner_service::settings::Settings;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What grpc.health.v1 at `addr` says about the JobService; None while
/// nothing answers.
pub async fn health(
    addr: SocketAddr,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "ansible_runner.v1.JobService".into(),
        })
        .await
        .ok()?;
    answer.into_inner().status.try_into().ok()
}

fn log_file(name: &str) -> (PathBuf, std::fs::File) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

/// A running `ansible-runner-service serve` or `worker`.
pub struct ServiceProcess {
    child: Child,
    pub addr: Option<SocketAddr>,
    pub log: PathBuf,
}

impl ServiceProcess {
    fn command(settings: &Settings, subcommand: &str, extra_env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ansible-runner-service"));
        command
            .arg(subcommand)
            .env("DATABASE_URL", &settings.database_url)
            .env("REDIS_PREFIX", &settings.redis_prefix)
            .env("PLAYBOOKS_DIR", &settings.playbooks_dir)
            .env("WORKER_CONCURRENCY", settings.workers.to_string())
            .env("LEASE_SECONDS", settings.lease.as_secs().to_string())
            .env(
                "SWEEP_INTERVAL_SECONDS",
                settings.sweep_interval.as_secs().to_string(),
            )
            .env(
                "REDISPATCH_AFTER_SECONDS",
                settings.redispatch_after.as_secs().to_string(),
            )
            .env(
                "KILL_GRACE_SECONDS",
                settings.kill_grace.as_secs().to_string(),
            )
            .env(
                "SHUTDOWN_GRACE_SECONDS",
                settings.shutdown_grace.as_secs().to_string(),
            )
            .env("EXECUTOR", settings.executor.as_str())
            .env(
                "CONNECT_TIMEOUT_SECONDS",
                settings.connect_timeout.as_secs().to_string(),
            )
            .env("NO_MIGRATE", (!settings.migrate).to_string())
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_ADDR")
            .stdin(Stdio::null());
        match &settings.redis_url {
            Some(url) => command.env("REDIS_URL", url),
            None => command.env_remove("REDIS_URL"),
        };
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command
    }

    fn spawn(mut command: Command, name: &str, addr: Option<SocketAddr>) -> ServiceProcess {
        let (log, file) = log_file(name);
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the service binary");
        ServiceProcess { child, addr, log }
    }

    /// `serve` on a free port; returns once it answers.
    pub async fn serve(settings: &Settings, extra_env: &[(&str, &str)]) -> ServiceProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::serve_on(settings, addr, extra_env).await
    }

    /// `serve` on `addr`, without waiting for it to listen.
    pub fn start_serve(
        settings: &Settings,
        addr: SocketAddr,
        extra_env: &[(&str, &str)],
    ) -> ServiceProcess {
        let mut command = Self::command(settings, "serve", extra_env);
        command.arg("--listen").arg(addr.to_string());
        Self::spawn(command, "serve", Some(addr))
    }

    /// `worker` with the settings' concurrency and extra environment.
    pub fn start_worker(settings: &Settings, extra_env: &[(&str, &str)]) -> ServiceProcess {
        Self::spawn(Self::command(settings, "worker", extra_env), "worker", None)
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `serve` on `addr`; returns once its health says SERVING (it listens
    /// earlier, while it connects its history and live state).
    pub async fn serve_on(
        settings: &Settings,
        addr: SocketAddr,
        extra_env: &[(&str, &str)],
    ) -> ServiceProcess {
        use tonic_health::pb::health_check_response::ServingStatus;
        let process = Self::start_serve(settings, addr, extra_env);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while health(addr).await != Some(ServingStatus::Serving) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "serve did not become SERVING; log: {}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// `worker` with the settings' concurrency.
    pub fn worker(settings: &Settings) -> ServiceProcess {
        Self::spawn(Self::command(settings, "worker", &[]), "worker", None)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// `kill -9`, then reaps the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself (after SIGTERM, say).
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process did not exit; log: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// A redis-server of the test's own, on a spare port, keeping nothing on disk.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_on(free_port()).await
    }

    /// On `port` (e.g. one a service was told about before Redis was up).
    pub async fn start_on(port: u16) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, &dir);
        let server = RedisServer { child, port, dir };
        server.wait_ready().await;
        server
    }

    fn spawn(port: u16, dir: &tempfile::TempDir) -> Child {
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH")
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut reply).await.is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts an empty server on the same port after [`RedisServer::stop`].
    pub async fn start_again(&mut self) {
        self.child = Self::spawn(self.port, &self.dir);
        self.wait_ready().await;
    }

    /// Kills the server and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        self.restart_empty_after(Duration::ZERO).await;
    }

    /// Kills the server, leaves it down for `down`, then starts an empty one
    /// on the same port.
    pub async fn restart_empty_after(&mut self, down: Duration) {
        self.stop();
        tokio::time::sleep(down).await;
        self.start_again().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
