//! The command line of `leafsync-worker backfill`. Every flag can also come from its
//! environment variable, so a Kubernetes Job takes its settings from a ConfigMap and Secret.

use std::net::SocketAddr;
use std::path::PathBuf;

use leafsync_core::config::{Config, Secret};
use leafsync_core::ImageType;

use super::{Options, SourceSpec};

/// `backfill` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Read from this MongoDB server: the producer database or a restored dump of it.
    #[arg(
        long,
        env = "LEAFSYNC_BACKFILL_FROM_MONGODB",
        hide_env_values = true,
        required_unless_present = "from_jsonl",
        conflicts_with = "from_jsonl"
    )]
    pub from_mongodb: Option<String>,
    /// The source database (default: the one named in the --from-mongodb URI).
    #[arg(long, env = "LEAFSYNC_BACKFILL_SOURCE_DATABASE")]
    pub source_database: Option<String>,
    /// The source collection of a type, TYPE=NAME (repeatable, or comma-separated in the
    /// variable; default: the consumer's collection name of each type).
    #[arg(long = "collection", env = "LEAFSYNC_BACKFILL_COLLECTIONS", value_delimiter = ',', value_parser = type_pair)]
    pub collections: Vec<(ImageType, String)>,
    /// Read a type from a JSON Lines file, TYPE=PATH (repeatable).
    #[arg(long = "from-jsonl", env = "LEAFSYNC_BACKFILL_FROM_JSONL", value_delimiter = ',', value_parser = type_pair)]
    pub from_jsonl: Vec<(ImageType, String)>,
    /// Only these types (repeatable; default: every type, or the --from-jsonl ones).
    #[arg(long = "type", env = "LEAFSYNC_BACKFILL_TYPES", value_delimiter = ',')]
    pub types: Vec<ImageType>,
    /// Documents per page: one source read and one write command (default:
    /// worker.batch.max_events).
    #[arg(long, env = "LEAFSYNC_BACKFILL_BATCH")]
    pub batch: Option<usize>,
    /// At most this many documents per second over all types (0: no limit), to spare the
    /// stream and the source database.
    #[arg(long, env = "LEAFSYNC_BACKFILL_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Read, decode and compare with the consumer database, but write nothing: no documents,
    /// no dead letters, no checkpoint.
    #[arg(long, env = "LEAFSYNC_BACKFILL_DRY_RUN")]
    pub dry_run: bool,
    /// Forget the saved checkpoint and start from the beginning.
    #[arg(long, env = "LEAFSYNC_BACKFILL_RESTART")]
    pub restart: bool,
    /// Take the checkpoint's lease even while another run holds it: only when that run is
    /// known to be gone (e.g. its pod was killed), since two runs would overwrite each
    /// other's progress. An abandoned lease also expires by itself after two minutes.
    #[arg(long, env = "LEAFSYNC_BACKFILL_TAKE_OVER")]
    pub take_over: bool,
    /// The checkpoint collection in the consumer database.
    #[arg(
        long,
        env = "LEAFSYNC_BACKFILL_CHECKPOINT_COLLECTION",
        default_value = "leafsync_backfill_checkpoints"
    )]
    pub checkpoint_collection: String,
    /// Serve /live, /ready and /metrics here while running (e.g. 0.0.0.0:9464 in a Job).
    #[arg(long, env = "LEAFSYNC_BACKFILL_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
}

fn type_pair(s: &str) -> Result<(ImageType, String), String> {
    let (t, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected TYPE=VALUE, got {s:?}"))?;
    let t: ImageType = t.trim().parse().map_err(|e| format!("{e}"))?;
    let v = v.trim();
    if v.is_empty() {
        return Err(format!("no value after {t}="));
    }
    Ok((t, v.to_owned()))
}

impl Args {
    /// The backfill these flags ask for, or a message naming the flag that is wrong.
    pub fn options(self, config: &Config) -> Result<Options, String> {
        let wanted = |t: &ImageType| self.types.is_empty() || self.types.contains(t);
        let sources: Vec<(ImageType, SourceSpec)> = if let Some(uri) = &self.from_mongodb {
            let database = match &self.source_database {
                Some(d) => d.clone(),
                None => database_in_uri(uri).ok_or(
                    "--source-database is required: the --from-mongodb URI names no database",
                )?,
            };
            ImageType::ALL
                .into_iter()
                .filter(wanted)
                .map(|t| {
                    let collection = self
                        .collections
                        .iter()
                        .rev()
                        .find(|(c, _)| *c == t)
                        .map_or_else(
                            || config.types.get(t).collection.clone(),
                            |(_, c)| c.clone(),
                        );
                    let spec = SourceSpec::Mongo {
                        uri: Secret::new(uri.clone()),
                        database: database.clone(),
                        collection,
                    };
                    (t, spec)
                })
                .collect()
        } else {
            let mut seen = Vec::new();
            for (t, _) in &self.from_jsonl {
                if seen.contains(t) {
                    return Err(format!("--from-jsonl gives {t} twice; one file per type"));
                }
                seen.push(*t);
            }
            self.from_jsonl
                .iter()
                .filter(|(t, _)| wanted(t))
                .map(|(t, p)| (*t, SourceSpec::JsonLines(PathBuf::from(p))))
                .collect()
        };
        if sources.is_empty() {
            return Err("nothing to backfill: --type excludes every source".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err(format!(
                "--rate must be 0 or a positive number, got {}",
                self.rate
            ));
        }
        let batch = self.batch.unwrap_or(config.worker.batch.max_events);
        if batch == 0 {
            return Err("--batch must be at least 1".into());
        }
        Ok(Options {
            sources,
            batch,
            rate: (self.rate > 0.0).then_some(self.rate),
            dry_run: self.dry_run,
            restart: self.restart,
            take_over: self.take_over,
            checkpoint_collection: self.checkpoint_collection,
            admin_addr: self.admin_addr,
        })
    }
}

/// The database named in a MongoDB URI's path (`mongodb://host/producer?…` → `producer`).
fn database_in_uri(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let db = path.split(['?', '#']).next()?;
    (!db.is_empty()).then(|| db.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn options(argv: &[&str]) -> Result<Options, String> {
        let cli = Cli::try_parse_from(std::iter::once("backfill").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args.options(&Config::load_with_overrides("").unwrap())
    }

    #[test]
    fn mongodb_source_defaults_to_every_type_and_the_uri_database() {
        let o = options(&[
            "--from-mongodb",
            "mongodb://h:27017/producer?x=1",
            "--collection",
            "tomato=tomatoes",
        ])
        .unwrap();
        let got: Vec<(ImageType, String, String)> = o
            .sources
            .iter()
            .map(|(t, s)| match s {
                SourceSpec::Mongo {
                    database,
                    collection,
                    ..
                } => (*t, database.clone(), collection.clone()),
                SourceSpec::JsonLines(_) => panic!("not a file"),
            })
            .collect();
        let defaults = Config::load_with_overrides("").unwrap();
        assert_eq!(
            got,
            [
                (
                    ImageType::Potato,
                    "producer".into(),
                    defaults.types.potato.collection.clone()
                ),
                (ImageType::Tomato, "producer".into(), "tomatoes".into()),
                (
                    ImageType::Pepper,
                    "producer".into(),
                    defaults.types.pepper.collection.clone()
                ),
            ]
        );
        assert_eq!(o.batch, defaults.worker.batch.max_events);
        assert_eq!(o.rate, None);
    }

    #[test]
    fn wrong_flags_are_refused_with_the_flag_named() {
        let cases: [(&[&str], &str); 6] = [
            (
                &["--from-mongodb", "mongodb://h:27017"],
                "--source-database",
            ),
            (&["--from-jsonl", "potato"], "TYPE=VALUE"),
            (&["--from-jsonl", "carrot=x.jsonl"], "carrot"),
            (&["--from-jsonl", "potato=a,potato=b"], "twice"),
            (&["--from-jsonl", "potato=a", "--type", "tomato"], "--type"),
            (&["--from-jsonl", "potato=a", "--batch", "0"], "--batch"),
        ];
        for (argv, needle) in cases {
            let e = options(argv)
                .err()
                .unwrap_or_else(|| panic!("{argv:?} accepted"));
            assert!(e.contains(needle), "{argv:?}: {e}");
        }
        let e = options(&[]).err().unwrap();
        assert!(e.contains("--from-mongodb"), "{e}");
    }

    #[test]
    fn json_lines_sources_and_rate() {
        let o = options(&[
            "--from-jsonl",
            "pepper=/d/p.jsonl",
            "--rate",
            "250",
            "--dry-run",
        ])
        .unwrap();
        assert!(
            matches!(&o.sources[..], [(ImageType::Pepper, SourceSpec::JsonLines(p))] if p == std::path::Path::new("/d/p.jsonl"))
        );
        assert_eq!(o.rate, Some(250.0));
        assert!(o.dry_run && !o.restart);
    }
}
