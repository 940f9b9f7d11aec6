//! The `chatd` command line: `serve` (the default) and `token`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app;
use crate::auth::{Authenticator, SecretSource, resolve_secret};
use crate::config::{Config, LogSettings, parse_duration};
use crate::model::UserId;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "A real-time chat service: REST in, WebSockets out, history kept"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and WebSockets (what `chatd` alone does).
    Serve,
    /// Print an HS256 token for a user, signed with JWT_SECRET or the development secret.
    Token {
        user_id: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

pub async fn run() -> ExitCode {
    let matches = Cli::command().after_help(Config::help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Token { user_id, ttl } => token(&config, user_id, ttl),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config.log)?;
    let running = app::start(config).await?;
    shutdown_signal().await?;
    running.shutdown().await;
    Ok(())
}

fn token(config: &Config, user_id: String, ttl: Duration) -> anyhow::Result<()> {
    let user = UserId::parse(user_id)?;
    let (secret, source) = resolve_secret(config)?;
    if source == SecretSource::Development {
        eprintln!(
            "chatd: JWT_SECRET is not set: signed with the development secret in {}",
            config.data_dir.display()
        );
    }
    println!("{}", Authenticator::new(&secret).issue(&user, ttl));
    Ok(())
}

fn init_logging(settings: &LogSettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.filter)?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if settings.json {
        logs.json().init();
    } else {
        logs.init();
    }
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
