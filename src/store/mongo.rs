//! MongoDB, in the original service's document layout:
//! `{_id, sender, content, created_at (date), participants (sorted array)}`.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::{Client, Collection, Database};

use super::{Cursor, DeadLetterQuery, HistoryPage, MessageStore, StoreError, WriteOutcome};
use crate::config::MongoSettings;
use crate::model::{Channel, DeadLetter, Failure, Message, UserId};

struct MongoMigration {
    name: &'static str,
    command: &'static str,
}

const MIGRATIONS: &[MongoMigration] = &[MongoMigration {
    name: "0001_messages_history_index",
    command: include_str!("../../migrations/mongo/0001_messages_history_index.json"),
}];

const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "not now" rather than "not this document".
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

pub struct MongoStore {
    database: Database,
    messages: Collection<Document>,
    dead_letters: Collection<Document>,
    settings: MongoSettings,
    timeout: Duration,
}

impl MongoStore {
    /// Prepares a client; the connection itself is made by the first call, so chatd starts
    /// (and keeps accepting into its outbox) while MongoDB is away.
    pub async fn connect(settings: &MongoSettings, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&settings.uri)
            .await
            .map_err(|e| StoreError::Failed(format!("MONGO_URI: {e}")))?;
        options.app_name = Some("chatd".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        // A message leaves the outbox once the store has it: it must be durable when acknowledged.
        options.write_concern = Some(
            WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .journal(true)
                .build(),
        );
        let client =
            Client::with_options(options).map_err(|e| StoreError::Failed(e.to_string()))?;
        let database = client.database(&settings.database);
        Ok(Self {
            messages: database.collection(&settings.messages),
            dead_letters: database.collection(&settings.dead_letters),
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
        match tokio::time::timeout(self.timeout, call.into_future()).await {
            Ok(result) => result.map_err(|e| classify(&e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer from MongoDB within {:?}",
                self.timeout
            ))),
        }
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
                );
            let command: Document = serde_json::from_str(&command)
                .map_err(|e| StoreError::Failed(format!("migration {}: {e}", migration.name)))?;
            self.call(self.database.run_command(command)).await?;
            let record = doc! { "_id": migration.name, "applied_at": bson::DateTime::now() };
            match self.call(applied.insert_one(record)).await {
                Ok(_) => applied_now.push(migration.name.to_string()),
                // Another instance recorded it first; the command itself is idempotent.
                Err(StoreError::Failed(e)) if e.contains("E11000") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(applied_now)
    }

    async fn insert_batch(&self, messages: &[Message]) -> Result<Vec<WriteOutcome>, StoreError> {
        let docs: Vec<Document> = messages.iter().map(message_doc).collect();
        let call = self.messages.insert_many(docs).ordered(false);
        let errors = match tokio::time::timeout(self.timeout, call.into_future()).await {
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no answer from MongoDB within {:?}",
                    self.timeout
                )));
            }
            Ok(Ok(_)) => return Ok(vec![Ok(()); messages.len()]),
            Ok(Err(e)) => match e.kind.as_ref() {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors: Some(errors),
                    write_concern_error: None,
                    ..
                }) => errors.clone(),
                // Not about any one document (a write concern not met, lost permissions, an
                // unreachable server): no message is to blame, so none spends an attempt. The
                // batch waits and is written again; writes are idempotent.
                _ => return Err(StoreError::Unavailable(e.to_string())),
            },
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

    async fn history(
        &self,
        channel: &Channel,
        page: &HistoryPage,
    ) -> Result<Vec<Message>, StoreError> {
        let participants: Vec<&str> = channel.participants().iter().map(|p| p.as_str()).collect();
        let mut filter = doc! { "participants": participants };
        if let Some(cursor) = &page.before {
            let at = bson::DateTime::from_millis(cursor.created_at.timestamp_millis());
            filter.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": at } },
                    doc! { "created_at": at, "_id": { "$lt": id_bson(&cursor.id) } },
                ],
            );
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
        // String ids only: the original's ObjectId documents predate any id a client can pass.
        let filter =
            doc! { "participants": user.as_str(), "_id": { "$gt": after, "$type": "string" } };
        let found = self
            .call(
                self.messages
                    .find(filter)
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        let docs: Vec<Document> = self.call(found.try_collect()).await?;
        docs.iter().map(message_from_doc).collect()
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

fn message_doc(m: &Message) -> Document {
    doc! {
        "_id": id_bson(&m.id),
        "sender": &m.sender,
        "content": &m.content,
        "created_at": bson::DateTime::from_millis(m.created_at.timestamp_millis()),
        "participants": &m.participants,
    }
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
    StoreError::Failed(format!(
        "document {id}: {field} is missing or of the wrong type"
    ))
}

fn failure_kind(code: i32, code_name: Option<&str>) -> String {
    match (code, code_name) {
        (DUPLICATE_KEY, _) => "duplicate_key".into(),
        (121, _) => "document_validation".into(),
        (_, Some(name)) if !name.is_empty() => name.to_string(),
        (code, _) => format!("write_error_{code}"),
    }
}

/// Driver errors that waiting cures make MongoDB unavailable; the rest fail the call.
fn classify(e: &mongodb::error::Error) -> StoreError {
    let unavailable = match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => true,
        ErrorKind::Command(command) => UNAVAILABLE_CODES.contains(&command.code),
        _ => false,
    } || e.contains_label("RetryableWriteError");
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Failed(e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

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
                .replace("\"{{dead_letters}}\"", "\"d\"");
            let parsed: Document = serde_json::from_str(&command).unwrap();
            assert!(parsed.contains_key("createIndexes"), "{}", m.name);
        }
    }
}
