//! The consumer database: one MongoDB collection per image type, each document keyed by its
//! image id as `_id` (and holding it as `id` too, the field readers see). Keying by `_id` needs
//! no index of our own: with a separate unique index on `id`, every write maintained two
//! indexes and cost the database ~1.5× the CPU (docs/benchmarks.md, "Keyed by `_id`"). Holds
//! the batched, stale-safe write path the worker uses and the reads the API and the load tool
//! use.
//!
//! # The stale guard
//! Every event becomes one statement of an *unordered* `update` command, in one of two forms
//! ([`Statement`]). The first attempt *replaces*:
//! `{q: {_id: id}, u: [{$replaceWith: {$cond: [{$lt|$lte: ["$updated_at", T]}, {$literal:
//! <full document>}, "not older"]}}], upsert: true}`. When the stored version passes the guard
//! (or none is stored: a missing field compares below a date) the document is replaced or
//! inserted; otherwise `$replaceWith` gets a string, and the statement fails on its own.
//! `$literal` keeps the document's values verbatim (a string `"$x"` is not a field path). The
//! query names only `_id`, so the server finds the document by a point lookup: the stand-in
//! skips its plan emulation for such a query, a third of its CPU per write (docs/benchmarks.md,
//! "The write as a pipeline"), and MongoDB retries an upsert that races a concurrent insert of
//! the same `_id` as an update (SERVER-37124).
//!
//! A statement the first attempt did not apply *settles* in the second form, which keeps the
//! guard in the query: `{q: {_id: id, updated_at: {$lte: T}}, u: <full document>, upsert:
//! true}`. A stored version equal or older matches and is replaced (a tie goes to the later
//! event); a newer one makes the upsert insert a second `_id`, which the `_id` index refuses
//! with E11000: *stale*. A document the server will not store fails there with its own code
//! (*rejected*). So no error code of the first form is relied on, only that it fails.
//!
//! The statements of one command must touch distinct ids (the worker collapses a batch to the
//! newest event per id), so they commute and unordered is safe: one failing statement never
//! stops the others. The raw `update` command works on MongoDB 6.0+ (pipeline updates since
//! 4.2), unlike `Client::bulk_write`, which needs 8.0.
//!
//! # Outcomes from the reply ([`OutcomesFrom::Reply`], the stream's way)
//! The first command replaces only a strictly older version (`$lt`): a statement listed in the
//! reply's `upserted` is *inserted*, one that did not fail replaced an older version
//! (*updated*). The failed ones (stored version equal or newer, or a document fault) settle:
//! matched means the stored version is equal, replaced so the later event of a tie wins
//! (*unchanged*); refused is *stale*. No read, and no reliance on the reply's `nModified`,
//! which servers count differently for an identical replacement. An event that is new or newer
//! than what is stored costs one round trip; a replay or a stale event two.
//!
//! # Outcomes from a read ([`OutcomesFrom::Read`], while most recent events are replays)
//! One indexed read of the stored versions labels every event, known-stale events are not
//! sent, and the rest are replaced guarded with `$lte` (those that became stale since the read
//! settle). Two round trips always, but a replayed event costs one statement instead of a
//! failed one and a retry: cheaper when most are replays.
//! The stream and the backfill alike pick one way per command ([`crate::outcome_policy::Chooser`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{
    doc, rawdoc, Bson, Document, RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf,
};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use tokio::task::JoinHandle;

use crate::config::{ms, MongoConfig};
use crate::image::ImageId;
use crate::outcome::{Outcome, Rejected, WriteResult};
use crate::version::Version;

/// The unique index on `id` that leafsync kept before documents were keyed by `_id`: a
/// collection that has it holds documents with their own ObjectId `_id`, which the writes of
/// this version would never match (see [`Store::check_layout`]).
pub const LEGACY_ID_INDEX: &str = "id_unique";
/// MongoDB's "namespace not found" (listing the indexes of a collection not created yet).
const NAMESPACE_NOT_FOUND: i32 = 26;
/// MongoDB's duplicate-key error code.
pub const DUPLICATE_KEY: i32 = 11000;
/// Statements of one command stay below this many bytes (the server takes 16 MiB per command).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Server error codes meaning "try again later" (MongoDB's retryable and state-change codes).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 46, 50, 64, 89, 91, 112, 117, 133, 134, 150, 189, 262, 9001, 10058, 10107, 11600, 11602,
    13435, 13436, 48090,
];

/// Server error codes that, for a one-document write, mean the document itself is at fault
/// (so it is dead-lettered) rather than the server or the request's form: too large, a field
/// name the server will not store, a value it cannot index.
const DOCUMENT_FAULT_CODES: &[i32] = &[
    52,    // DollarPrefixedFieldName
    55,    // InvalidDBRef
    56,    // EmptyFieldName
    57,    // DottedFieldName
    10334, // BSONObjectTooLarge
    17280, // KeyTooLong
    17419, // document too large after the update
    17420, // replacement too large
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

/// Why a database operation failed: the driver's error, kept whole, or an error the server
/// put in an otherwise successful reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// The driver's error (network, server selection, a command error, …).
    #[error(transparent)]
    Driver(mongodb::error::Error),
    /// A `writeErrors` or `writeConcernError` entry of a reply.
    #[error("server error {code}: {message}")]
    Reply {
        /// Server error code.
        code: i32,
        /// Server message.
        message: String,
    },
    /// A shared operation ended without a result (e.g. the task running it was cancelled).
    #[error("{0}")]
    Abandoned(&'static str),
    /// A collection written by an older leafsync, in a layout this version does not write.
    #[error("{0}")]
    Layout(String),
}

/// A failed database operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MongoDB {op} failed ({class}): {cause}", class = self.class.as_str())]
pub struct StoreError {
    /// Retry or not.
    pub class: ErrorClass,
    /// What was being done.
    pub op: &'static str,
    /// The underlying error.
    #[source]
    pub cause: Cause,
}

impl StoreError {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// Whether the server refused the login (wrong user, password or auth source in `mongo.uri`):
    /// no retry fixes it. When another operation met the refusal first, the driver reports it
    /// only as text inside a pool-cleared or server-selection error, so those are read too.
    pub fn is_refused_login(&self) -> bool {
        let Cause::Driver(e) = &self.cause else {
            return false;
        };
        match &*e.kind {
            ErrorKind::Authentication { .. } => true,
            ErrorKind::ConnectionPoolCleared { message, .. }
            | ErrorKind::ServerSelection { message, .. } => {
                message.contains("Authentication failed")
                    || message.contains("AuthenticationFailed")
            }
            _ => self.code() == Some(18),
        }
    }

    /// This refused login as the permanent error that names the key to fix.
    pub fn into_refused_login(self) -> Self {
        Self {
            op: "login with the credentials of configuration key `mongo.uri`",
            class: ErrorClass::Permanent,
            ..self
        }
    }

    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<i32> {
        match &self.cause {
            Cause::Driver(e) => server_code(e),
            Cause::Reply { code, .. } => Some(*code),
            Cause::Abandoned(_) | Cause::Layout(_) => None,
        }
    }

    /// Whether a refusal of a one-document write is that document's fault (size, field names)
    /// rather than the server's (auth, configuration): decided by the server's code alone.
    pub fn is_document_fault(&self) -> bool {
        self.class == ErrorClass::Permanent && self.code().is_some_and(is_document_fault_code)
    }

    /// An error of the driver, classified.
    pub fn driver(op: &'static str, e: mongodb::error::Error) -> Self {
        Self {
            class: error_class(&e),
            op,
            cause: Cause::Driver(e),
        }
    }

    /// A shared operation that ended without a result: worth retrying.
    pub fn abandoned(op: &'static str, why: &'static str) -> Self {
        Self {
            class: ErrorClass::Transient,
            op,
            cause: Cause::Abandoned(why),
        }
    }

    fn reply(op: &'static str, code: i32, message: String) -> Self {
        Self {
            class: if is_transient_code(code) {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            },
            op,
            cause: Cause::Reply { code, message },
        }
    }
}

/// Whether a server error code blames the document written (so it is dead-lettered).
fn is_document_fault_code(code: i32) -> bool {
    DOCUMENT_FAULT_CODES.contains(&code)
}

/// Whether a server error code means "try again later".
pub fn is_transient_code(code: i32) -> bool {
    TRANSIENT_CODES.contains(&code)
}

fn server_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// Labels first (the server and driver mark retryable errors), then the error's kind and code.
fn error_class(e: &mongodb::error::Error) -> ErrorClass {
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
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Write(WriteFailure::WriteConcernError(_)) => ErrorClass::Transient,
        _ if server_code(e).is_some_and(is_transient_code) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// How long a readiness ping may stay in flight before a probe abandons it and asks anew.
pub const PROBE_GIVE_UP: Duration = Duration::from_secs(10);

/// A readiness ping in flight, and when it started.
type Ping = (Instant, JoinHandle<bool>);

/// Handle to the consumer database.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    /// The readiness ping still in flight and when it started, shared by clones (see
    /// [`Store::answers_within`]).
    probe: Arc<tokio::sync::Mutex<Option<Ping>>>,
}

impl Store {
    /// Ends the client's server sessions and closes its connections, for at most 2 s (the
    /// server may be down); every clone of this store fails afterwards. Call it last, before
    /// the runtime stops: a client that is only dropped ends its sessions from a task spawned
    /// on drop, which panics inside the driver when the runtime is already shutting down.
    /// Immediate: an operation abandoned by a drain timeout must not hold the exit.
    pub async fn shutdown(&self) {
        let close = self.db.client().clone().shutdown().immediate(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
    }

    /// Connects and waits until the server answers a ping, for at most
    /// `mongo.startup_timeout_ms`.
    pub async fn connect(cfg: &MongoConfig, app: &str) -> Result<Self, StoreError> {
        // The URI's password is masked (`Secret`'s Display): the operator sees which server.
        tracing::debug!(uri = %cfg.uri, database = %cfg.database, "connecting to MongoDB");
        let store = Self::connect_lazy(cfg, app).await?;
        let deadline = Instant::now() + ms(cfg.startup_timeout_ms);
        loop {
            match store.ping().await {
                Ok(()) => return Ok(store),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "MongoDB not answering yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) if e.is_refused_login() => return Err(e.into_refused_login()),
                Err(e) => {
                    return Err(StoreError {
                        op: "ping within mongo.startup_timeout_ms",
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
                // The driver's message never contains the password; the op names the key.
                op: "parse of configuration key `mongo.uri`",
                cause: Cause::Driver(e),
            })?;
        opts.app_name = Some(app.to_owned());
        opts.server_selection_timeout = Some(ms(cfg.connect_timeout_ms));
        opts.connect_timeout = Some(ms(cfg.connect_timeout_ms));
        opts.max_pool_size = Some(cfg.max_pool_size);
        let client = Client::with_options(opts).map_err(|e| StoreError::driver("connect", e))?;
        let db = client.database(&cfg.database);
        Ok(Self {
            db,
            probe: Arc::default(),
        })
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
            .map_err(|e| StoreError::driver("ping", e))
    }

    /// Whether the server answers a ping within `timeout` (for readiness probes).
    ///
    /// A ping that outlives its probe is not cancelled but left to the next probe: the driver
    /// closes a connection dropped mid-command, and on a link where a new connection's handshake
    /// plus one round trip exceeds `timeout`, each probe would then be cut in turn. At most one
    /// ping is in flight, so a hung server holds one pooled connection, not one per probe; one
    /// older than [`PROBE_GIVE_UP`] is abandoned, so a connection that went silent (a network
    /// cut that healed) cannot keep the answer at no for as long as TCP keeps retrying.
    pub async fn answers_within(&self, timeout: Duration) -> bool {
        let mut slot = self.probe.lock().await;
        let (since, mut ping) = match slot.take() {
            Some((since, running)) if !running.is_finished() && since.elapsed() < PROBE_GIVE_UP => {
                (since, running)
            }
            // None yet, one that answered late, or one in flight for too long: ask anew.
            old => {
                if let Some((_, stuck)) = old {
                    stuck.abort();
                }
                let store = self.clone();
                let ping = async move { store.ping().await.is_ok() };
                (Instant::now(), tokio::spawn(ping))
            }
        };
        match tokio::time::timeout(timeout, &mut ping).await {
            Ok(answer) => answer.unwrap_or(false),
            Err(_) => {
                *slot = Some((since, ping));
                false
            }
        }
    }

    /// Refuses (permanently) a collection still in the layout of leafsync before documents were
    /// keyed by `_id`, recognised by its [`LEGACY_ID_INDEX`]: this version's writes would miss
    /// every stored document and be refused as stale. A collection not created yet is fine; the
    /// `_id` index comes with it.
    pub async fn check_layout(&self, collections: &[&str]) -> Result<(), StoreError> {
        for name in collections {
            let indexes = match self.collection(name).list_index_names().await {
                Ok(indexes) => indexes,
                Err(e) if server_code(&e) == Some(NAMESPACE_NOT_FOUND) => continue,
                Err(e) => return Err(StoreError::driver("list indexes", e)),
            };
            if indexes.iter().any(|i| i == LEGACY_ID_INDEX) {
                return Err(StoreError {
                    class: ErrorClass::Permanent,
                    op: "layout check",
                    cause: Cause::Layout(format!(
                        "collection `{name}` has the index `{LEGACY_ID_INDEX}` of an older \
                         leafsync, whose documents are keyed by an ObjectId `_id`; this version \
                         keys them by the image id. Rebuild the consumer database (docs/operations.md, \
                         \"Upgrading\")"
                    )),
                });
            }
        }
        Ok(())
    }

    /// The stored image `id`, without MongoDB's `_id`.
    pub async fn get(&self, collection: &str, id: ImageId) -> Result<Option<Document>, StoreError> {
        self.collection(collection)
            .find_one(doc! {"_id": id.get()})
            .projection(doc! {"_id": 0})
            .await
            .map_err(|e| StoreError::driver("find", e))
    }

    /// The stored images among `ids` (those that exist), by id, without MongoDB's `_id`: one
    /// `_id` `$in` query for many lookups (the API coalesces concurrent reads into these).
    pub async fn get_many(
        &self,
        collection: &str,
        ids: &[ImageId],
    ) -> Result<HashMap<ImageId, Document>, StoreError> {
        let wanted: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let mut out = HashMap::with_capacity(ids.len());
        self.scan(
            collection,
            doc! {"_id": {"$in": wanted}},
            doc! {"_id": 0},
            "find",
            |d| {
                if let Some(id) = d.get_i64("id").ok().and_then(|id| ImageId::new(id).ok()) {
                    out.insert(id, d);
                }
            },
        )
        .await?;
        Ok(out)
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
            .map_err(|e| StoreError::driver("count", e))
    }

    /// Every stored image of a collection, streamed to `f` (for verification tools).
    pub async fn for_each(
        &self,
        collection: &str,
        f: impl FnMut(Document),
    ) -> Result<(), StoreError> {
        self.scan(collection, doc! {}, doc! {"_id": 0}, "find", f)
            .await
    }

    /// Streams the documents of `collection` matching `filter`, shaped by `projection`, to `f`.
    async fn scan(
        &self,
        collection: &str,
        filter: Document,
        projection: Document,
        op: &'static str,
        mut f: impl FnMut(Document),
    ) -> Result<(), StoreError> {
        let mut cursor = self
            .collection(collection)
            .find(filter)
            .projection(projection)
            .await
            .map_err(|e| StoreError::driver(op, e))?;
        while let Some(d) = cursor
            .try_next()
            .await
            .map_err(|e| StoreError::driver(op, e))?
        {
            f(d);
        }
        Ok(())
    }

    /// [`write_batch_with`](Self::write_batch_with) with the outcomes taken from the reply,
    /// the stream's way.
    pub async fn write_batch(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<Vec<WriteResult>, StoreError> {
        self.write_batch_with(collection, docs, OutcomesFrom::Reply)
            .await
    }

    /// Writes documents (each with `id` and `updated_at`, all ids distinct) with the stale
    /// guard described in the module docs, and says what happened to each, in order.
    /// `Err` means nothing can be said about which were applied; retrying the same call is
    /// safe because every statement is idempotent. Documents are raw BSON because that is the
    /// smallest form to hold while a batch is in flight and what goes on the wire anyway.
    pub async fn write_batch_with(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        from: OutcomesFrom,
    ) -> Result<Vec<WriteResult>, StoreError> {
        let (mut outcomes, to_write, guard) = match from {
            OutcomesFrom::Read => {
                let outcomes: Vec<WriteResult> = self
                    .predict(collection, docs)
                    .await?
                    .into_iter()
                    .map(Ok)
                    .collect();
                let to_write: Vec<usize> = (0..docs.len())
                    .filter(|&i| outcomes[i] != Ok(Outcome::Stale))
                    .collect();
                (outcomes, to_write, Guard::NotNewer)
            }
            // A statement the reply neither lists as upserted nor refuses replaced an older one.
            OutcomesFrom::Reply => (
                vec![Ok(Outcome::Updated); docs.len()],
                (0..docs.len()).collect(),
                Guard::Older,
            ),
        };
        let mut refused = Vec::new();
        self.write_chunks(
            collection,
            docs,
            &to_write,
            Statement::Replace(guard),
            &mut outcomes,
            &mut refused,
        )
        .await?;
        if refused.is_empty() {
            return Ok(outcomes);
        }
        // Not applied: with `$lt`, the stored version is equal or newer; with either guard,
        // perhaps newer since the read, or a document the server will not store. They settle
        // with the guard in the query: matched is a tie, refused by the `_id` index is stale.
        if from == OutcomesFrom::Reply {
            for &i in &refused {
                outcomes[i] = Ok(Outcome::Unchanged);
            }
        }
        let mut again = Vec::new();
        self.write_chunks(
            collection,
            docs,
            &refused,
            Statement::Settle,
            &mut outcomes,
            &mut again,
        )
        .await?;
        for i in again {
            outcomes[i] = Ok(Outcome::Stale);
        }
        Ok(outcomes)
    }

    /// The statements `indexes` of `docs`, in commands below the size limit.
    async fn write_chunks(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        indexes: &[usize],
        form: Statement,
        outcomes: &mut [WriteResult],
        refused: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        for chunk in chunks(docs, indexes) {
            match self
                .update_command(collection, docs, &chunk, form, outcomes, refused)
                .await
            {
                Ok(()) => {}
                // The whole command was refused, perhaps for one oversized document: write one
                // by one so only the faulty document is rejected and the rest go through.
                Err(e) if !e.is_transient() => {
                    for &i in &chunk {
                        self.write_one(collection, docs, i, form, outcomes, refused)
                            .await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What [`write_batch`](Self::write_batch) would do with each document right now
    /// (inserted, updated, unchanged or stale), without writing: one indexed read of the stored
    /// versions. A dry run's answer; a concurrent writer may change it before a real write.
    pub async fn predict(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<Vec<Outcome>, StoreError> {
        let stored = self.stored_versions(collection, docs).await?;
        Ok(docs
            .iter()
            .map(|d| {
                match (
                    d.get_i64("id").ok().and_then(|id| stored.get(&id)),
                    version_of(d),
                ) {
                    (None, _) => Outcome::Inserted,
                    (Some(&old), Some(new)) if !new.replaces(old) => Outcome::Stale,
                    (Some(&old), Some(new)) if old == new => Outcome::Unchanged,
                    (Some(_), _) => Outcome::Updated,
                }
            })
            .collect())
    }

    /// The first attempt alone (`$lte`), without the version pre-read, the settling or
    /// per-event outcomes: the raw write ceiling that `leafsync-loadtest bench-db` compares the
    /// worker with.
    pub async fn write_batch_unclassified(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<(), StoreError> {
        let mut outcomes = vec![Ok(Outcome::Inserted); docs.len()];
        let mut refused = Vec::new();
        for chunk in chunks(docs, &(0..docs.len()).collect::<Vec<_>>()) {
            self.update_command(
                collection,
                docs,
                &chunk,
                Statement::Replace(Guard::NotNewer),
                &mut outcomes,
                &mut refused,
            )
            .await?;
        }
        Ok(())
    }

    async fn stored_versions(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
    ) -> Result<HashMap<i64, Version>, StoreError> {
        let ids: Vec<i64> = docs.iter().filter_map(|d| d.get_i64("id").ok()).collect();
        let mut out = HashMap::with_capacity(docs.len());
        self.scan(
            collection,
            doc! {"_id": {"$in": ids}},
            doc! {"_id": 0, "id": 1, "updated_at": 1},
            "find versions",
            |d| {
                if let (Ok(id), Ok(at)) = (d.get_i64("id"), d.get_datetime("updated_at")) {
                    out.insert(id, Version::from_bson(*at));
                }
            },
        )
        .await?;
        Ok(out)
    }

    async fn write_one(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        index: usize,
        form: Statement,
        outcomes: &mut [WriteResult],
        refused: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        match self
            .update_command(collection, docs, &[index], form, outcomes, refused)
            .await
        {
            Err(e) if e.is_document_fault() => {
                outcomes[index] = Err(Rejected {
                    code: e.code().unwrap_or_default(),
                    message: e.cause.to_string(),
                });
                Ok(())
            }
            other => other,
        }
    }

    /// One unordered `update` command over `indexes` of `docs`; records insertions and
    /// rejections in `outcomes` and the statements not applied in `refused` ([`read_reply`]).
    async fn update_command(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        indexes: &[usize],
        form: Statement,
        outcomes: &mut [WriteResult],
        refused: &mut Vec<usize>,
    ) -> Result<(), StoreError> {
        let command = update_command(collection, form, indexes.iter().map(|&i| docs[i].as_ref()));
        let reply = self
            .db
            .run_raw_command(command)
            .await
            .map_err(|e| StoreError::driver("update", e))?;
        read_reply(&reply, form, indexes, outcomes, refused)
    }
}

/// Reads an `update` command's reply: insertions into `outcomes`, and the statements not
/// applied into `refused`: for [`Statement::Replace`], every one that failed with a code not
/// worth retrying (they settle, which classifies them); for [`Statement::Settle`], the
/// duplicate-key refusals (stale), while document faults go into `outcomes`. Any other
/// statement error fails the whole command (to be retried; the statements that succeeded are
/// idempotent), with one classification for statement and command errors: only the codes in
/// [`DOCUMENT_FAULT_CODES`] blame the document. A code the server sent as a 64-bit integer or a
/// double reads the same as an `int`.
fn read_reply(
    reply: &Document,
    form: Statement,
    indexes: &[usize],
    outcomes: &mut [WriteResult],
    refused: &mut Vec<usize>,
) -> Result<(), StoreError> {
    let message = |d: &Document| d.get_str("errmsg").unwrap_or_default().to_owned();
    if let Ok(wce) = reply.get_document("writeConcernError") {
        // A write concern error is worth retrying whatever its code.
        return Err(StoreError {
            class: ErrorClass::Transient,
            ..StoreError::reply("update", code_field(wce), message(wce))
        });
    }
    let statement = |d: &Document| int_field(d, "index").and_then(|i| indexes.get(i).copied());
    for u in reply.get_array("upserted").into_iter().flatten() {
        if let Some(index) = u.as_document().and_then(statement) {
            outcomes[index] = Ok(Outcome::Inserted);
        }
    }
    let mut failed = None;
    for e in reply.get_array("writeErrors").into_iter().flatten() {
        let Some((e, index)) = e.as_document().and_then(|e| Some((e, statement(e)?))) else {
            continue;
        };
        match code_field(e) {
            code if matches!(form, Statement::Replace(_)) && !is_transient_code(code) => {
                refused.push(index);
            }
            DUPLICATE_KEY => refused.push(index),
            code if is_document_fault_code(code) => {
                outcomes[index] = Err(Rejected {
                    code,
                    message: message(e),
                });
            }
            code => failed = Some(StoreError::reply("update", code, message(e))),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A reply's `code`, whatever numeric type the server chose ([`int_field`]); 0 when absent or
/// not a number: no class of its own, so retried, never blamed on a document.
fn code_field(d: &Document) -> i32 {
    int_field(d, "code")
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(0)
}

/// The version of a document to write (`None` if it has no `updated_at` date).
fn version_of(d: &RawDocument) -> Option<Version> {
    d.get_datetime("updated_at").ok().map(Version::from_bson)
}

/// A non-negative integer field of a reply, whatever numeric type the server chose; `None`
/// when absent.
fn int_field(d: &Document, key: &str) -> Option<usize> {
    match d.get(key)? {
        Bson::Int32(v) => usize::try_from(*v).ok(),
        Bson::Int64(v) => usize::try_from(*v).ok(),
        Bson::Double(v) if *v >= 0.0 => Some(*v as usize),
        _ => None,
    }
}

/// How [`Store::write_batch_with`] learns each event's outcome (see the module docs;
/// [`crate::outcome_policy`] chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomesFrom {
    /// From the write's own reply: one round trip for a new or newer event.
    Reply,
    /// From a read of the stored versions before the write: cheaper when most are replays.
    Read,
}

/// Which stored versions a statement may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Strictly older (`$lt`).
    Older,
    /// Older or equal (`$lte`): the version rule, a tie goes to the later event.
    NotNewer,
}

/// The two forms of a statement (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// The first attempt: found by `_id` alone, replaced if the stored version passes the
    /// guard, failed otherwise.
    Replace(Guard),
    /// For those the first attempt did not apply: the `$lte` guard in the query, so a newer
    /// stored version is refused with E11000.
    Settle,
}

/// The unordered, stale-guarded `update` command for `docs`, as it goes on the wire.
pub fn update_command<'a>(
    collection: &str,
    form: Statement,
    docs: impl IntoIterator<Item = &'a RawDocument>,
) -> RawDocumentBuf {
    let mut updates = RawArrayBuf::new();
    for d in docs {
        updates.push(match form {
            Statement::Replace(guard) => replace_statement(d, guard),
            Statement::Settle => settle_statement(d),
        });
    }
    rawdoc! {"update": collection, "updates": updates, "ordered": false}
}

/// A field of a document to write, as it goes into a statement (`null` when absent).
fn field<'a>(d: &'a RawDocument, key: &str) -> RawBsonRef<'a> {
    d.get(key).ok().flatten().unwrap_or(RawBsonRef::Null)
}

/// The first attempt at `d`: `{q: {_id}, u: [{$replaceWith: {$cond: …}}], upsert: true}`.
fn replace_statement(d: &RawDocument, guard: Guard) -> RawDocumentBuf {
    let op = match guard {
        Guard::Older => "$lt",
        Guard::NotNewer => "$lte",
    };
    let new = with_id_first(d);
    let mut versions = RawArrayBuf::new();
    versions.push("$updated_at");
    versions.push(field(d, "updated_at").to_raw_bson());
    let mut passes = RawDocumentBuf::new();
    passes.append(op, versions);
    let mut choice = RawArrayBuf::new();
    choice.push(passes);
    choice.push(rawdoc! {"$literal": new});
    // Not a document: `$replaceWith` fails, and so does this statement alone.
    choice.push("not older");
    let mut pipeline = RawArrayBuf::new();
    pipeline.push(rawdoc! {"$replaceWith": {"$cond": choice}});
    let mut query = RawDocumentBuf::new();
    query.append_ref("_id", field(d, "id"));
    let mut statement = RawDocumentBuf::new();
    statement.append("q", query);
    statement.append("u", pipeline);
    statement.append("upsert", true);
    statement.append("multi", false);
    statement
}

/// `d` with `_id` = its `id` as the first field, as an insert would store it: `d`'s elements
/// are copied behind it as they are (appending them field by field: 44,936 instead of
/// 44,073 instructions per event, `scripts/bench-cpu`). Events never carry an `_id` (the decoder refuses one); if `d` has
/// one anyway it is left out, so the server never sees two.
fn with_id_first(d: &RawDocument) -> RawDocumentBuf {
    let mut new = RawDocumentBuf::new();
    new.append_ref("_id", field(d, "id"));
    if d.get("_id").ok().flatten().is_some() {
        for (key, value) in d.iter().flatten() {
            if key != "_id" {
                new.append_ref(key, value);
            }
        }
        return new;
    }
    // A document is its length (4 bytes), its elements and a terminating 0.
    let mut bytes = new.into_bytes();
    bytes.pop();
    let elements = d.as_bytes();
    bytes.extend_from_slice(&elements[4..elements.len() - 1]);
    bytes.push(0);
    let length = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    RawDocumentBuf::from_bytes(bytes).unwrap_or_else(|_| d.to_owned())
}

/// The settling of `d`: `{q: {_id, updated_at: {$lte: T}}, u: d, upsert: true}`.
fn settle_statement(d: &RawDocument) -> RawDocumentBuf {
    let mut lte = RawDocumentBuf::new();
    lte.append_ref("$lte", field(d, "updated_at"));
    let mut query = RawDocumentBuf::new();
    query.append_ref("_id", field(d, "id"));
    query.append("updated_at", lte);
    let mut statement = RawDocumentBuf::new();
    statement.append("q", query);
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
        // Each statement carries the document plus its query and pipeline.
        let size = docs[i].as_bytes().len() + 256;
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
    use mongodb::bson::DateTime;

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

    /// An `update` reply with one write error at statement 0 whose code has the given type.
    fn reply_with_error(code: Bson) -> Document {
        doc! {"ok": 1, "n": 0, "writeErrors": [{"index": 0, "code": code, "errmsg": "x"}]}
    }

    type Read = (Result<(), StoreError>, Vec<WriteResult>, Vec<usize>);

    fn read_as(form: Statement, reply: &Document) -> Read {
        let (mut outcomes, mut refused) = (vec![Ok(Outcome::Updated)], Vec::new());
        let r = read_reply(reply, form, &[0], &mut outcomes, &mut refused);
        (r, outcomes, refused)
    }

    /// The settling pass, where error codes classify the statement.
    fn read(reply: &Document) -> Read {
        read_as(Statement::Settle, reply)
    }

    #[test]
    fn a_first_attempt_that_fails_settles_unless_worth_retrying() {
        // Whatever the code, a failed replacement is not classified here: the settling pass
        // does it, so no code of the deliberate failure is relied on.
        for code in [40228, DUPLICATE_KEY, 10334, 2, 0] {
            let (r, outcomes, refused) = read_as(
                Statement::Replace(Guard::Older),
                &reply_with_error(code.into()),
            );
            assert!(r.is_ok(), "code {code}");
            assert_eq!(refused, vec![0], "code {code}");
            assert!(outcomes[0].is_ok(), "code {code}: not dead-lettered yet");
        }
        let (r, _, refused) = read_as(
            Statement::Replace(Guard::NotNewer),
            &reply_with_error(91.into()),
        );
        assert!(r.unwrap_err().is_transient());
        assert!(refused.is_empty());
    }

    #[test]
    fn the_first_attempt_finds_by_id_alone_and_keeps_values_verbatim() {
        let d = rawdoc! {"id": 7_i64, "updated_at": DateTime::from_millis(5), "note": "$x"};
        let command = update_command("potato", Statement::Replace(Guard::Older), [d.as_ref()]);
        let command = Document::try_from(command.as_ref()).unwrap();
        let statement = command.get_array("updates").unwrap()[0]
            .as_document()
            .unwrap();
        assert_eq!(statement.get_document("q").unwrap(), &doc! {"_id": 7_i64});
        let stage = statement.get_array("u").unwrap()[0].as_document().unwrap();
        let choice = stage
            .get_document("$replaceWith")
            .and_then(|r| r.get_array("$cond"))
            .unwrap();
        assert_eq!(
            choice[0],
            Bson::from(doc! {"$lt": ["$updated_at", DateTime::from_millis(5)]})
        );
        assert_eq!(
            choice[1],
            Bson::from(doc! {"$literal": {
                "_id": 7_i64, "id": 7_i64,
                "updated_at": DateTime::from_millis(5), "note": "$x",
            }})
        );
        assert!(
            !matches!(choice[2], Bson::Document(_)),
            "the else branch must fail"
        );
        // A document that carries an `_id` of its own still gets exactly one: the id.
        let own = with_id_first(&rawdoc! {"_id": 9_i64, "id": 7_i64, "x": 1});
        assert_eq!(
            Document::try_from(own.as_ref()).unwrap(),
            doc! {"_id": 7_i64, "id": 7_i64, "x": 1}
        );
        let settle = update_command("potato", Statement::Settle, [d.as_ref()]);
        let settle = Document::try_from(settle.as_ref()).unwrap();
        let statement = settle.get_array("updates").unwrap()[0]
            .as_document()
            .unwrap();
        assert_eq!(
            statement.get_document("q").unwrap(),
            &doc! {"_id": 7_i64, "updated_at": {"$lte": DateTime::from_millis(5)}}
        );
    }

    #[test]
    fn statement_errors_blame_the_document_only_for_document_fault_codes() {
        // BSONObjectTooLarge: the document is dead-lettered, the command succeeds.
        let (r, outcomes, refused) = read(&reply_with_error(Bson::Int32(10334)));
        assert!(r.is_ok());
        assert_eq!(outcomes[0].as_ref().unwrap_err().code, 10334);
        assert!(refused.is_empty());
        // Unauthorized (13) and BadValue (2) are not the document's fault: the command fails and
        // is retried, the event is never dead-lettered.
        for code in [13, 2] {
            let (r, outcomes, _) = read(&reply_with_error(Bson::Int32(code)));
            let e = r.expect_err("a failed command");
            assert_eq!(e.code(), Some(code));
            assert!(!e.is_document_fault());
            assert!(outcomes[0].is_ok(), "not dead-lettered: {outcomes:?}");
        }
        // A retryable code fails the command as transient.
        let (r, _, _) = read(&reply_with_error(Bson::Int32(91)));
        assert!(r.unwrap_err().is_transient());
    }

    #[test]
    fn codes_of_any_numeric_type_read_the_same() {
        let (r, _, refused) = read(&reply_with_error(Bson::Int64(i64::from(DUPLICATE_KEY))));
        assert!(r.is_ok());
        assert_eq!(refused, vec![0], "an int64 11000 is a duplicate key");
        let (r, outcomes, _) = read(&reply_with_error(Bson::Double(10334.0)));
        assert!(r.is_ok());
        assert_eq!(outcomes[0].as_ref().unwrap_err().code, 10334);
        // No code at all: retried, never blamed on the document.
        let (r, outcomes, _) = read(&doc! {"ok": 1, "writeErrors": [{"index": 0, "errmsg": "?"}]});
        assert!(r.is_err());
        assert!(outcomes[0].is_ok());
    }

    #[test]
    fn write_concern_errors_are_transient_whatever_their_code() {
        let reply =
            doc! {"ok": 1, "n": 1, "writeConcernError": {"code": Bson::Int64(64), "errmsg": "w"}};
        let (r, _, _) = read(&reply);
        let e = r.unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.code(), Some(64));
    }
}
