//! Seeding a backfill source: a producer-side database (one collection per type, one document
//! per image holding its current state) and/or JSON Lines files, from the same deterministic
//! generator as `flood`, with the expected state the consumer database must reach.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use leafsync_core::document::Projection;
use leafsync_core::{ImageType, Store};
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::expected::Expected;
use crate::generator::{GenConfig, Generator};

/// The current state of exactly `images` distinct images: generated events (creates, updates,
/// soft deletes) folded by the version rule until that many images exist.
pub fn images(gen: GenConfig, images: usize) -> Expected {
    let mut x = Expected::default();
    let mut g = Generator::new(gen);
    while x.images.len() < images {
        let e = g.next_event();
        x.apply(e.image_type, &e.event);
    }
    x
}

/// Inserts every image of `x` into `source`, collection `collection(type)`, as the producer
/// database would hold it (every field, timestamps as dates, its own `_id`, a unique index on
/// `id`: what a backfill's `id`-ordered pages rely on).
pub async fn to_database(
    source: &Store,
    collection: impl Fn(ImageType) -> String,
    x: &Expected,
) -> anyhow::Result<()> {
    for t in ImageType::ALL {
        let unique_id = IndexModel::builder()
            .keys(doc! {"id": 1})
            .options(IndexOptions::builder().unique(true).build())
            .build();
        source
            .collection(&collection(t))
            .create_index(unique_id)
            .await?;
        let docs: Vec<Document> = x
            .images
            .iter()
            .filter(|((ty, _), _)| *ty == t)
            .map(|(_, e)| e.to_document(&Projection::all()))
            .collect();
        for chunk in docs.chunks(1000) {
            source
                .collection(&collection(t))
                .insert_many(chunk)
                .ordered(false)
                .await?;
        }
    }
    Ok(())
}

/// Writes every image of `x` as JSON Lines, one file per type (`dir/{type}.jsonl`), in id
/// order; returns the files.
pub fn to_json_lines(dir: &Path, x: &Expected) -> anyhow::Result<Vec<(ImageType, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for t in ImageType::ALL {
        let path = dir.join(format!("{t}.jsonl"));
        let mut w = BufWriter::new(std::fs::File::create(&path)?);
        for e in x
            .images
            .iter()
            .filter(|((ty, _), _)| *ty == t)
            .map(|(_, e)| e)
        {
            serde_json::to_writer(&mut w, &e.to_json())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        out.push((t, path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use leafsync_core::ImageEvent;

    fn gen() -> GenConfig {
        GenConfig {
            seed: 4,
            ids_per_type: 100,
            delete_ratio: 0.2,
            start: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn exactly_the_asked_number_of_images_some_updated_and_deleted() {
        let x = images(gen(), 250);
        assert_eq!(x.images.len(), 250);
        assert!(x.produced > 250, "some images have several versions");
        assert!(x.images.values().any(|e| e.deleted));
        assert!(
            x.images
                .values()
                .any(|e| e.created_at != Some(e.updated_at)),
            "some were updated"
        );
    }

    #[test]
    fn json_lines_hold_each_image_once_in_the_event_format() {
        let x = images(gen(), 120);
        let dir = tempfile::tempdir().unwrap();
        let files = to_json_lines(dir.path(), &x).unwrap();
        let mut n = 0;
        for (t, path) in files {
            for line in std::fs::read_to_string(path).unwrap().lines() {
                let e = ImageEvent::decode(line.as_bytes(), 1 << 20).unwrap();
                assert_eq!(x.images[&(t, e.id.get())], e);
                n += 1;
            }
        }
        assert_eq!(n, 120);
    }
}
