//! The consumer database: one MongoDB collection per image type, documents keyed by a unique
//! index on `id`. Holds the batched, stale-safe write path the worker uses and the reads the API
//! and the load tool use.
//!
//! # The stale guard
//! Every event becomes one statement of an *unordered* `update` command:
//! `{q: {id, updated_at: {$lte: T}}, u: <full document>, upsert: true}`. When the stored
//! version is older or equal the filter matches and the document is replaced (equal ⇒ nothing
//! changes ⇒ *unchanged*); when none exists it is inserted; when a newer one exists the filter
//! misses, the upsert tries to insert a second `id` and the unique index refuses with E11000 ⇒
//! *stale*. Outcomes come from one indexed read of the stored versions before the write
//! (portable: servers differ in how they count an identical replacement), and known-stale
//! events are not sent at all. The statements of one command must touch distinct ids (the worker collapses a batch
//! to the newest event per id), so they commute and unordered is safe: one failing statement
//! never stops the others. An E11000 can also be a race with a concurrent insert of the same id
//! (two workers during a rebalance), so those statements are tried once more; a second E11000
//! is certainly stale. The raw `update` command works on MongoDB 6.0+, unlike
//! `Client::bulk_write`, which needs 8.0.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{
    doc, rawdoc, Bson, Document, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf,
};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use crate::config::{ms, MongoConfig};
use crate::image::ImageId;

/// Name of the unique index on `id`.
pub const ID_INDEX: &str = "id_unique";
/// MongoDB's duplicate-key error code.
pub const DUPLICATE_KEY: i32 = 11000;
/// Statements of one command stay below this many bytes (the server takes 16 MiB per command).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Server error codes meaning "try again later" (MongoDB's retryable and state-change codes).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 48090, 134, 46, 112,
    117, 133, 150, 10058,
];

/// Whether a failure is worth retrying. The worker's control flow hangs on this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network, server selection, not primary, timeouts, write concern: retry later.
    Transient,
    /// The request itself is wrong; retrying the same request cannot help.
    Permanent,
}

impl ErrorClass {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A failed database operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MongoDB {op} failed ({class}): {message}", class = self.class.as_str())]
pub struct StoreError {
    /// Retry or not.
    pub class: ErrorClass,
    /// What was being done.
    pub op: &'static str,
    /// The driver's or server's message.
    pub message: String,
}

impl StoreError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    fn new(op: &'static str, e: &mongodb::error::Error) -> Self {
        Self {
            class: classify(e),
            op,
            message: e.to_string(),
        }
    }
}

/// Whether a server error code means "try again later".
pub fn is_transient_code(code: i32) -> bool {
    TRANSIENT_CODES.contains(&code)
}

fn classify(e: &mongodb::error::Error) -> ErrorClass {
    if e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
        || e.contains_label(mongodb::error::SYSTEM_OVERLOADED_ERROR)
    {
        return ErrorClass::Transient;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. } => ErrorClass::Transient,
        ErrorKind::Command(c) if is_transient_code(c.code) => ErrorClass::Transient,
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => ErrorClass::Transient,
        ErrorKind::Write(WriteFailure::WriteError(w)) if is_transient_code(w.code) => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// What happened to one document of a batched write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Created.
    Inserted,
    /// Replaced an older version.
    Updated,
    /// The stored version has the same `updated_at`: an idempotent replay.
    Unchanged,
    /// A newer version is stored; nothing was written.
    Stale,
    /// Refused for its own content (e.g. too large); the caller dead-letters it.
    Rejected {
        /// Server error code (0 when the refusal came from the whole command).
        code: i32,
        /// Server message.
        message: String,
    },
}

/// Handle to the consumer database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Connects and waits until the server answers a ping, for at most
    /// `mongo.startup_timeout_ms`.
    pub async fn connect(cfg: &MongoConfig, app: &str) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(cfg, app).await?;
        let deadline = Instant::now() + ms(cfg.startup_timeout_ms);
        loop {
            match store.ping().await {
                Ok(()) => return Ok(store),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "MongoDB not answering yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(StoreError {
                        message: format!(
                            "no answer within mongo.startup_timeout_ms ({} ms): {}",
                            cfg.startup_timeout_ms, e.message
                        ),
                        ..e
                    })
                }
            }
        }
    }

    /// A client that connects on first use (the API starts even while MongoDB is down).
    pub async fn connect_lazy(cfg: &MongoConfig, app: &str) -> Result<Self, StoreError> {
        let mut opts = ClientOptions::parse(cfg.uri.expose())
            .await
            .map_err(|e| StoreError {
                class: ErrorClass::Permanent,
                op: "parse mongo.uri",
                // The driver's message never contains the password, but say which key it is.
                message: format!("invalid configuration: key `mongo.uri`: {e}"),
            })?;
        opts.app_name = Some(app.to_owned());
        opts.server_selection_timeout = Some(ms(cfg.connect_timeout_ms));
        opts.connect_timeout = Some(ms(cfg.connect_timeout_ms));
        opts.max_pool_size = Some(cfg.max_pool_size);
        let client = Client::with_options(opts).map_err(|e| StoreError::new("connect", &e))?;
        let db = client.database(&cfg.database);
        Ok(Self { db })
    }

    /// The underlying database, for tools that need more than this type offers.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// A collection of stored images.
    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Whether the server answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(drop)
            .map_err(|e| StoreError::new("ping", &e))
    }

    /// Whether the server answers a ping within `timeout` (for readiness probes).
    pub async fn answers_within(&self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.ping()).await, Ok(Ok(())))
    }

    /// Creates the unique index on `id` in each collection (a no-op when it exists).
    pub async fn ensure_indexes(&self, collections: &[&str]) -> Result<(), StoreError> {
        for name in collections {
            let model = IndexModel::builder()
                .keys(doc! {"id": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name(ID_INDEX.to_owned())
                        .build(),
                )
                .build();
            self.collection(name)
                .create_index(model)
                .await
                .map_err(|e| StoreError::new("create index", &e))?;
        }
        Ok(())
    }

    /// The stored image `id`, without MongoDB's `_id`.
    pub async fn get(&self, collection: &str, id: ImageId) -> Result<Option<Document>, StoreError> {
        self.collection(collection)
            .find_one(doc! {"id": id.get()})
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| StoreError::new("find", &e))
    }

    /// How many images a collection holds; soft-deleted ones only when `include_deleted`.
    pub async fn count(&self, collection: &str, include_deleted: bool) -> Result<u64, StoreError> {
        let filter = if include_deleted {
            doc! {}
        } else {
            doc! {"deleted": {"$ne": true}}
        };
        self.collection(collection)
            .count_documents(filter)
            .await
            .map_err(|e| StoreError::new("count", &e))
    }

    /// Every stored image of a collection, streamed to `f` (for verification tools).
    pub async fn for_each(
        &self,
        collection: &str,
        mut f: impl FnMut(Document),
    ) -> Result<(), StoreError> {
        let mut cursor = self
            .collection(collection)
            .find(doc! {})
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| StoreError::new("find", &e))?;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| StoreError::new("find", &e))?
        {
            f(d);
        }
        Ok(())
    }

    /// Writes documents (each with `id` and `updated_at`, all ids distinct) with the stale
    /// guard described in the module docs, and says what happened to each, in order.
    /// `Err` means nothing can be said about which were applied; retrying the same call is
    /// safe because every statement is idempotent. Documents are raw BSON because that is the
    /// smallest form to hold while a batch is in flight and what goes on the wire anyway.
    pub async fn write_batch(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        // One indexed read classifies every event exactly (inserted/updated/unchanged/stale);
        // the write's own guard still decides, so a concurrent writer cannot make us regress.
        let stored = self.stored_versions(collection, docs).await?;
        let mut outcomes = Vec::with_capacity(docs.len());
        let mut to_write = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let new = d.get_datetime("updated_at").ok();
            let outcome = match (d.get_i64("id").ok().and_then(|id| stored.get(&id)), new) {
                (None, _) => WriteOutcome::Inserted,
                (Some(old), Some(new)) if *old > new => WriteOutcome::Stale,
                (Some(old), Some(new)) if *old == new => WriteOutcome::Unchanged,
                (Some(_), _) => WriteOutcome::Updated,
            };
            if outcome != WriteOutcome::Stale {
                to_write.push(i);
            }
            outcomes.push(outcome);
        }
        let mut duplicates = Vec::new();
        for chunk in chunks(docs, &to_write) {
            match self
                .update_command(collection, docs, &chunk, &mut outcomes, &mut duplicates)
                .await
            {
                Ok(()) => {}
                // The whole command was refused, perhaps for one oversized document: write one
                // by one so only the faulty document is rejected and the rest go through.
                Err(e) if !e.is_transient() => {
                    for &i in &chunk {
                        self.write_one(collection, docs, i, &mut outcomes, &mut duplicates)
                            .await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !duplicates.is_empty() {
            // E11000 once may be a race with a concurrent insert of the same id; twice is stale.
            let mut again = Vec::new();
            self.update_command(collection, docs, &duplicates, &mut outcomes, &mut again)
                .await?;
            for i in again {
                outcomes[i] = WriteOutcome::Stale;
            }
        }
        Ok(outcomes)
    }

    /// The guarded upsert alone, without the version pre-read or per-event outcomes: the raw
    /// write ceiling that `leafsync-loadtest bench-db` compares the worker with.
    pub async fn write_batch_unclassified(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<(), StoreError> {
        let mut outcomes = vec![WriteOutcome::Inserted; docs.len()];
        let mut duplicates = Vec::new();
        for chunk in chunks(docs, &(0..docs.len()).collect::<Vec<_>>()) {
            self.update_command(collection, docs, &chunk, &mut outcomes, &mut duplicates)
                .await?;
        }
        Ok(())
    }

    async fn stored_versions(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<std::collections::HashMap<i64, mongodb::bson::DateTime>, StoreError> {
        let ids: Vec<i64> = docs.iter().filter_map(|d| d.get_i64("id").ok()).collect();
        let mut cursor = self
            .collection(collection)
            .find(doc! {"id": {"$in": ids}})
            .projection(doc! {"_id": 0, "id": 1, "updated_at": 1})
            .await
            .map_err(|e| StoreError::new("find versions", &e))?;
        let mut out = std::collections::HashMap::with_capacity(docs.len());
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| StoreError::new("find versions", &e))?
        {
            if let (Ok(id), Ok(at)) = (d.get_i64("id"), d.get_datetime("updated_at")) {
                out.insert(id, *at);
            }
        }
        Ok(out)
    }

    async fn write_one(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        index: usize,
        outcomes: &mut [WriteOutcome],
        duplicates: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        match self
            .update_command(collection, docs, &[index], outcomes, duplicates)
            .await
        {
            Err(e) if e.class == ErrorClass::Permanent && is_document_fault(&e.message) => {
                outcomes[index] = WriteOutcome::Rejected {
                    code: 0,
                    message: e.message,
                };
                Ok(())
            }
            other => other,
        }
    }

    /// One unordered `update` command over `indexes` of `docs`; records rejections in
    /// `outcomes` and duplicate-key refusals in `duplicates`.
    async fn update_command(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        indexes: &[usize],
        outcomes: &mut [WriteOutcome],
        duplicates: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        let mut updates = RawArrayBuf::new();
        for &i in indexes {
            updates.push(guarded_upsert(&docs[i]));
        }
        let command = rawdoc! {"update": collection, "updates": updates, "ordered": false};
        let reply = self
            .db
            .run_raw_command(command)
            .await
            .map_err(|e| StoreError::new("update", &e))?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(StoreError {
                class: ErrorClass::Transient,
                op: "update",
                message: format!("write concern error: {wce}"),
            });
        }
        let Ok(errors) = reply.get_array("writeErrors") else {
            return Ok(());
        };
        let mut transient = None;
        for e in errors.iter().filter_map(Bson::as_document) {
            let pos = int_field(e, "index") as usize;
            let Some(&index) = indexes.get(pos) else {
                continue;
            };
            let code = e.get_i32("code").unwrap_or(0);
            let message = e.get_str("errmsg").unwrap_or("").to_owned();
            if code == DUPLICATE_KEY {
                duplicates.push(index);
            } else if is_transient_code(code) {
                transient = Some(format!("write error {code}: {message}"));
            } else {
                outcomes[index] = WriteOutcome::Rejected { code, message };
            }
        }
        match transient {
            Some(message) => Err(StoreError {
                class: ErrorClass::Transient,
                op: "update",
                message,
            }),
            None => Ok(()),
        }
    }
}

/// Whether a command-level refusal of a one-document write is that document's fault
/// (size, field names) rather than the server's (auth, configuration).
fn is_document_fault(message: &str) -> bool {
    const SIGNS: &[&str] = &[
        "too large",
        "TooLarge",
        "exceeds",
        "size must be",
        "BSONObjectTooLarge",
        "DollarPrefixedFieldName",
        "FieldPath",
        "field name",
        "nesting depth",
    ];
    SIGNS.iter().any(|s| message.contains(s))
}

fn int_field(d: &Document, key: &str) -> u64 {
    match d.get(key) {
        Some(Bson::Int32(v)) => (*v).max(0) as u64,
        Some(Bson::Int64(v)) => (*v).max(0) as u64,
        Some(Bson::Double(v)) => v.max(0.0) as u64,
        _ => 0,
    }
}

/// One statement of the `update` command: replace `d` if the stored version is not newer,
/// insert it if there is none (see the module docs).
fn guarded_upsert(d: &RawDocument) -> RawDocumentBuf {
    let field = |key| d.get(key).ok().flatten().unwrap_or(RawBsonRef::Null);
    let mut lte = RawDocumentBuf::new();
    lte.append_ref("$lte", field("updated_at"));
    let mut filter = RawDocumentBuf::new();
    filter.append_ref("id", field("id"));
    filter.append("updated_at", lte);
    let mut statement = RawDocumentBuf::new();
    statement.append("q", filter);
    statement.append_ref("u", d);
    statement.append("upsert", true);
    statement.append("multi", false);
    statement
}

/// Splits `indexes` of `docs` into runs whose documents stay below the command size limit.
fn chunks(docs: &[RawDocumentBuf], indexes: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &i in indexes {
        // Each statement carries the document plus a small filter.
        let size = docs[i].as_bytes().len() + 128;
        if !current.is_empty() && bytes + size > MAX_COMMAND_BYTES {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_large_batches_and_keep_order() {
        let big = "x".repeat(3 * 1024 * 1024);
        let docs: Vec<RawDocumentBuf> = (0..5)
            .map(|i| rawdoc! {"id": i, "blob": big.clone()})
            .collect();
        let c = chunks(&docs, &[0, 1, 2, 3, 4]);
        assert!(c.len() >= 3, "{c:?}");
        assert_eq!(c.concat(), vec![0, 1, 2, 3, 4]);
        assert_eq!(chunks(&docs, &[1, 3]).concat(), vec![1, 3]);
        let small: Vec<RawDocumentBuf> = (0..500).map(|i| rawdoc! {"id": i}).collect();
        let all: Vec<usize> = (0..500).collect();
        assert_eq!(chunks(&small, &all).len(), 1);
        assert!(chunks(&[], &[]).is_empty());
    }

    #[test]
    fn transient_codes() {
        assert!(is_transient_code(10107)); // NotWritablePrimary
        assert!(is_transient_code(91)); // ShutdownInProgress
        assert!(!is_transient_code(DUPLICATE_KEY));
        assert!(!is_transient_code(10334)); // BSONObjectTooLarge: the document's fault
    }
}
