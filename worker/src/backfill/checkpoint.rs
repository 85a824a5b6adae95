//! Backfill progress, saved in the consumer database after every written page, so a crash or
//! Ctrl-C resumes where it stopped. One document per (image type, source):
//! `{_id: "potato|mongodb:producer.potato_images", position: {…}, finished, counts: {…}}`.
//! A finished pass stays recorded; the next run over the same source starts a new pass.
//!
//! Two runs over one source would overwrite each other's position (a Job made with
//! `kubectl create job --from` escapes the CronJob's `concurrencyPolicy: Forbid`), so a run
//! holds a *lease* on the checkpoint, `lease: {owner, expires}`, taken atomically: an upsert
//! guarded by "no lease, an expired one, or mine" that misses an existing `_id` is refused with
//! E11000 (the unique `_id`), the same mechanism as the stream's stale guard. Every save renews
//! it, and the end of the run releases it; a killed run's lease expires after [`LEASE`].

use std::time::Duration;

use leafsync_core::store::DUPLICATE_KEY;
use leafsync_core::{ImageType, Outcome, OutcomeCounts, Store, StoreError};
use mongodb::bson::{doc, DateTime, Document};

/// How long a lease lasts without a save (a page written) to renew it.
pub const LEASE: Duration = Duration::from_secs(120);

/// Another run holds the checkpoint's lease.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "another backfill holds the checkpoint {key} (run {owner}, lease until {until}): wait for it \
     to end, or pass --take-over if it is gone (two runs would overwrite each other's progress)"
)]
pub struct Held {
    /// The checkpoint.
    pub key: String,
    /// The run holding it.
    pub owner: String,
    /// When its lease expires unless renewed (RFC 3339).
    pub until: String,
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another run holds it.
    #[error(transparent)]
    Held(#[from] Held),
    /// The database failed (retry).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a checkpoint holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// The source's position after the last page written (`Source::position`).
    pub position: Document,
    /// Whether the pass reached the end of the source.
    pub finished: bool,
    /// Outcomes in this pass so far (all runs of it): one per document read.
    pub counts: OutcomeCounts,
}

/// The checkpoint collection, as one run (`owner`) sees it.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    collection: String,
    owner: String,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Checkpoints {
    /// Checkpoints in `collection` of the consumer database, leased by the run `owner`.
    pub fn new(store: Store, collection: &str, owner: &str) -> Self {
        Self {
            store,
            collection: collection.to_owned(),
            owner: owner.to_owned(),
        }
    }

    fn lease(&self) -> Document {
        let until =
            DateTime::from_millis(DateTime::now().timestamp_millis() + LEASE.as_millis() as i64);
        doc! {"owner": &self.owner, "expires": until}
    }

    /// Takes the lease on `key` (creating the checkpoint if there is none): when it is free,
    /// expired, already ours, or `take_over`.
    pub async fn acquire(&self, key: &str, take_over: bool) -> Result<(), LeaseError> {
        let filter = if take_over {
            doc! {"_id": key}
        } else {
            doc! {"_id": key, "$or": [
                {"lease": {"$exists": false}},
                {"lease.expires": {"$lt": DateTime::now()}},
                {"lease.owner": &self.owner},
            ]}
        };
        let taken = self
            .store
            .collection(&self.collection)
            .update_one(filter, doc! {"$set": {"lease": self.lease()}})
            .upsert(true)
            .await;
        self.unless_held(key, taken.map(drop), "take the backfill checkpoint's lease")
            .await
    }

    /// The outcome of a write guarded by the lease: a duplicate-key refusal means the guard
    /// missed because another run holds the lease ([`Held`], naming it); other errors are the
    /// database's.
    async fn unless_held(
        &self,
        key: &str,
        written: Result<(), mongodb::error::Error>,
        op: &'static str,
    ) -> Result<(), LeaseError> {
        match written.map_err(|e| StoreError::driver(op, e)) {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(DUPLICATE_KEY) => Err(self.holder(key).await?.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Who holds `key`'s lease, for the refusal's message.
    async fn holder(&self, key: &str) -> Result<Held, StoreError> {
        let d = self
            .store
            .collection(&self.collection)
            .find_one(doc! {"_id": key})
            .await
            .map_err(|e| StoreError::driver("find (backfill checkpoint)", e))?
            .unwrap_or_default();
        let lease = d.get_document("lease").cloned().unwrap_or_default();
        Ok(Held {
            key: key.to_owned(),
            owner: lease.get_str("owner").unwrap_or("?").to_owned(),
            until: lease
                .get_datetime("expires")
                .ok()
                .and_then(|t| t.try_to_rfc3339_string().ok())
                .unwrap_or_else(|| "?".to_owned()),
        })
    }

    /// Gives the lease back (the run ended); a lease another run took meanwhile stays.
    pub async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.store
            .collection(&self.collection)
            .update_one(
                doc! {"_id": key, "lease.owner": &self.owner},
                doc! {"$unset": {"lease": ""}},
            )
            .await
            .map_err(|e| StoreError::driver("release (backfill checkpoint)", e))?;
        Ok(())
    }

    /// The checkpoint's `_id` for type `t` read from `source`.
    pub fn key(t: ImageType, source: &str) -> String {
        format!("{t}|{source}")
    }

    /// The saved checkpoint, if any.
    pub async fn load(&self, key: &str) -> Result<Option<Checkpoint>, StoreError> {
        let Some(d) = self
            .store
            .collection(&self.collection)
            .find_one(doc! {"_id": key})
            .await
            .map_err(|e| StoreError::driver("find (backfill checkpoint)", e))?
        else {
            return Ok(None);
        };
        // Only a lease (taken by `acquire` before any page was saved): no progress yet.
        if !d.contains_key("position") {
            return Ok(None);
        }
        let count = |d: &Document, k: &str| {
            d.get_i64(k)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0)
        };
        let mut counts = OutcomeCounts::default();
        if let Ok(c) = d.get_document("counts") {
            for o in Outcome::ALL {
                counts.add_n(o, count(c, o.label()));
            }
        }
        Ok(Some(Checkpoint {
            position: d.get_document("position").cloned().unwrap_or_default(),
            finished: d.get_bool("finished").unwrap_or(false),
            counts,
        }))
    }

    /// Saves (replaces) the checkpoint and renews the lease; refused with [`Held`] when another
    /// run has taken the lease meanwhile (this one must stop: its progress is no longer its own).
    pub async fn save(
        &self,
        key: &str,
        type_: ImageType,
        cp: &Checkpoint,
    ) -> Result<(), LeaseError> {
        let mut counts = Document::new();
        for (o, n) in cp.counts.iter() {
            counts.insert(o.label(), to_i64(n));
        }
        let d = doc! {
            "_id": key,
            "type": type_.as_str(),
            "position": cp.position.clone(),
            "finished": cp.finished,
            // Derived, kept for people and tools reading the collection.
            "read": to_i64(cp.counts.total()),
            "counts": counts,
            "updated_at": DateTime::now(),
            "lease": self.lease(),
        };
        let saved = self
            .store
            .collection(&self.collection)
            .replace_one(doc! {"_id": key, "lease.owner": &self.owner}, d)
            .upsert(true)
            .await;
        self.unless_held(key, saved.map(drop), "save (backfill checkpoint)")
            .await
    }
}
