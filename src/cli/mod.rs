//! The `chatd` command line: `serve` (the default), `token`, `migrate`, `dlq` and `health`.

mod dlq;
mod health;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app;
use crate::auth::{Authenticator, SecretSource, resolve_secret, short_secret_warning};
use crate::config::{Config, ConfigError, LogSettings, parse_duration};
use crate::model::UserId;
use crate::ready_file::Ready;
use crate::store::{self, MessageStore};
use dlq::DlqCommand;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "A real-time chat service: REST in, WebSockets out, history kept",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `chatd` alone serves, so it takes `serve`'s options too.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Once listening, write {"addr":"IP:PORT","metrics_addr":"IP:PORT" or null} to PATH
    /// (atomically; removed at shutdown): how whoever started chatd with PORT=0 learns its port.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and WebSockets (what `chatd` alone does).
    Serve(ServeArgs),
    /// Print an HS256 token for a user, signed with JWT_SECRET or the development secret.
    Token {
        /// The user the token names (its `id` claim).
        user_id: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Apply the store's migrations and exit (the server also applies them at start-up).
    Migrate,
    /// Dead letters: messages the store refused on every attempt.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Check that a running chatd answers: exit 0 if its /health says ok, else 1 (the
    /// container's health check).
    Health {
        /// The chatd to ask. Default: this machine's, on PORT (https when TLS_CERT is set, then
        /// without checking the certificate, which names the public host, not 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer, e.g. 3s.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
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
    let outcome = match cli.command {
        None => run_server(config, cli.serve).await,
        Some(Command::Serve(args)) => run_server(config, args).await,
        Some(Command::Token { user_id, ttl }) => token(&config, user_id, ttl),
        Some(Command::Migrate) => migrate(&config).await,
        Some(Command::Dlq { command }) => match init_logging(&config.log) {
            // Its audit lines go to stderr, beside the server's own.
            Ok(()) => dlq::run(&config, command).await,
            Err(e) => Err(e),
        },
        Some(Command::Health { url, timeout }) => health::run(&config, url, timeout).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`chatd dlq list | head`) is not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        // Found at start-up rather than while reading the variables (a cap that does not fit
        // `ulimit -n`, say), but a configuration error all the same.
        Err(e) if e.chain().any(|cause| cause.is::<ConfigError>()) => {
            eprintln!("chatd: invalid configuration: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("chatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(config: Config, args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&config.log)?;
    let running = app::start(config).await?;
    if let Some(path) = &args.ready_file
        && let Err(e) = (Ready {
            addr: running.addr(),
            metrics_addr: running.metrics_addr(),
        })
        .write(path)
    {
        // Whoever asked for the file waits for it: better a failed start than a silent one.
        running.shutdown().await;
        return Err(e);
    }
    app::shutdown_signal().await?;
    if let Some(path) = &args.ready_file {
        // Gone once chatd stops serving, so that a file there always means a chatd listening.
        let _ = std::fs::remove_file(path);
    }
    running.shutdown().await;
    Ok(())
}

fn token(config: &Config, user_id: String, ttl: Duration) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if config.identity.public_key.is_some() || config.identity.jwks_url.is_some() {
        anyhow::bail!(
            "chatd verifies tokens from your identity service (JWT_PUBLIC_KEY or JWKS_URL): get tokens there"
        );
    }
    let user = UserId::parse(user_id)?;
    let (secret, source) = resolve_secret(config)?;
    if let Some(warning) = short_secret_warning(&secret, source) {
        eprintln!("chatd: {warning}");
    }
    if source == SecretSource::Development {
        eprintln!(
            "chatd: JWT_SECRET is not set: signed with the development secret in {}",
            config.data_dir.display()
        );
    }
    writeln!(out, "{}", Authenticator::new(&secret).issue(&user, ttl))?;
    Ok(())
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = open_store(config).await?;
    let applied = store.migrate().await.context(STORE_HINT)?;
    if applied.is_empty() {
        writeln!(
            out,
            "{}: every migration was already applied",
            store.backend()
        )?;
    }
    for name in applied {
        writeln!(out, "{}: applied {name}", store.backend())?;
    }
    Ok(())
}

/// What a command that reaches the store says when it cannot.
pub(super) const STORE_HINT: &str =
    "reaching the store (check MONGO_URI, and that MongoDB runs and this host can reach it)";

/// The store the server uses. The embedded one lives in `DATA_DIR`, which the server creates:
/// a command run with a `DATA_DIR` that does not exist (mistyped, or another machine's) is
/// refused, rather than answering from a new, empty store.
pub(super) async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn MessageStore>> {
    if config.store.mongo.is_none() && !config.data_dir.is_dir() {
        anyhow::bail!(
            "DATA_DIR {} does not exist: set it to the directory the server uses (or MONGO_URI)",
            config.data_dir.display()
        );
    }
    Ok(store::open(&config.store, &config.data_dir, Default::default()).await?)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_says_what_it_is_for() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                assert!(arg.get_help().is_some(), "`{path}` {id} has no help");
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        check(&command, "chatd");
    }
}
