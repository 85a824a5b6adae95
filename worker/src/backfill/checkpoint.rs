//! Backfill progress, saved in the consumer database after every written page, so a crash or
//! Ctrl-C resumes where it stopped. One document per (image type, source):
//! `{_id: "potato|mongodb:producer.potato_images", position: {…}, finished, counts: {…}}`.
//! A finished pass stays recorded; the next run over the same source starts a new pass.

use leafsync_core::{ImageType, Outcome, OutcomeCounts, Store, StoreError};
use mongodb::bson::{doc, Document};

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

/// The checkpoint collection.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    collection: String,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Checkpoints {
    /// Checkpoints in `collection` of the consumer database.
    pub fn new(store: Store, collection: &str) -> Self {
        Self {
            store,
            collection: collection.to_owned(),
        }
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

    /// Saves (replaces) the checkpoint.
    pub async fn save(
        &self,
        key: &str,
        type_: ImageType,
        cp: &Checkpoint,
    ) -> Result<(), StoreError> {
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
            "updated_at": mongodb::bson::DateTime::now(),
        };
        self.store
            .collection(&self.collection)
            .replace_one(doc! {"_id": key}, d)
            .upsert(true)
            .await
            .map_err(|e| StoreError::driver("save (backfill checkpoint)", e))?;
        Ok(())
    }

    /// Forgets the checkpoint (`--restart`).
    pub async fn clear(&self, key: &str) -> Result<(), StoreError> {
        self.store
            .collection(&self.collection)
            .delete_one(doc! {"_id": key})
            .await
            .map_err(|e| StoreError::driver("delete (backfill checkpoint)", e))?;
        Ok(())
    }
}
