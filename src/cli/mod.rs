//! The `chatd` command line: `serve` (the default) and `token`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::SecondsFormat;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app;
use crate::auth::{Authenticator, SecretSource, resolve_secret};
use crate::config::{Config, ConfigError, LogSettings, parse_duration};
use crate::model::UserId;
use crate::ready_file::Ready;
use crate::store;
use crate::store::{DeadLetterView, DeadLetters, ReplayResult, Selection};

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
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only those whose error contains this text (ignoring case).
        #[arg(long)]
        error: Option<String>,
    },
    /// Show one dead letter in full, as JSON.
    Show { id: String },
    /// Write dead letters back into the messages; each is removed once it is stored.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter; needs --yes.
        #[arg(long, requires = "yes")]
        all: bool,
        #[arg(long)]
        yes: bool,
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
        Some(Command::Dlq { command }) => dlq(&config, command).await,
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
    let store = store::open(&config.store, &config.data_dir, Default::default()).await?;
    let applied = store.migrate().await?;
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

/// Works on the store's dead letters directly, so it works whether or not a server runs.
async fn dlq(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = store::open(&config.store, &config.data_dir, Default::default()).await?;
    store.migrate().await?;
    let dead_letters = DeadLetters::new(store);
    match command {
        DlqCommand::List { limit, error } => {
            let letters = dead_letters.list(limit, error).await?;
            if letters.is_empty() {
                writeln!(out, "no dead letters")?;
            }
            for letter in letters {
                writeln!(
                    out,
                    "{}  attempts={}  last_failed_at={}  {}: {}",
                    letter.id(),
                    letter.attempts,
                    letter
                        .last_failed_at
                        .to_rfc3339_opts(SecondsFormat::Millis, true),
                    letter.error.kind,
                    letter.error.message
                )?;
            }
        }
        DlqCommand::Show { id } => match dead_letters.show(&id).await? {
            Some(letter) => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&DeadLetterView::from(letter))?
            )?,
            None => anyhow::bail!("no dead letter has the id {id}"),
        },
        DlqCommand::Replay { ids, all, dry_run } => {
            let outcomes = dead_letters.replay(selection(ids, all), dry_run).await?;
            let mut unsuccessful = 0;
            for outcome in &outcomes {
                match &outcome.result {
                    ReplayResult::Replayed => writeln!(out, "replayed {}", outcome.id)?,
                    ReplayResult::WouldReplay => writeln!(out, "would replay {}", outcome.id)?,
                    ReplayResult::NotFound => {
                        unsuccessful += 1;
                        writeln!(out, "not found {}", outcome.id)?;
                    }
                    ReplayResult::Failed { error } => {
                        unsuccessful += 1;
                        writeln!(out, "failed {}: {error}", outcome.id)?;
                    }
                }
            }
            if unsuccessful > 0 {
                anyhow::bail!(
                    "{unsuccessful} of {} dead letters were not replayed",
                    outcomes.len()
                );
            }
        }
        DlqCommand::Purge { ids, all, yes: _ } => {
            let asked = ids.len();
            let purged = dead_letters.purge(selection(ids, all)).await?;
            writeln!(out, "purged {purged} dead letters")?;
            if !all && (purged as usize) < asked {
                anyhow::bail!(
                    "{} of the {asked} ids were not dead letters",
                    asked - purged as usize
                );
            }
        }
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn selection(ids: Vec<String>, all: bool) -> Selection {
    if all {
        Selection::All
    } else {
        Selection::Ids(ids)
    }
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
