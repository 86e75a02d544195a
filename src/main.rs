//! The `ansible-runner-service` binary: reads the command line and runs the command.

use std::process::ExitCode;

use ansible_runner_service::app::{self, AppState};
use ansible_runner_service::cli::keys;
use ansible_runner_service::config::{Cli, Command, KeysCommand, LogFormat};
use ansible_runner_service::domain::Error;
use ansible_runner_service::server;
use ansible_runner_service::startup::redact;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Client(command) = cli.command {
        return match ansible_runner_service::cli::run(command).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {}", e.message);
                ExitCode::from(e.code)
            }
        };
    }
    let log_format = cli.command.log_format();
    init_tracing(log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once: a JSON log line for machines, a plain line for people.
            let text = ansible_runner_service::domain::error_chain(&e);
            match log_format {
                LogFormat::Json => tracing::error!("{text}"),
                LogFormat::Human => eprintln!("error: {text}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Error> {
    check_flags(&command)?;
    match command {
        Command::Migrate(args) => {
            let store = app::connect_store(&args.database_url, args.connect_timeout()).await?;
            let result = store.migrate().await;
            store.close().await;
            result
        }
        Command::Health(args) => health(&args.addr, &args.tls).await,
        Command::Keys(KeysCommand::Create {
            name,
            file,
            playbooks,
            sources,
            credentials,
            actions,
            jobs,
            certificate,
        }) => {
            let words =
                KeysCommand::scope_words(&playbooks, &sources, &credentials, &actions, &jobs);
            let scopes =
                ansible_runner_service::domain::Scopes::parse(words.iter().map(String::as_str))
                    .map_err(|e| Error::invalid("scopes", e))?;
            keys::create(&file, &name, scopes, certificate)
        }
        Command::Keys(KeysCommand::List { file }) => keys::list(&file),
        Command::Keys(KeysCommand::Revoke { name, file }) => keys::revoke(&file, &name),
        Command::Prune(args) => prune(args).await,
        Command::Credentials(command) => {
            ansible_runner_service::cli::credentials::run(command).await
        }
        Command::Client(_) => unreachable!("client commands return earlier"),
        Command::Serve(args) => {
            let settings = args.settings();
            if settings.workers == 0 && settings.redis_url.is_none() {
                tracing::warn!(
                    "an API server without workers (--workers 0) and without --redis-url (REDIS_URL): \
                     separate workers learn of its jobs only from the sweeper, seconds later; \
                     give every process the same Redis"
                );
            }
            // Listen first: health answers NOT_SERVING while the history
            // database and Redis are being reached.
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "--listen (LISTEN_ADDR) {}: {e}; choose a free address",
                        args.listen
                    ))
                })?;
            let connecting = AppState::connect(&settings);
            server::serve_when_connected(listener, connecting, &settings, shutdown_on_signal())
                .await
        }
        Command::Worker(args) => {
            let settings = args.run.settings();
            if settings.redis_url.is_none() {
                tracing::warn!(
                    "a separate worker without --redis-url (REDIS_URL): it hears of jobs only from \
                     the sweeper, seconds after they are submitted, and cancel requests only at lease \
                     renewals; give every process the same Redis"
                );
            }
            let shutdown = shutdown_on_signal();
            let state = tokio::select! {
                state = AppState::connect(&settings) => state?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let result = server::run_workers(state.clone(), &settings, shutdown).await;
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
    // Prune never creates or migrates a history: it works on one that is there.
    let store = app::open_store(&args.store.database_url, args.store.connect_timeout()).await?;
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
    let by_status: Vec<String> = report
        .by_status
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let detail = if by_status.is_empty() {
        String::new()
    } else {
        format!(" ({})", by_status.join(", "))
    };
    println!(
        "{verb} {} jobs{detail} and {} events",
        report.jobs, report.events
    );
    store.close().await;
    Ok(())
}

/// Exits successfully only when the server reports the JobService SERVING.
async fn health(addr: &str, tls: &ansible_runner_service::cli::TlsClientArgs) -> Result<(), Error> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let channel =
        ansible_runner_service::cli::channel(addr, tls, std::time::Duration::from_secs(3))
            .await
            .map_err(|e| Error::Unavailable {
                what: "the server",
                source: e.into(),
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

/// Mistakes in a server command's flags that no retry can mend, each said
/// with its flag before anything starts: a history URL of no known kind (it
/// would be retried as unreachable for CONNECT_TIMEOUT_SECONDS), a Redis URL
/// that does not parse, an ansible-playbook that is not there.
fn check_flags(command: &Command) -> Result<(), Error> {
    let (database_url, redis_url, ansible_playbook) = match command {
        Command::Serve(args) => (
            &args.run.store.database_url,
            args.run.redis_url.as_deref(),
            (args.run.workers != Some(0)).then_some(&args.run.ansible_playbook),
        ),
        Command::Worker(args) => (
            &args.run.store.database_url,
            args.run.redis_url.as_deref(),
            Some(&args.run.ansible_playbook),
        ),
        Command::Prune(args) => (&args.store.database_url, args.redis_url.as_deref(), None),
        Command::Migrate(store) => (&store.database_url, None, None),
        Command::Health(_) | Command::Keys(_) | Command::Credentials(_) | Command::Client(_) => {
            return Ok(())
        }
    };
    if !(database_url.starts_with("mysql://") || database_url.starts_with("sqlite:")) {
        return Err(Error::Config(format!(
            "--database-url (DATABASE_URL) {:?} is not a history URL; use \
             mysql://USER:PASSWORD@HOST:3306/DATABASE or sqlite://PATH",
            redact(database_url)
        )));
    }
    if let Some(url) = redis_url.filter(|u| !u.is_empty()) {
        fred::prelude::Config::from_url(url).map_err(|e| {
            Error::Config(format!(
                "--redis-url (REDIS_URL) {:?} is not a Redis URL ({}); use \
                 redis://[:PASSWORD@]HOST:6379 (rediss:// for TLS)",
                redact(url),
                e.details()
            ))
        })?;
    }
    if let Some(program) = ansible_playbook {
        server::find_ansible_playbook(program)?;
    }
    Ok(())
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
    let ansi = ansible_runner_service::cli::colour_by_default(std::io::IsTerminal::is_terminal(
        &std::io::stderr(),
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
