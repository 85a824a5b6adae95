//! Realistic, deterministic image events: the same `--seed` gives the same events in the same
//! order. Each id's events carry strictly increasing `updated_at` (one logical clock per run).

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use leafsync_core::{ImageEvent, ImageId, ImageType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How events are generated.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// RNG seed.
    pub seed: u64,
    /// Size of the id pool per image type; the first event of an id creates it.
    pub ids_per_type: i64,
    /// Of the events on an existing id, the fraction that soft-deletes it.
    pub delete_ratio: f64,
    /// `updated_at` of the first event; each next event is 1 ms later.
    pub start: DateTime<Utc>,
}

/// One generated event and the topic type it belongs to.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Image type (selects the topic).
    pub image_type: ImageType,
    /// The event.
    pub event: ImageEvent,
}

/// The deterministic event stream.
pub struct Generator {
    cfg: GenConfig,
    rng: ChaCha8Rng,
    created: HashMap<(ImageType, i64), DateTime<Utc>>,
    tick: i64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn labels(t: ImageType) -> &'static [&'static str] {
    match t {
        ImageType::Potato => &["healthy", "early_blight", "late_blight"],
        ImageType::Tomato => &[
            "healthy",
            "bacterial_spot",
            "early_blight",
            "late_blight",
            "leaf_mold",
            "septoria_leaf_spot",
            "target_spot",
            "mosaic_virus",
        ],
        ImageType::Pepper => &["healthy", "bacterial_spot"],
    }
}

impl Generator {
    /// A stream for `cfg`.
    pub fn new(mut cfg: GenConfig) -> Self {
        // Events carry millisecond timestamps (the contract's precision), so a generated event
        // equals what a consumer decodes from it.
        cfg.start =
            DateTime::from_timestamp_millis(cfg.start.timestamp_millis()).unwrap_or(cfg.start);
        Self {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            created: HashMap::new(),
            tick: 0,
        }
    }

    /// The next event.
    pub fn next_event(&mut self) -> Generated {
        let image_type = ImageType::ALL[self.rng.random_range(0..ImageType::ALL.len())];
        let id = self.rng.random_range(1..=self.cfg.ids_per_type.max(1));
        let updated_at = self.cfg.start + TimeDelta::milliseconds(self.tick);
        self.tick += 1;
        let (created_at, deleted) = match self.created.get(&(image_type, id)) {
            None => {
                self.created.insert((image_type, id), updated_at);
                (updated_at, false)
            }
            Some(c) => (
                *c,
                self.rng.random_bool(self.cfg.delete_ratio.clamp(0.0, 1.0)),
            ),
        };
        let side = [128, 256, 512][self.rng.random_range(0..3)];
        let l = labels(image_type);
        let event = ImageEvent {
            // The pool starts at 1, so the id is always valid.
            id: ImageId::new(id).unwrap_or_else(|_| unreachable!()),
            updated_at,
            deleted,
            name: Some(format!("{image_type}_{id}.jpg")),
            url: Some(format!(
                "https://images.leafsync.example/{image_type}/{id}/{}.jpg",
                self.tick
            )),
            size: Some(self.rng.random_range(8_000..400_000)),
            width: Some(side),
            height: Some(side),
            label: Some(l[self.rng.random_range(0..l.len())].to_owned()),
            user_id: Some(self.rng.random_range(1..5_000)),
            created_at: Some(created_at),
            extra: Default::default(),
        };
        Generated { image_type, event }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> GenConfig {
        GenConfig {
            seed,
            ids_per_type: 50,
            delete_ratio: 0.1,
            start: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_generated_event_equals_its_decoded_form_whatever_the_start() {
        let start = DateTime::from_timestamp(1_750_000_000, 123_456_789).unwrap();
        let g = Generator::new(GenConfig { start, ..cfg(5) }).next_event();
        let back = ImageEvent::decode(g.event.to_json().to_string().as_bytes(), 1 << 20).unwrap();
        assert_eq!(back, g.event);
    }

    #[test]
    fn same_seed_same_events() {
        let a: Vec<String> = Generator::new(cfg(7))
            .take(500)
            .map(|g| g.event.to_json().to_string())
            .collect();
        let b: Vec<String> = Generator::new(cfg(7))
            .take(500)
            .map(|g| g.event.to_json().to_string())
            .collect();
        let c: Vec<String> = Generator::new(cfg(8))
            .take(500)
            .map(|g| g.event.to_json().to_string())
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn events_of_one_id_move_forward_and_mix_creates_updates_deletes() {
        let mut last: HashMap<(ImageType, i64), DateTime<Utc>> = HashMap::new();
        let (mut creates, mut deletes, mut updates) = (0, 0, 0);
        for g in Generator::new(cfg(1)).take(5_000) {
            let k = (g.image_type, g.event.id.get());
            match last.insert(k, g.event.updated_at) {
                None => creates += 1,
                Some(prev) => {
                    assert!(g.event.updated_at > prev);
                    if g.event.deleted {
                        deletes += 1
                    } else {
                        updates += 1
                    }
                }
            }
            // Every generated event is valid under the producer contract.
            let json = g.event.to_json().to_string();
            let back = ImageEvent::decode(json.as_bytes(), 1 << 20).unwrap();
            assert_eq!(back, g.event);
        }
        assert_eq!(creates, 150);
        assert!(deletes > 300 && updates > 3_000, "{deletes} {updates}");
    }
}
