//! The command-line client: `run` submits a playbook and follows it the way
//! ansible-playbook prints it; `get`, `list`, `watch`, `cancel`, `playbooks`
//! cover the rest of the API. It talks to any server over gRPC.

pub mod credentials;
pub mod keys;
mod output;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::grpc::convert::json_to_struct;
use crate::pb::job_service_client::JobServiceClient;
use crate::pb::{self, watch_job_response::Kind};

pub use output::{colour_by_default, Painter};

/// Where the server is and who is calling: the flags of every client command.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The server's address: host:port, http://... or https://...
    #[arg(long, env = "ARS_SERVER", default_value = crate::defaults::SERVER_URL)]
    pub server: String,
    /// API key, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "ARS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: TlsClientArgs,
    /// Colour the output: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// Certificates for an https:// server (client commands and `health`).
#[derive(Debug, Args, Clone, Default)]
pub struct TlsClientArgs {
    /// CA certificate (PEM) of an https:// server; default: the system's CAs (SSL_CERT_FILE is honoured).
    #[arg(long, env = "ARS_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that asks for one (mutual TLS); with --client-key.
    #[arg(
        long,
        env = "ARS_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "ARS_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Run a playbook and follow it live; exits 0 when it succeeds, 2 when it fails.
    Run(Box<RunArgs>),
    /// Show a job.
    Get {
        /// The job's id.
        job_id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs, newest first.
    List(ListArgs),
    /// Follow a job (reconnecting when the connection drops) until it ends.
    Watch {
        /// The job's id.
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        job_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the playbooks that can be run.
    Playbooks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ClientCommand {
    /// The server and credentials the command was given.
    pub fn client_args(&self) -> &ClientArgs {
        match self {
            ClientCommand::Run(run) => &run.client,
            ClientCommand::List(list) => &list.client,
            ClientCommand::Get { client, .. }
            | ClientCommand::Watch { client, .. }
            | ClientCommand::Cancel { client, .. }
            | ClientCommand::Playbooks { client, .. } => client,
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The playbook's name in the catalogue, e.g. hello.yml; with --git, its path in the repository.
    #[arg(required_unless_present = "role")]
    pub playbook: Option<String>,
    /// Run the playbook from this git repository (of a provider the server allows), e.g. https://git.example.com/team/automation.git; with --role, the repository of the role's collection.
    #[arg(long, value_name = "REPO")]
    pub git: Option<String>,
    /// With --git: the branch, tag or full commit id; unset: the repository's default branch.
    #[arg(long = "ref", value_name = "REF", requires = "git")]
    pub git_ref: Option<String>,
    /// Run this role (namespace.collection.role, or the role's name inside the --git collection) instead of a playbook.
    #[arg(long, value_name = "NAME", conflicts_with = "playbook")]
    pub role: Option<String>,
    /// With --role: the role's variables (as -e takes them); repeatable.
    #[arg(long = "role-vars", value_name = "VARS", requires = "role")]
    pub role_vars: Vec<String>,
    /// With --role: gather facts first.
    #[arg(long, requires = "role")]
    pub gather_facts: bool,
    /// Take the inventory file from this git repository (with --inventory-file).
    #[arg(
        long,
        value_name = "REPO",
        requires = "inventory_file",
        conflicts_with = "inventory"
    )]
    pub inventory_repo: Option<String>,
    /// With --inventory-repo: the branch, tag or commit; unset: the default branch.
    #[arg(long, value_name = "REF", requires = "inventory_repo")]
    pub inventory_ref: Option<String>,
    /// With --inventory-repo: the inventory file's path in the repository.
    #[arg(long, value_name = "PATH", requires = "inventory_repo")]
    pub inventory_file: Option<String>,
    /// A named credential the run gets (an SSH key, a vault or become password; see `credentials list`); repeatable.
    #[arg(long = "credential", value_name = "NAME")]
    pub credentials: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Extra variables, as ansible-playbook takes them: KEY=VALUE (VALUE may be JSON), a JSON object, or @FILE of JSON or YAML; repeatable, later ones win.
    #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
    pub extra_vars: Vec<String>,
    /// Secret variables, never stored or shown (masked in the output): KEY=VALUE, a JSON object, @FILE, or KEY alone to be asked for without echo; repeatable.
    #[arg(long = "secret", value_name = "VARS")]
    pub secrets: Vec<String>,
    /// Hosts to run against, comma-separated.
    #[arg(short = 'i', long = "inventory")]
    pub inventory: Option<String>,
    /// Run on these hosts only (an Ansible host pattern).
    #[arg(long)]
    pub limit: Option<String>,
    /// Check mode: report what would change, change nothing.
    #[arg(long)]
    pub check: bool,
    /// Show the differences in changed files.
    #[arg(long)]
    pub diff: bool,
    /// Run only tasks with these tags, comma-separated.
    #[arg(long)]
    pub tags: Option<String>,
    /// Skip tasks with these tags, comma-separated.
    #[arg(long)]
    pub skip_tags: Option<String>,
    /// Hosts Ansible works on at once.
    #[arg(long)]
    pub forks: Option<u32>,
    /// -v to -vvvv.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Stop the run after this many seconds.
    #[arg(long)]
    pub timeout: Option<u32>,
    /// The queue (worker group) to run on; unset: "default".
    #[arg(long)]
    pub queue: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only jobs in this status (pending, running, successful, failed, canceled, timed_out).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this playbook.
    #[arg(long)]
    pub playbook: Option<String>,
    /// Only jobs of this queue (worker group).
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs this client submitted.
    #[arg(long)]
    pub submitted_by: Option<String>,
    /// How many jobs to show.
    #[arg(long, default_value_t = crate::defaults::PAGE_SIZE as usize)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A failure of the client, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        use tonic_types::StatusExt;
        let reason = status
            .get_details_error_info()
            .map(|info| info.reason)
            .unwrap_or_default();
        let hint = match (status.code(), reason.as_str()) {
            (Code::Unauthenticated, _) => " (send an API key with --token or ARS_TOKEN)",
            (Code::NotFound, "PLAYBOOK_NOT_FOUND") => {
                " (`ansible-runner-service playbooks` lists the catalogue)"
            }
            _ => "",
        };
        CliError {
            message: format!("{:?}: {}{hint}", status.code(), status.message()),
            code: 1,
        }
    }
}

struct Client {
    jobs: JobServiceClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// A connection to `server` (`host:port`, `http://...` or `https://...`),
/// over TLS for https:// with the CA and client certificate of `args`.
pub async fn channel(
    server: &str,
    args: &TlsClientArgs,
    timeout: Duration,
) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| format!("{url}: {e}"))?
        .connect_timeout(timeout);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &args.ca_cert {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS for {url}: {}", error_text(&e)))?;
    } else if args.ca_cert.is_some() || args.client_cert.is_some() {
        return Err(format!(
            "{url} is plaintext: use https:// with --ca-cert or --client-cert"
        ));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", error_text(&e)))
}

/// An error with its causes ("transport error" alone says little).
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    crate::domain::error_chain(error)
}

impl Client {
    async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
        let fail = |message: String| CliError { message, code: 1 };
        let channel = channel(&args.server, &args.tls, Duration::from_secs(5))
            .await
            .map_err(fail)?;
        let token = match &args.token {
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|e| fail(format!("--token: {e}")))?,
            ),
            None => None,
        };
        Ok(Client {
            jobs: JobServiceClient::new(channel).max_decoding_message_size(32 << 20),
            token,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }
}

/// Runs a client command; returns the process exit code.
pub async fn run(command: ClientCommand) -> Result<u8, CliError> {
    let args = command.client_args().clone();
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => colour_by_default(std::io::stdout().is_terminal()),
    };
    let painter = Painter { color };
    let mut client = Client::connect(&args).await?;
    match command {
        ClientCommand::Run(run) => {
            let request = submit_request(&run)?;
            let job = client
                .jobs
                .submit_job(client.request(request))
                .await?
                .into_inner()
                .job
                .ok_or_else(|| CliError {
                    message: "no job in the answer".into(),
                    code: 1,
                })?;
            eprintln!("job {}", job.job_id);
            follow(&mut client, &job.job_id, &painter, OnInterrupt::Cancel).await
        }
        ClientCommand::Watch { job_id, .. } => {
            follow(&mut client, &job_id, &painter, OnInterrupt::Detach).await
        }
        ClientCommand::Get { job_id, json, .. } => {
            let job = client
                .jobs
                .get_job(client.request(pb::GetJobRequest { job_id }))
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            if json {
                println!("{}", output::job_json(&job));
            } else {
                print!("{}", output::job_details(&job));
            }
            Ok(0)
        }
        ClientCommand::List(list) => {
            let status = match &list.status {
                Some(s) => pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", s.to_uppercase()))
                    .filter(|s| *s != pb::JobStatus::Unspecified)
                    .ok_or_else(|| CliError {
                        message: format!(
                            "--status {s:?}: expected one of pending, running, successful, failed, canceled, timed_out"
                        ),
                        code: 1,
                    })? as i32,
                None => 0,
            };
            let mut jobs = Vec::new();
            let mut token = String::new();
            while jobs.len() < list.limit {
                let page = client
                    .jobs
                    .list_jobs(client.request(pb::ListJobsRequest {
                        status,
                        playbook: list.playbook.clone().unwrap_or_default(),
                        page_size: (list.limit - jobs.len()).min(100) as i32,
                        page_token: token,
                        submitted_by: list.submitted_by.clone().unwrap_or_default(),
                        queue: list.queue.clone().unwrap_or_default(),
                    }))
                    .await?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if list.json {
                let all: Vec<serde_json::Value> = jobs.iter().map(output::job_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                print!("{}", output::job_table(&jobs, &painter));
            }
            Ok(0)
        }
        ClientCommand::Cancel { job_id, .. } => {
            let job = client
                .jobs
                .cancel_job(client.request(pb::CancelJobRequest { job_id }))
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            println!("{} {}", job.job_id, painter.status(job.status));
            Ok(0)
        }
        ClientCommand::Playbooks { json, .. } => {
            let playbooks = client
                .jobs
                .list_playbooks(client.request(pb::ListPlaybooksRequest {}))
                .await?
                .into_inner()
                .playbooks;
            if json {
                let all: Vec<serde_json::Value> = playbooks
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name, "description": p.description}))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
                return Ok(0);
            }
            let width = playbooks.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in playbooks {
                println!("{:width$}  {}", p.name, p.description);
            }
            Ok(0)
        }
    }
}

/// Variables given as ansible-playbook takes them: `KEY=VALUE` (VALUE may be
/// JSON), a JSON object, or `@FILE` holding JSON or YAML; later ones win.
/// With `prompt`, a bare `KEY` is asked for on the terminal without echo.
fn parse_vars(
    flag: &str,
    given: &[String],
    prompt: bool,
) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    let fail = |message: String| CliError { message, code: 1 };
    let mut vars = serde_json::Map::new();
    for item in given {
        let object = |value: serde_json::Value, what: &str| match value {
            serde_json::Value::Object(map) => Ok(map),
            _ => Err(fail(format!(
                "{flag} {what}: expected an object of variables"
            ))),
        };
        if let Some(path) = item.strip_prefix('@') {
            let text =
                std::fs::read_to_string(path).map_err(|e| fail(format!("{flag} @{path}: {e}")))?;
            let value: serde_json::Value = serde_yaml::from_str(&text)
                .map_err(|e| fail(format!("{flag} @{path}: not JSON or YAML: {e}")))?;
            vars.extend(object(value, item)?);
        } else if item.trim_start().starts_with('{') {
            let value = serde_json::from_str(item)
                .map_err(|e| fail(format!("{flag} {item:?}: not a JSON object: {e}")))?;
            vars.extend(object(value, "JSON")?);
        } else if let Some((key, value)) = item.split_once('=') {
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.into()));
            vars.insert(key.to_owned(), value);
        } else if prompt {
            let value = rpassword::prompt_password(format!("{item}: ")).map_err(|e| {
                fail(format!(
                    "{flag} {item}: cannot read it from the terminal: {e}"
                ))
            })?;
            vars.insert(item.clone(), serde_json::Value::String(value));
        } else {
            return Err(fail(format!(
                "{flag} {item:?}: expected KEY=VALUE, a JSON object or @FILE"
            )));
        }
    }
    Ok(vars)
}

fn submit_request(run: &RunArgs) -> Result<pb::SubmitJobRequest, CliError> {
    let vars = parse_vars("-e", &run.extra_vars, false)?;
    let secrets = parse_vars("--secret", &run.secrets, true)?;
    let split = |v: &Option<String>| -> Vec<String> {
        v.iter()
            .flat_map(|t| t.split(','))
            .map(str::to_owned)
            .filter(|t| !t.is_empty())
            .collect()
    };
    let role_vars = parse_vars("--role-vars", &run.role_vars, false)?;
    let git_ref = run.git_ref.clone().unwrap_or_default();
    let (playbook, source) = match (&run.role, &run.git) {
        (Some(role), repo) => (
            String::new(),
            Some(pb::submit_job_request::Source::Role(pb::RoleSource {
                name: role.clone(),
                repo: repo.clone().unwrap_or_default(),
                r#ref: git_ref,
                role_vars: Some(json_to_struct(&role_vars)),
                gather_facts: run.gather_facts,
            })),
        ),
        (None, Some(repo)) => (
            String::new(),
            Some(pb::submit_job_request::Source::GitPlaybook(pb::GitFile {
                repo: repo.clone(),
                r#ref: git_ref,
                path: run.playbook.clone().unwrap_or_default(),
            })),
        ),
        (None, None) => (run.playbook.clone().unwrap_or_default(), None),
    };
    let inventory = match (&run.inventory, &run.inventory_repo) {
        (Some(hosts), _) => Some(pb::inventory::Source::Hosts(hosts.clone())),
        (None, Some(repo)) => Some(pb::inventory::Source::Git(pb::GitFile {
            repo: repo.clone(),
            r#ref: run.inventory_ref.clone().unwrap_or_default(),
            path: run.inventory_file.clone().unwrap_or_default(),
        })),
        (None, None) => None,
    };
    Ok(pb::SubmitJobRequest {
        playbook,
        source,
        credentials: run.credentials.clone(),
        extra_vars: Some(json_to_struct(&vars)),
        inventory: inventory.map(|source| pb::Inventory {
            source: Some(source),
        }),
        options: Some(pb::JobOptions {
            check: run.check,
            diff: run.diff,
            tags: split(&run.tags),
            skip_tags: split(&run.skip_tags),
            limit: run.limit.clone().unwrap_or_default(),
            verbosity: u32::from(run.verbose.min(4)),
            forks: run.forks.unwrap_or(0),
        }),
        timeout_seconds: run.timeout.unwrap_or(0),
        request_id: String::new(),
        secret_extra_vars: (!secrets.is_empty()).then(|| json_to_struct(&secrets)),
        queue: run.queue.clone().unwrap_or_default(),
    })
}

/// What Ctrl-C does while a job is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnInterrupt {
    /// `run`: the first Ctrl-C cancels the job and shows its end, as
    /// ansible-playbook stops when interrupted; a second one stops following.
    Cancel,
    /// `watch`: stop following; the job goes on.
    Detach,
}

/// Exit code of a client that stopped following on Ctrl-C (128 + SIGINT).
const INTERRUPTED: u8 = 130;

/// Follows a job to its end, printing its output as ansible-playbook does,
/// and resuming with after_sequence when the connection drops.
async fn follow(
    client: &mut Client,
    job_id: &str,
    painter: &Painter,
    on_interrupt: OnInterrupt,
) -> Result<u8, CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| CliError {
        message: format!("cannot take Ctrl-C: {e}"),
        code: 1,
    })?;
    let mut canceling = false;
    let mut last = 0u64;
    let mut progress = output::Progress::new(std::io::stderr().is_terminal());
    let reconnect = crate::retry::CLIENT_RECONNECT;
    let mut delays = reconnect.delays();
    loop {
        let stream = client
            .jobs
            .watch_job(client.request(pb::WatchJobRequest {
                job_id: job_id.to_owned(),
                after_sequence: last,
            }))
            .await;
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(status) if retryable(&status) => match delays.next() {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
                None => return Err(status.into()),
            },
            Err(status) => return Err(status.into()),
        };
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = interrupts.recv() => {
                    progress.clear();
                    if on_interrupt == OnInterrupt::Cancel && !canceling {
                        canceling = true;
                        eprintln!("canceling job {job_id} (Ctrl-C again to stop following it)");
                        let mut jobs = client.jobs.clone();
                        let request = client.request(pb::CancelJobRequest { job_id: job_id.to_owned() });
                        // The end arrives on the watch stream; the answer may take the kill grace.
                        tokio::spawn(async move {
                            if let Err(status) = jobs.cancel_job(request).await {
                                eprintln!("cancel: {:?}: {}", status.code(), status.message());
                            }
                        });
                        continue;
                    }
                    eprintln!(
                        "stopped following job {job_id}; it goes on unless it was canceled: `ansible-runner-service watch {job_id}` follows it, `ansible-runner-service cancel {job_id}` cancels it"
                    );
                    return Ok(INTERRUPTED);
                }
            };
            match next {
                Ok(Some(message)) => {
                    delays = reconnect.delays();
                    match message.kind {
                        Some(Kind::Event(event)) => {
                            last = event.sequence;
                            progress.clear();
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(painter.stdout(&event.stdout).as_bytes());
                            let _ = out.flush();
                            progress.event(&event);
                        }
                        Some(Kind::StatusChange(job)) => {
                            progress.clear();
                            eprintln!(
                                "job {} {}{}",
                                job.job_id,
                                painter.status(job.status),
                                if job.error.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", job.error)
                                }
                            );
                            return Ok(exit_code(job.status));
                        }
                        Some(Kind::Snapshot(_)) | None => {}
                    }
                }
                Ok(None) => break,
                Err(status) if retryable(&status) => break,
                Err(status) => return Err(status.into()),
            }
        }
        progress.clear();
        let Some(delay) = delays.next() else {
            return Err(CliError {
                message: "lost the server for a minute; giving up".into(),
                code: 1,
            });
        };
        eprintln!("connection lost; resuming after event {last}");
        tokio::time::sleep(delay).await;
    }
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// Like ansible-playbook: 0 success, 2 failed; 3 timed out, 4 canceled.
fn exit_code(status: i32) -> u8 {
    match pb::JobStatus::try_from(status) {
        Ok(pb::JobStatus::Successful) => 0,
        Ok(pb::JobStatus::Failed) => 2,
        Ok(pb::JobStatus::TimedOut) => 3,
        Ok(pb::JobStatus::Canceled) => 4,
        _ => 1,
    }
}
