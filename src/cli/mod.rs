//! The command-line client: `run` submits a playbook and follows it the way
//! ansible-playbook prints it; `get`, `list`, `watch`, `cancel`, `playbooks`
//! cover the rest of the API. It talks to any server over gRPC.

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

pub use output::Painter;

/// Where the server is and who is calling.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        env = "ARS_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// API key, sent as `authorization: Bearer <token>`.
    #[arg(long, env = "ARS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Colour the output: auto (when a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
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
    Run(RunArgs),
    /// Show a job.
    Get {
        job_id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List(ListArgs),
    /// Follow a job (reconnecting when the connection drops) until it ends.
    Watch { job_id: String },
    /// Cancel a job.
    Cancel { job_id: String },
    /// List the playbooks that can be run.
    Playbooks,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The playbook's name in the catalogue, e.g. hello.yml.
    pub playbook: String,
    /// Extra variable KEY=VALUE (VALUE may be JSON); repeatable.
    #[arg(short = 'e', long = "extra-vars", value_name = "KEY=VALUE")]
    pub extra_vars: Vec<String>,
    /// Hosts to run against, comma-separated.
    #[arg(short = 'i', long = "inventory")]
    pub inventory: Option<String>,
    #[arg(long)]
    pub limit: Option<String>,
    #[arg(long)]
    pub check: bool,
    #[arg(long)]
    pub diff: bool,
    /// Tags, comma-separated.
    #[arg(long)]
    pub tags: Option<String>,
    #[arg(long)]
    pub skip_tags: Option<String>,
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
    /// Only jobs in this status (pending, running, successful, failed, canceled, timed_out).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub playbook: Option<String>,
    /// Only jobs of this queue (worker group).
    #[arg(long)]
    pub queue: Option<String>,
    /// How many jobs to show.
    #[arg(long, default_value_t = 20)]
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
        CliError {
            message: format!("{:?}: {}", status.code(), status.message()),
            code: 1,
        }
    }
}

struct Client {
    jobs: JobServiceClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
        let url = if args.server.contains("://") {
            args.server.clone()
        } else {
            format!("http://{}", args.server)
        };
        let fail = |e: &dyn std::fmt::Display| CliError {
            message: format!("cannot reach {url}: {e}"),
            code: 1,
        };
        let channel = Channel::from_shared(url.clone())
            .map_err(|e| fail(&e))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| fail(&e))?;
        let token = match &args.token {
            Some(token) => {
                Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| fail(&e))?)
            }
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
pub async fn run(args: ClientArgs, command: ClientCommand) -> Result<u8, CliError> {
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal(),
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
            follow(&mut client, &job.job_id, &painter).await
        }
        ClientCommand::Watch { job_id } => follow(&mut client, &job_id, &painter).await,
        ClientCommand::Get { job_id, json } => {
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
                Some(s) => {
                    pb::JobStatus::from_str_name(&format!("JOB_STATUS_{}", s.to_uppercase()))
                        .ok_or_else(|| CliError {
                            message: format!("unknown status {s:?}"),
                            code: 1,
                        })? as i32
                }
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
                        submitted_by: String::new(),
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
        ClientCommand::Cancel { job_id } => {
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
        ClientCommand::Playbooks => {
            let playbooks = client
                .jobs
                .list_playbooks(client.request(pb::ListPlaybooksRequest {}))
                .await?
                .into_inner()
                .playbooks;
            let width = playbooks.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in playbooks {
                println!("{:width$}  {}", p.name, p.description);
            }
            Ok(0)
        }
    }
}

fn submit_request(run: &RunArgs) -> Result<pb::SubmitJobRequest, CliError> {
    let mut vars = serde_json::Map::new();
    for pair in &run.extra_vars {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CliError {
                message: format!("-e {pair:?}: expected KEY=VALUE"),
                code: 1,
            });
        };
        let value =
            serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.into()));
        vars.insert(key.to_owned(), value);
    }
    let split = |v: &Option<String>| -> Vec<String> {
        v.iter()
            .flat_map(|t| t.split(','))
            .map(str::to_owned)
            .filter(|t| !t.is_empty())
            .collect()
    };
    Ok(pb::SubmitJobRequest {
        playbook: run.playbook.clone(),
        extra_vars: Some(json_to_struct(&vars)),
        inventory: run.inventory.clone().map(|hosts| pb::Inventory {
            source: Some(pb::inventory::Source::Hosts(hosts)),
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
        secret_extra_vars: None,
        queue: run.queue.clone().unwrap_or_default(),
    })
}

/// Follows a job to its end, printing its output as ansible-playbook does,
/// and resuming with after_sequence when the connection drops.
async fn follow(client: &mut Client, job_id: &str, painter: &Painter) -> Result<u8, CliError> {
    let mut last = 0u64;
    let mut progress = output::Progress::new(std::io::stderr().is_terminal());
    let mut retries = 0;
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
            Err(status) if retryable(&status) && retries < 60 => {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    retries = 0;
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
        if retries >= 60 {
            return Err(CliError {
                message: "lost the server for a minute; giving up".into(),
                code: 1,
            });
        }
        retries += 1;
        eprintln!("connection lost; resuming after event {last}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// Like ansible-playbook: 0 success, 2 failed; 3 timed out, 4 canceled.
pub fn exit_code(status: i32) -> u8 {
    match pb::JobStatus::try_from(status) {
        Ok(pb::JobStatus::Successful) => 0,
        Ok(pb::JobStatus::Failed) => 2,
        Ok(pb::JobStatus::TimedOut) => 3,
        Ok(pb::JobStatus::Canceled) => 4,
        _ => 1,
    }
}
