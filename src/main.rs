use std::process::ExitCode;

use ansible_runner_service::app::{self, AppState};
use ansible_runner_service::config::{Cli, Command, KeysCommand, LogFormat};
use ansible_runner_service::domain::Error;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        return match ansible_runner_service::cli::run(cli.client, command).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {}", e.message);
                ExitCode::from(e.code)
            }
        };
    }
    init_tracing(cli.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", ansible_runner_service::grpc::error_chain(&e));
            eprintln!("error: {}", ansible_runner_service::grpc::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Migrate(args) => {
            let store = app::connect_store(&args.database_url, args.connect_timeout()).await?;
            let result = store.migrate().await;
            store.close().await;
            result
        }
        Command::Health(args) => health(&args.addr).await,
        Command::Keys(KeysCommand::Create { name, file }) => create_key(&name, &file),
        Command::Prune(args) => prune(args).await,
        Command::Client(_) => unreachable!("client commands return earlier"),
        Command::Serve(args) => {
            let settings = args.settings();
            // Listen first: health answers NOT_SERVING while the history
            // database and Redis are being reached.
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| Error::internal(format!("listen on {}", args.listen), e))?;
            let connecting = AppState::connect(&settings);
            app::serve_when_connected(listener, connecting, &settings, shutdown_on_signal()).await
        }
        Command::Worker(args) => {
            let settings = args.run.settings();
            let shutdown = shutdown_on_signal();
            let state = tokio::select! {
                state = AppState::connect(&settings) => state?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let result = app::run_workers(state.clone(), &settings, shutdown).await;
            state.close().await;
            result
        }
    }
}

/// Deletes old finished jobs and prints what it removed.
async fn prune(args: ansible_runner_service::config::PruneArgs) -> Result<(), Error> {
    let status = match &args.status {
        Some(s) => {
            let status: ansible_runner_service::domain::JobStatus = s
                .to_uppercase()
                .parse()
                .map_err(|e: String| Error::invalid("status", e))?;
            if !status.is_terminal() {
                return Err(Error::invalid("status", "only finished jobs are pruned"));
            }
            Some(status)
        }
        None => None,
    };
    let store = app::connect_store(&args.store.database_url, args.store.connect_timeout()).await?;
    store.migrate().await?;
    let live = match &args.redis_url {
        Some(url) => {
            Some(ansible_runner_service::live::connect(Some(url), &args.redis_prefix).await?)
        }
        None => None,
    };
    let report = app::prune(
        &store,
        live.as_deref(),
        args.older_than,
        status,
        args.dry_run,
    )
    .await?;
    if let Some(live) = live {
        live.close().await;
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!("{verb} {} jobs and {} events", report.jobs, report.events);
    store.close().await;
    Ok(())
}

/// Prints a new key once and appends its hash to the keys file.
fn create_key(name: &str, file: &std::path::Path) -> Result<(), Error> {
    use std::io::Write;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') || name.len() > 128 {
        return Err(Error::invalid(
            "name",
            "must be 1 to 128 characters without spaces or '#'",
        ));
    }
    let (key, line) = ansible_runner_service::grpc::auth::new_key(name)?;
    let mut keys = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Error::internal(format!("open {}", file.display()), e))?;
    writeln!(keys, "{line}")
        .map_err(|e| Error::internal(format!("write {}", file.display()), e))?;
    println!("{key}");
    eprintln!(
        "key for client {name:?} added to {}; it is shown only now. Send it as `authorization: Bearer <key>`.",
        file.display()
    );
    Ok(())
}

/// Exits successfully only when the server reports the JobService SERVING.
async fn health(addr: &str) -> Result<(), Error> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| Error::internal("health address", e))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| Error::Unavailable {
            what: "the server",
            source: Box::new(e),
        })?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "ansible_runner.v1.JobService".into(),
        })
        .await
        .map_err(|e| Error::Unavailable {
            what: "the health service",
            source: Box::new(e),
        })?
        .into_inner();
    if answer.status == ServingStatus::Serving as i32 {
        println!("SERVING");
        Ok(())
    } else {
        Err(Error::InvalidState(format!(
            "the JobService is not serving (status {})",
            answer.status
        )))
    }
}

/// A token cancelled on SIGTERM or SIGINT.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
        cancel.cancel();
    });
    token
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
