//! `chatd dlq`: operators' tools for dead letters, on the store itself.

use std::io::Write;

use anyhow::Context;
use chrono::SecondsFormat;
use clap::Subcommand;

use super::{STORE_HINT, open_store};
use crate::config::Config;
use crate::store::{DeadLetterView, DeadLetters, Operator, ReplayResult, Selection};

#[derive(Subcommand)]
pub(super) enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// The most to list.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only those whose error contains this text (ignoring case).
        #[arg(long)]
        error: Option<String>,
        /// One JSON array of dead letters (as `dlq show` prints each) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full, as JSON.
    Show {
        /// The message id of the dead letter.
        id: String,
    },
    /// Write dead letters back into the messages; each is removed once it is stored.
    Replay {
        /// The message ids of the dead letters to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// The message ids of the dead letters to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter; needs --yes.
        #[arg(long, requires = "yes")]
        all: bool,
        /// Confirms --all.
        #[arg(long)]
        yes: bool,
    },
}

/// Works on the store's dead letters directly, so it works whether or not a server runs.
pub(super) async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let store = open_store(config).await?;
    store.migrate().await.context(STORE_HINT)?;
    let dead_letters = DeadLetters::new(store, Operator::Cli { user: os_user() });
    match command {
        DlqCommand::List { limit, error, json } => {
            let letters = dead_letters.list(limit, error).await?;
            if json {
                let views: Vec<DeadLetterView> =
                    letters.into_iter().map(DeadLetterView::from).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
                return Ok(());
            }
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

fn selection(ids: Vec<String>, all: bool) -> Selection {
    if all {
        Selection::All
    } else {
        Selection::Ids(ids)
    }
}

/// Who runs the command, for the audit lines: `$USER`, else the numeric uid.
fn os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| format!("uid {}", real_uid()))
}

/// The real user id, as the kernel shows it in `/proc`.
fn real_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into())
}
