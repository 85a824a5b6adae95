//! The expected final state of the consumer database: per image type and id, the event that
//! wins by core's version rule ([`Version::replaces`]: the newest `updated_at`, the later
//! event on ties), as the worker applies them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use leafsync_core::event::DEFAULT_MAX_EVENT_BYTES;
use leafsync_core::{ImageEvent, ImageType, Version};
use serde::{Deserialize, Serialize};

/// Expected state plus what the verifier needs to know about the run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    /// (type, id) → newest event.
    pub images: BTreeMap<(ImageType, i64), ImageEvent>,
    /// Events produced, valid ones.
    pub produced: u64,
    /// Poison (bad) events produced; each must reach the dead-letter topic.
    pub poison: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    produced: u64,
    poison: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    image_type: ImageType,
    event: serde_json::Value,
}

impl Expected {
    /// Folds one produced event into the expected state.
    pub fn apply(&mut self, image_type: ImageType, event: &ImageEvent) {
        self.produced += 1;
        let key = (image_type, event.id.get());
        let replaces = self
            .images
            .get(&key)
            .is_none_or(|cur| Version::of(event.updated_at).replaces(Version::of(cur.updated_at)));
        if replaces {
            self.images.insert(key, event.clone());
        }
    }

    /// How many images of `t` are expected.
    pub fn count(&self, t: ImageType, include_deleted: bool) -> u64 {
        self.images
            .iter()
            .filter(|((ty, _), e)| *ty == t && (include_deleted || !e.deleted))
            .count() as u64
    }

    /// Writes as JSON lines: a header line, then one line per image.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut w = BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(
            &mut w,
            &Header {
                produced: self.produced,
                poison: self.poison,
            },
        )?;
        w.write_all(b"\n")?;
        for ((t, _), e) in &self.images {
            serde_json::to_writer(
                &mut w,
                &Line {
                    image_type: *t,
                    event: e.to_json(),
                },
            )?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    /// Reads what [`save`](Self::save) wrote.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut lines = BufReader::new(std::fs::File::open(path)?).lines();
        let header: Header = serde_json::from_str(
            &lines
                .next()
                .ok_or_else(|| anyhow::anyhow!("{} is empty", path.display()))??,
        )?;
        let mut images = BTreeMap::new();
        for line in lines {
            let l: Line = serde_json::from_str(&line?)?;
            let e = ImageEvent::decode(l.event.to_string().as_bytes(), DEFAULT_MAX_EVENT_BYTES)?;
            images.insert((l.image_type, e.id.get()), e);
        }
        Ok(Self {
            images,
            produced: header.produced,
            poison: header.poison,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{GenConfig, Generator};

    fn ev(id: i64, ts: &str, deleted: bool) -> ImageEvent {
        let j = format!(r#"{{"id":{id},"updated_at":"{ts}","deleted":{deleted}}}"#);
        ImageEvent::decode(j.as_bytes(), 1024).unwrap()
    }

    #[test]
    fn newest_wins_with_interleaved_updates_and_deletes() {
        let mut x = Expected::default();
        x.apply(ImageType::Potato, &ev(1, "2025-01-01T00:00:01Z", false));
        x.apply(ImageType::Potato, &ev(1, "2025-01-01T00:00:03Z", true));
        x.apply(ImageType::Potato, &ev(1, "2025-01-01T00:00:02Z", false)); // late, older
        x.apply(ImageType::Tomato, &ev(1, "2025-01-01T00:00:01Z", false));
        x.apply(ImageType::Potato, &ev(2, "2025-01-01T00:00:01Z", true));
        x.apply(ImageType::Potato, &ev(2, "2025-01-01T00:00:04Z", false)); // undeleted
        assert_eq!(x.produced, 6);
        assert!(x.images[&(ImageType::Potato, 1)].deleted);
        assert!(!x.images[&(ImageType::Potato, 2)].deleted);
        assert_eq!(x.count(ImageType::Potato, false), 1);
        assert_eq!(x.count(ImageType::Potato, true), 2);
        assert_eq!(x.count(ImageType::Tomato, false), 1);
    }

    #[test]
    fn save_load_round_trip() {
        let mut x = Expected::default();
        let g = Generator::new(GenConfig {
            seed: 3,
            ids_per_type: 20,
            delete_ratio: 0.2,
            start: chrono::Utc::now(),
        });
        for e in g.take(300) {
            x.apply(e.image_type, &e.event);
        }
        x.poison = 9;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("expected.jsonl");
        x.save(&p).unwrap();
        assert_eq!(Expected::load(&p).unwrap(), x);
    }
}
