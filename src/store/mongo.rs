//! MongoDB, in the original service's document layout:
//! `{_id, sender, content, created_at (date), participants (sorted array)}`.

mod channels;

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{
    ErrorKind, IndexedWriteError, InsertManyError, RETRYABLE_WRITE_ERROR, SYSTEM_OVERLOADED_ERROR,
    TRANSIENT_TRANSACTION_ERROR, WriteFailure,
};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::{Client, Collection, Database};

use super::{Cursor, DeadLetterQuery, HistoryPage, MessageStore, StoreError, WriteOutcome};
use crate::config::MongoSettings;
use crate::model::{Channel, DeadLetter, Failure, Message, UserId};

struct MongoMigration {
    name: &'static str,
    command: &'static str,
}

const MIGRATIONS: &[MongoMigration] = &[
    MongoMigration {
        name: "0001_messages_history_index",
        command: include_str!("../../migrations/mongo/0001_messages_history_index.json"),
    },
    MongoMigration {
        name: "0002_messages_recovery_index",
        command: include_str!("../../migrations/mongo/0002_messages_recovery_index.json"),
    },
    MongoMigration {
        name: "0003_messages_stream_index",
        command: include_str!("../../migrations/mongo/0003_messages_stream_index.json"),
    },
    MongoMigration {
        name: "0004_channels_index",
        command: include_str!("../../migrations/mongo/0004_channels_index.json"),
    },
    MongoMigration {
        name: "0005_channels_backfill",
        command: include_str!("../../migrations/mongo/0005_channels_backfill.json"),
    },
];

const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "not now" rather than "not this document": the server is
/// failing over, shutting down, unreachable from the node that answered, or cannot make the
/// write durable. Whether a command failed with one or one document of an `insert_many` did,
/// no message is to blame: the batch waits in the outbox (the store is down meanwhile) and is
/// written again, idempotently, without spending attempts. The retryable-write codes of the
/// drivers' specification, plus the durability and resource failures.
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    13,    // Unauthorized: permissions lost, no message can be written
    24,    // LockTimeout
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed (WriteConcernTimeout): not made durable in time
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    100,   // UnsatisfiableWriteConcern: not enough members to make it durable
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10058, // LegacyNotPrimary
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11601, // Interrupted
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    14031, // OutOfDiskSpace
];

/// Error labels the driver puts on errors worth retrying as they are.
const UNAVAILABLE_LABELS: &[&str] = &[
    RETRYABLE_WRITE_ERROR,
    TRANSIENT_TRANSACTION_ERROR,
    SYSTEM_OVERLOADED_ERROR,
];

pub struct MongoStore {
    database: Database,
    messages: Collection<Document>,
    dead_letters: Collection<Document>,
    /// Each channel's last message for each participant, beside the messages: `channels`.
    channels: Collection<Document>,
    /// The dead-letter replays' totals: `{_id: result, count}`, beside the dead letters.
    replays: Collection<Document>,
    settings: MongoSettings,
    timeout: Duration,
}

impl MongoStore {
    /// Prepares a client; the connection itself is made by the first call, so chatd starts
    /// (and keeps accepting into its outbox) while MongoDB is away.
    pub async fn connect(settings: &MongoSettings, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .map_err(DriverError)
            .context("MONGO_URI")
            .map_err(|e| StoreError::Failed(e.into()))?;
        options.app_name = Some("chatd".into());
        // Inside STORE_TIMEOUT, so that when no server answers, the driver's account of each
        // one (refused, not resolved) arrives before the bare timeout would.
        options.server_selection_timeout = Some(timeout.mul_f64(0.8));
        options.connect_timeout = Some(timeout);
        // A message leaves the outbox once the store has it: it must be durable when acknowledged.
        options.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
        let client =
            Client::with_options(options).map_err(|e| StoreError::Failed(DriverError(e).into()))?;
        let database = client.database(&settings.database);
        Ok(Self {
            messages: database.collection(&settings.messages),
            dead_letters: database.collection(&settings.dead_letters),
            replays: database.collection(&format!("{}_replays", settings.dead_letters)),
            channels: database.collection(&channels_collection(&settings.messages)),
            database,
            settings: settings.clone(),
            timeout,
        })
    }

    /// Runs one call under `STORE_TIMEOUT`: a server that stopped answering is unavailable.
    async fn call<T>(
        &self,
        call: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        self.timed(call).await?.map_err(classify)
    }

    /// Runs one call under `STORE_TIMEOUT` and gives back the driver's own answer, for callers
    /// that look into its error.
    async fn timed<T>(
        &self,
        call: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<mongodb::error::Result<T>, StoreError> {
        tokio::time::timeout(self.timeout, call.into_future())
            .await
            .map_err(|_| {
                let e = format!("no answer from MongoDB within {:?}", self.timeout);
                StoreError::Unavailable(e.into())
            })
    }

    /// Inserts the messages, one outcome each: see [`MessageStore::insert_batch`].
    async fn insert_messages(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError> {
        let docs: Vec<Document> = messages.iter().map(message_doc).collect();
        let errors = match self
            .timed(self.messages.insert_many(docs).ordered(false))
            .await?
        {
            Ok(_) => return Ok(vec![Ok(()); messages.len()]),
            Err(e) => refused_documents(e)?,
        };

        let mut outcomes = vec![Ok(()); messages.len()];
        let mut duplicates = Vec::new();
        for error in errors {
            let Some(outcome) = outcomes.get_mut(error.index) else {
                continue;
            };
            if error.code == DUPLICATE_KEY {
                duplicates.push((error.index, error.message));
            } else {
                *outcome = Err(Failure::new(
                    failure_kind(error.code, error.code_name.as_deref()),
                    error.message,
                ));
            }
        }
        if !duplicates.is_empty() {
            // A duplicate _id means "already stored" (a retry or a replay); a duplicate on any
            // other unique index is this message's own failure.
            let ids = duplicates
                .iter()
                .map(|(i, _)| id_bson(&messages[*i].id))
                .collect();
            let stored = self.stored_ids(ids).await?;
            for (i, message) in duplicates {
                if !stored.contains(&messages[i].id) {
                    outcomes[i] = Err(Failure::new("duplicate_key", message));
                }
            }
        }
        Ok(outcomes)
    }

    /// Which of these ids are already stored.
    async fn stored_ids(&self, ids: Vec<Bson>) -> Result<HashSet<String>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find(doc! { "_id": { "$in": ids } })
                    .projection(doc! { "_id": 1 }),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get("_id").map(id_text))
            .collect())
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.database.run_command(doc! { "ping": 1 }))
            .await
            .map(drop)
    }

    async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let applied: Collection<Document> = self.database.collection("_migrations");
        let mut applied_now = Vec::new();
        for migration in MIGRATIONS {
            if self
                .call(applied.find_one(doc! { "_id": migration.name }))
                .await?
                .is_some()
            {
                continue;
            }
            let command = migration
                .command
                .replace(
                    "\"{{messages}}\"",
                    &serde_json::to_string(&self.settings.messages).expect("a string"),
                )
                .replace(
                    "\"{{dead_letters}}\"",
                    &serde_json::to_string(&self.settings.dead_letters).expect("a string"),
                )
                .replace(
                    "\"{{channels}}\"",
                    &serde_json::to_string(self.channels.name()).expect("a string"),
                );
            let command: Document = serde_json::from_str(&command)
                .with_context(|| format!("migration {}", migration.name))
                .map_err(|e| StoreError::Failed(e.into()))?;
            self.call(self.database.run_command(command)).await?;
            let record = doc! { "_id": migration.name, "applied_at": bson::DateTime::now() };
            match self.timed(applied.insert_one(record)).await? {
                Ok(_) => applied_now.push(migration.name.to_string()),
                // Another instance recorded it first; the command itself is idempotent.
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(applied_now)
    }

    /// The messages first, then the channels summary: a batch that fails in between is written
    /// again (the messages idempotently) and the summary is brought up to date then.
    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError> {
        let outcomes = self.insert_messages(messages).await?;
        let stored: Vec<&Message> = messages
            .iter()
            .zip(&outcomes)
            .filter_map(|(m, outcome)| outcome.is_ok().then_some(m))
            .collect();
        self.note_channels(&stored).await?;
        Ok(outcomes)
    }

    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let participants: Vec<&str> = channel.participants().iter().map(|p| p.as_str()).collect();
        let mut filter = doc! { "participants": participants };
        if let Some(cursor) = &page.before {
            filter.insert("$or", sorts_before("", cursor.created_at, &cursor.id));
        }
        let found = self
            .call(
                self.messages
                    .find(filter)
                    .sort(doc! { "created_at": -1, "_id": -1 })
                    .skip(page.offset)
                    .limit(i64::from(page.limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter().map(message_from_doc).collect()
    }

    async fn missed_by(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find(missed_filter(user, after))
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter().map(message_from_doc).collect()
    }

    async fn missed_ids(
        &self,
        user: &UserId,
        after: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // `participants` is an array, so the index is multikey and cannot cover the query:
        // each id costs a document read, `limit` at most, with only `_id` sent back.
        let found = self
            .call(
                self.messages
                    .find(missed_filter(user, after))
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter()
            .map(|doc| {
                doc.get_str("_id")
                    .map(str::to_owned)
                    .context("a message id")
                    .map_err(|e| StoreError::Failed(e.into()))
            })
            .collect()
    }

    async fn channels(
        &self,
        user: &UserId,
        before: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        self.channel_page(user, before, limit).await
    }

    async fn locate(&self, id: &str) -> Result<Option<Cursor>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find_one(doc! { "_id": id_bson(id) })
                    .projection(doc! { "created_at": 1 }),
            )
            .await?;
        found
            .map(|doc| {
                Ok(Cursor {
                    created_at: date(&doc, "created_at")?,
                    id: id.to_string(),
                })
            })
            .transpose()
    }

    async fn sequence_of(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find_one(doc! { "_id": id_bson(id) })
                    .projection(doc! { "seq": 1 }),
            )
            .await?;
        Ok(found.as_ref().and_then(sequence))
    }

    async fn missed_in_stream(
        &self,
        user: &UserId,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find(stream_filter(user, after, through))
                    .sort(doc! { "seq": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter().map(message_from_doc).collect()
    }

    async fn missed_sequences(
        &self,
        user: &UserId,
        after: u64,
        through: u64,
        limit: u32,
    ) -> Result<Vec<u64>, StoreError> {
        let found = self
            .call(
                self.messages
                    .find(stream_filter(user, after, through))
                    .sort(doc! { "seq": 1 })
                    .projection(doc! { "_id": 0, "seq": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter()
            .map(|doc| sequence(doc).ok_or_else(|| malformed(doc, "seq")))
            .collect()
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let id = id_bson(letter.id());
        let doc = doc! {
            "_id": id.clone(),
            "message": message_doc(&letter.message),
            "error": { "kind": &letter.error.kind, "message": &letter.error.message },
            "attempts": i64::from(letter.attempts),
            "first_failed_at": bson::DateTime::from_millis(letter.first_failed_at.timestamp_millis()),
            "last_failed_at": bson::DateTime::from_millis(letter.last_failed_at.timestamp_millis()),
            "instance": &letter.instance,
        };
        self.call(
            self.dead_letters
                .replace_one(doc! { "_id": id }, doc)
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        let mut filter = Document::new();
        if let Some(after) = &query.after {
            filter.insert("_id", doc! { "$gt": id_bson(after) });
        }
        if let Some(text) = &query.error_contains {
            filter.insert(
                "error.message",
                doc! { "$regex": regex_literal(text), "$options": "i" },
            );
        }
        let found = self
            .call(
                self.dead_letters
                    .find(filter)
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(query.limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter().map(dead_letter_from_doc).collect()
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let found = self
            .call(self.dead_letters.find_one(doc! { "_id": id_bson(id) }))
            .await?;
        found.as_ref().map(dead_letter_from_doc).transpose()
    }

    async fn count_dead_letters(&self) -> Result<u64, StoreError> {
        self.call(self.dead_letters.count_documents(doc! {})).await
    }

    async fn count_replays(&self, result: &str, count: u64) -> Result<(), StoreError> {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.call(
            self.replays
                .update_one(doc! { "_id": result }, doc! { "$inc": { "count": count } })
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn replay_totals(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let found = self.call(self.replays.find(doc! {})).await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter()
            .map(|doc| {
                let result = doc.get_str("_id").map_err(|_| malformed(doc, "_id"))?;
                let count = match doc.get("count") {
                    Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
                    Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
                    _ => None,
                };
                Ok((
                    result.to_string(),
                    count.ok_or_else(|| malformed(doc, "count"))?,
                ))
            })
            .collect()
    }

    async fn remove_dead_letters(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids: Vec<Bson> = ids.iter().map(|id| id_bson(id)).collect();
        let result = self
            .call(
                self.dead_letters
                    .delete_many(doc! { "_id": { "$in": ids } }),
            )
            .await?;
        Ok(result.deleted_count)
    }
}

/// The `$or` that a document's `(created_at, _id)`, under `prefix` (`""` for a message, or
/// `"last."` for a channel summary's last message), sorts before `(created_at, id)` in
/// history's order.
fn sorts_before(prefix: &str, created_at: DateTime<Utc>, id: &str) -> Vec<Document> {
    let at = bson::DateTime::from_millis(created_at.timestamp_millis());
    let (created, ids) = (format!("{prefix}created_at"), format!("{prefix}_id"));
    vec![
        doc! { created.as_str(): { "$lt": at } },
        doc! { created.as_str(): at, ids.as_str(): { "$lt": id_bson(id) } },
    ]
}

/// A message id as stored: the original's 24-hex ids are ObjectIds, chatd's are strings.
fn id_bson(id: &str) -> Bson {
    match ObjectId::parse_str(id) {
        Ok(oid) if id.len() == 24 => Bson::ObjectId(oid),
        _ => Bson::String(id.to_string()),
    }
}

fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The original's layout, plus `seq` in cluster mode: the stream sequence, as a 64-bit integer
/// (BSON has no unsigned one; sequences stay far below 2^63).
fn message_doc(m: &Message) -> Document {
    let mut doc = doc! {
        "_id": id_bson(&m.id),
        "sender": &m.sender,
        "content": &m.content,
        "created_at": bson::DateTime::from_millis(m.created_at.timestamp_millis()),
        "participants": &m.participants,
    };
    if let Some(sequence) = m.sequence.and_then(|s| i64::try_from(s).ok()) {
        doc.insert("seq", sequence);
    }
    doc
}

fn sequence(doc: &Document) -> Option<u64> {
    doc.get_i64("seq").ok().and_then(|s| u64::try_from(s).ok())
}

fn message_from_doc(doc: &Document) -> Result<Message, StoreError> {
    let id = doc
        .get("_id")
        .map(id_text)
        .ok_or_else(|| malformed(doc, "_id"))?;
    let text = |field: &str| {
        doc.get_str(field)
            .map(str::to_string)
            .map_err(|_| malformed(doc, field))
    };
    let participants = doc
        .get_array("participants")
        .map_err(|_| malformed(doc, "participants"))?
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_string)
                .ok_or_else(|| malformed(doc, "participants"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Message {
        id,
        sender: text("sender")?,
        content: text("content")?,
        participants,
        created_at: date(doc, "created_at")?,
        sequence: sequence(doc),
    })
}

fn dead_letter_from_doc(doc: &Document) -> Result<DeadLetter, StoreError> {
    let message = doc
        .get_document("message")
        .map_err(|_| malformed(doc, "message"))?;
    let error = doc
        .get_document("error")
        .map_err(|_| malformed(doc, "error"))?;
    let text = |d: &Document, field: &str| {
        d.get_str(field)
            .map(str::to_string)
            .map_err(|_| malformed(doc, field))
    };
    let attempts = match doc.get("attempts") {
        Some(Bson::Int64(n)) => u32::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u32::try_from(*n).ok(),
        _ => None,
    };
    Ok(DeadLetter {
        message: message_from_doc(message)?,
        error: Failure::new(text(error, "kind")?, text(error, "message")?),
        attempts: attempts.ok_or_else(|| malformed(doc, "attempts"))?,
        first_failed_at: date(doc, "first_failed_at")?,
        last_failed_at: date(doc, "last_failed_at")?,
        instance: text(doc, "instance")?,
    })
}

fn date(doc: &Document, field: &str) -> Result<DateTime<Utc>, StoreError> {
    doc.get_datetime(field)
        .ok()
        .and_then(|at| DateTime::from_timestamp_millis(at.timestamp_millis()))
        .ok_or_else(|| malformed(doc, field))
}

fn malformed(doc: &Document, field: &str) -> StoreError {
    let id = doc.get("_id").map(id_text).unwrap_or_default();
    let e = format!("document {id}: {field} is missing or of the wrong type");
    StoreError::Failed(e.into())
}

fn failure_kind(code: i32, code_name: Option<&str>) -> String {
    match (code, code_name) {
        (DUPLICATE_KEY, _) => "duplicate_key".into(),
        (121, _) => "document_validation".into(),
        (_, Some(name)) if !name.is_empty() => name.to_string(),
        (code, _) => format!("write_error_{code}"),
    }
}

/// Driver errors that waiting cures make MongoDB unavailable; the rest fail the call (and the
/// relay narrows a failed batch down to the message that causes it).
fn classify(e: mongodb::error::Error) -> StoreError {
    if is_outage(&e) {
        StoreError::Unavailable(DriverError(e).into())
    } else {
        StoreError::Failed(DriverError(e).into())
    }
}

/// A driver error as chatd shows it, in logs and in dead letters alike. An `insert_many`
/// failure is summed up by its codes alone: its write errors' own texts can quote documents
/// of the batch (a duplicate key's value), and message content has no place in the log. Any
/// other driver error shows its own text, which includes its causes.
struct DriverError(mongodb::error::Error);

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

/// The driver's own `Debug` quotes the documents too.
impl fmt::Debug for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DriverError({self})")
    }
}

impl std::error::Error for DriverError {}

/// One line an operator can act on: the kind of failure in the driver's words, without its
/// labels, empty sources and topology dump; what no server answered names each server and why.
fn describe(e: &mongodb::error::Error) -> String {
    let (write_errors, write_concern_error) = match e.kind.as_ref() {
        ErrorKind::InsertMany(InsertManyError {
            write_errors,
            write_concern_error,
            ..
        }) => (write_errors, write_concern_error),
        ErrorKind::ServerSelection { message, .. } => return unreachable_servers(message),
        kind => return kind.to_string(),
    };
    let concern = write_concern_error
        .iter()
        .map(|error| format!("write concern {} {}", error.code, error.code_name));
    let documents = write_errors.iter().flatten().map(|error| {
        let name = error.code_name.as_deref().unwrap_or_default();
        format!("document {}: {} {name}", error.index, error.code)
    });
    let errors: Vec<String> = concern.chain(documents).collect();
    format!("insert_many failed: {}", errors.join("; "))
}

/// The driver's server-selection failure ("… Topology: { …, Servers: [ { Address: h:p, …,
/// Error: Kind: <why>, labels: … } ] }") as "no MongoDB server answered (h:p: <why>)".
fn unreachable_servers(message: &str) -> String {
    let servers: Vec<String> = message
        .split("Address: ")
        .skip(1)
        .map(|server| {
            let address = server.split(',').next().unwrap_or_default();
            let why = server
                .split_once("Error: ")
                .map(|(_, rest)| rest.trim_start_matches("Kind: "))
                .and_then(|rest| rest.split(", labels:").next())
                .unwrap_or("no answer");
            format!("{address}: {why}")
        })
        .collect();
    if servers.is_empty() {
        return format!("no MongoDB server answered: {message}");
    }
    format!("no MongoDB server answered ({})", servers.join("; "))
}

/// Whether an error means the server cannot take writes now, rather than that a request (or a
/// document in it) is wrong: the network, server selection, authentication, a write concern not
/// met, or an [`UNAVAILABLE_CODES`] code on the command or on any document of an `insert_many`.
fn is_outage(e: &mongodb::error::Error) -> bool {
    let by_kind = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::InvalidResponse { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(command) => UNAVAILABLE_CODES.contains(&command.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        ErrorKind::Write(WriteFailure::WriteError(error)) => {
            UNAVAILABLE_CODES.contains(&error.code)
        }
        ErrorKind::InsertMany(InsertManyError {
            write_errors,
            write_concern_error,
            ..
        }) => {
            write_concern_error.is_some()
                || write_errors
                    .iter()
                    .flatten()
                    .any(|error| UNAVAILABLE_CODES.contains(&error.code))
        }
        _ => false,
    };
    by_kind
        || UNAVAILABLE_LABELS
            .iter()
            .any(|label| e.contains_label(label))
}

/// The documents an `insert_many` refused, when that is all that went wrong; otherwise the
/// error for the batch as a whole.
fn refused_documents(e: mongodb::error::Error) -> Result<Vec<IndexedWriteError>, StoreError> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) if !is_outage(&e) => Ok(errors.clone()),
        _ => Err(classify(e)),
    }
}

/// The summary collection beside `messages`: see `channels`.
fn channels_collection(messages: &str) -> String {
    format!("{messages}_channels")
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(error)) => error.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// `text` as a regular expression that matches it literally.
fn regex_literal(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The messages of `user`'s channels after the message `after`, for a reconnect. String ids
/// only: the original's ObjectId documents predate any id a client can pass (a `$gt` on a
/// string compares within strings anyway; `$type` says so outright). The
/// {participants: 1, _id: 1} index (migrations/mongo/0002) serves the filter and an `_id`
/// sort, so however old `after` is, only the documents returned are read.
fn missed_filter(user: &UserId, after: &str) -> Document {
    doc! { "participants": user.as_str(), "_id": { "$gt": after, "$type": "string" } }
}

/// The messages of `user`'s channels in a range of stream sequences, for a reconnect in
/// cluster mode, served by the {participants: 1, seq: 1} index (migrations/mongo/0003).
fn stream_filter(user: &UserId, after: u64, through: u64) -> Document {
    let bound = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
    doc! { "participants": user.as_str(), "seq": { "$gt": bound(after), "$lte": bound(through) } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    #[test]
    fn before_a_cursor_is_an_earlier_time_or_the_same_time_and_a_lower_id() {
        let created_at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let at = bson::DateTime::from_millis(1_700_000_000_123);
        let id = "01a21374-77c6-7232-9e89-ba74aa8b26e6";
        assert_eq!(
            sorts_before("", created_at, id),
            vec![
                doc! { "created_at": { "$lt": at } },
                doc! { "created_at": at, "_id": { "$lt": id } },
            ]
        );
        assert_eq!(
            sorts_before("last.", created_at, id),
            vec![
                doc! { "last.created_at": { "$lt": at } },
                doc! { "last.created_at": at, "last._id": { "$lt": id } },
            ]
        );
    }

    #[test]
    fn ids_keep_their_stored_type() {
        let oid = "65f1c0ffee00000000000001";
        assert_eq!(
            id_bson(oid),
            Bson::ObjectId(ObjectId::parse_str(oid).unwrap())
        );
        assert_eq!(id_text(&id_bson(oid)), oid);
        let uuid = "01a21374-77c6-7232-9e89-ba74aa8b26e6";
        assert_eq!(id_bson(uuid), Bson::String(uuid.into()));
    }

    #[test]
    fn a_server_selection_failure_names_each_server_and_why_on_one_line() {
        let driver = "Server selection timeout: No available servers. Topology: { Type: Unknown, \
            Servers: [ { Address: db.invalid:27017, Type: Unknown, Error: Kind: I/O error: failed \
            to lookup address information: Name or service not known, labels: {}, source: None, \
            server response: None } ] }";
        assert_eq!(
            unreachable_servers(driver),
            "no MongoDB server answered (db.invalid:27017: I/O error: failed to lookup address \
             information: Name or service not known)"
        );
        assert_eq!(
            unreachable_servers("timed out"),
            "no MongoDB server answered: timed out"
        );
    }

    #[test]
    fn regex_literals_escape_metacharacters() {
        assert_eq!(regex_literal("a.b*(c)"), "a\\.b\\*\\(c\\)");
        assert_eq!(regex_literal("E11000 duplicate"), "E11000 duplicate");
    }

    #[test]
    fn every_migration_is_a_command_document() {
        for m in MIGRATIONS {
            let command = m
                .command
                .replace("\"{{messages}}\"", "\"m\"")
                .replace("\"{{dead_letters}}\"", "\"d\"")
                .replace("\"{{channels}}\"", "\"c\"");
            assert!(
                !command.contains("{{"),
                "{}: every placeholder is known",
                m.name
            );
            let parsed: Document = serde_json::from_str(&command).unwrap();
            assert!(
                ["createIndexes", "aggregate"]
                    .iter()
                    .any(|name| parsed.contains_key(name)),
                "{}",
                m.name
            );
        }
    }

    /// An `insert_many` failure as the driver reports it, from the server's reply fields.
    fn insert_many_failure(reply: Document) -> mongodb::error::Error {
        let failure: InsertManyError = bson::from_document(reply).unwrap();
        ErrorKind::InsertMany(failure).into()
    }

    fn write_error(index: i32, code: i32, message: &str) -> Document {
        doc! { "index": index, "code": code, "errmsg": message }
    }

    fn command_failure(code: i32) -> mongodb::error::Error {
        let failure: mongodb::error::CommandError =
            bson::from_document(doc! { "code": code, "errmsg": "from the server" }).unwrap();
        ErrorKind::Command(failure).into()
    }

    // The test server cannot be made to answer an insert with failover codes on single
    // documents, so these are checked on the errors the driver would build from such replies.
    #[test]
    fn a_failover_code_on_any_document_makes_the_whole_batch_wait() {
        for code in [
            10107, 13435, 13436, 189, 11600, 11602, 91, 6, 7, 89, 9001, 262, 64,
        ] {
            let e = insert_many_failure(doc! { "writeErrors": [
                write_error(0, DUPLICATE_KEY, "E11000 dup key: { content: \"secret\" }"),
                write_error(1, code, "not primary"),
            ] });
            match refused_documents(e) {
                Err(e @ StoreError::Unavailable(_)) => {
                    let shown = format!("{} {e:?}", Chain(&e));
                    assert!(
                        !shown.contains("secret"),
                        "the error quotes a document: {shown}"
                    );
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
    }

    #[test]
    fn documents_refused_for_their_own_sake_are_each_their_own_failure() {
        let e = insert_many_failure(doc! { "writeErrors": [
            write_error(0, DUPLICATE_KEY, "E11000 duplicate key"),
            write_error(2, 121, "Document failed validation"),
        ] });
        let refused = refused_documents(e).unwrap();
        let codes: Vec<(usize, i32)> = refused.iter().map(|e| (e.index, e.code)).collect();
        assert_eq!(codes, [(0, DUPLICATE_KEY), (2, 121)]);
    }

    #[test]
    fn a_write_concern_not_met_makes_the_whole_batch_wait() {
        let e = insert_many_failure(doc! {
            "writeErrors": [write_error(0, 121, "Document failed validation")],
            "writeConcernError": { "code": 64, "errmsg": "waiting for replication" },
        });
        assert!(matches!(
            refused_documents(e),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn commands_and_connections_are_classified_by_code_and_kind() {
        for code in [10107, 91, 189, 11602, 13] {
            assert!(
                matches!(classify(command_failure(code)), StoreError::Unavailable(_)),
                "{code}"
            );
        }
        for code in [2, 121, 10334] {
            assert!(
                matches!(classify(command_failure(code)), StoreError::Failed(_)),
                "{code}"
            );
        }
        let refused: mongodb::error::Error =
            ErrorKind::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(matches!(classify(refused), StoreError::Unavailable(_)));
        // A batch that fails as a whole for no outage reason is the relay's to narrow down.
        assert!(matches!(
            refused_documents(command_failure(2)),
            Err(StoreError::Failed(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_recognised_by_code() {
        let write: mongodb::error::WriteError =
            bson::from_document(doc! { "code": DUPLICATE_KEY, "errmsg": "no E-number here" })
                .unwrap();
        let e: mongodb::error::Error = ErrorKind::Write(WriteFailure::WriteError(write)).into();
        assert!(is_duplicate_key(&e));
        assert!(is_duplicate_key(&command_failure(DUPLICATE_KEY)));
        assert!(!is_duplicate_key(&command_failure(121)));
    }
}
