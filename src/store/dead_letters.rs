//! The operators' side of dead letters (messages the store refused on every attempt, carried
//! here by the relay's dead-letter mover): list, show, replay and purge, from the admin API and
//! the CLI alike.
//!
//! Every replay and purge leaves an audit line (target `chatd::audit`, at info): who (the
//! admin API, inside its request's span with the request id, or the CLI, with the operating
//! system's user), what, which ids and how it went. Replays are also added up in the store, by
//! result, so that `chat_dlq_replays_total` counts the CLI's and every instance's alike.

use std::sync::Arc;

use serde::Serialize;

use super::{DeadLetterQuery, MessageStore, StoreError};
use crate::error::Chain;
use crate::model::DeadLetter;
use crate::telemetry::DlqReplayResult;

/// Dead letters read per page when an operator acts on all of them.
const PAGE: u32 = 500;

/// A dead letter as operators see it, from the API and the CLI alike: its id first, then the
/// letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    id: String,
    #[serde(flatten)]
    letter: DeadLetter,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        Self {
            id: letter.id().to_string(),
            letter,
        }
    }
}

/// Which dead letters an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    All,
}

/// What replaying one dead letter did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    pub id: String,
    #[serde(flatten)]
    pub result: ReplayResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReplayResult {
    /// Written to the messages (or found already there) and removed from the dead letters.
    Replayed,
    /// A dry run: it would have been replayed.
    WouldReplay,
    NotFound,
    /// The store refused it again; it stays a dead letter.
    Failed {
        error: String,
    },
}

/// Who acts on dead letters, for the audit lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// The admin API (its request id is on the request's span).
    Http,
    /// `chatd dlq`, run by this operating-system user.
    Cli { user: String },
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http => f.write_str("http"),
            Self::Cli { user } => write!(f, "cli:{user}"),
        }
    }
}

/// The operators' view of the store's dead letters.
pub struct DeadLetters {
    store: Arc<dyn MessageStore>,
    operator: Operator,
}

impl DeadLetters {
    pub fn new(store: Arc<dyn MessageStore>, operator: Operator) -> Self {
        Self { store, operator }
    }

    pub async fn list(
        &self,
        limit: u32,
        error_contains: Option<String>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let query = DeadLetterQuery {
            limit,
            error_contains,
            after: None,
        };
        self.store.dead_letters(&query).await
    }

    pub async fn show(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        self.store.dead_letter(id).await
    }

    /// Writes each selected message into the messages first and removes its dead letter only
    /// once that write succeeded. A message that is already stored counts as written, so a
    /// replay never stores anything twice. A store error on one letter is that letter's
    /// outcome; only failing to read the list of all letters ends the replay early.
    pub async fn replay(
        &self,
        selection: Selection,
        dry_run: bool,
    ) -> Result<Vec<ReplayOutcome>, StoreError> {
        let mut outcomes = Vec::new();
        match selection {
            Selection::Ids(ids) => {
                for id in ids {
                    let result = match self.store.dead_letter(&id).await {
                        Ok(Some(letter)) => self.replay_one(&letter, dry_run).await,
                        Ok(None) => ReplayResult::NotFound,
                        Err(e) => ReplayResult::Failed {
                            error: Chain(&e).to_string(),
                        },
                    };
                    outcomes.push(ReplayOutcome { id, result });
                }
            }
            Selection::All => {
                let mut after = None;
                loop {
                    let page = self.page(after.take()).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id().to_string());
                    for letter in &page {
                        let result = self.replay_one(letter, dry_run).await;
                        outcomes.push(ReplayOutcome {
                            id: letter.id().to_string(),
                            result,
                        });
                    }
                }
            }
        }
        if !dry_run {
            self.audit_replays(&outcomes).await;
        }
        Ok(outcomes)
    }

    /// One audit line per replayed id, and the totals added up in the store. A total the store
    /// does not take is logged and lost: the replays themselves happened.
    async fn audit_replays(&self, outcomes: &[ReplayOutcome]) {
        let mut totals = std::collections::BTreeMap::<&str, u64>::new();
        for outcome in outcomes {
            let (result, error) = match &outcome.result {
                ReplayResult::Replayed | ReplayResult::WouldReplay => {
                    (DlqReplayResult::Replayed, "")
                }
                ReplayResult::Failed { error } => (DlqReplayResult::Failed, error.as_str()),
                ReplayResult::NotFound => (DlqReplayResult::NotFound, ""),
            };
            tracing::info!(target: "chatd::audit", by = %self.operator, action = "replay", id = %outcome.id, result = result.as_str(), error, "dead letter replay");
            *totals.entry(result.as_str()).or_default() += 1;
        }
        for (result, count) in totals {
            if let Err(e) = self.store.count_replays(result, count).await {
                tracing::warn!(error = %Chain(&e), result, count, "the store did not add these replays to its totals");
            }
        }
    }

    /// Removes the selected dead letters for good; returns how many there were.
    pub async fn purge(&self, selection: Selection) -> Result<u64, StoreError> {
        match selection {
            Selection::Ids(ids) => self.purge_ids(&ids).await,
            Selection::All => {
                let mut purged = 0;
                loop {
                    let page = self.page(None).await?;
                    if page.is_empty() {
                        return Ok(purged);
                    }
                    let ids: Vec<String> = page.iter().map(|l| l.id().to_string()).collect();
                    purged += self.purge_ids(&ids).await?;
                }
            }
        }
    }

    async fn purge_ids(&self, ids: &[String]) -> Result<u64, StoreError> {
        let removed = self.store.remove_dead_letters(ids).await;
        let outcome = match &removed {
            Ok(removed) => format!("{removed} removed"),
            Err(e) => format!("failed: {}", Chain(e)),
        };
        tracing::info!(target: "chatd::audit", by = %self.operator, action = "purge", ids = %ids.join(","), %outcome, "dead letters purged");
        removed
    }

    async fn page(&self, after: Option<String>) -> Result<Vec<DeadLetter>, StoreError> {
        let query = DeadLetterQuery {
            limit: PAGE,
            error_contains: None,
            after,
        };
        self.store.dead_letters(&query).await
    }

    async fn replay_one(&self, letter: &DeadLetter, dry_run: bool) -> ReplayResult {
        if dry_run {
            return ReplayResult::WouldReplay;
        }
        let id = letter.id().to_string();
        let failed = |error: String| ReplayResult::Failed { error };
        match self
            .store
            .insert_batch(std::slice::from_ref(&letter.message))
            .await
        {
            Ok(outcomes) => match outcomes.into_iter().next() {
                Some(Ok(())) => match self.store.remove_dead_letters(&[id]).await {
                    Ok(_) => ReplayResult::Replayed,
                    // Stored, but still listed: a second replay finds it stored and removes it.
                    Err(e) => failed(format!(
                        "stored, but the dead letter could not be removed: {}",
                        Chain(&e)
                    )),
                },
                Some(Err(failure)) => failed(failure.message),
                None => failed("the store answered no outcome".into()),
            },
            Err(e) => failed(Chain(&e).to_string()),
        }
    }
}
