//! `leafsync-worker`: load config → init telemetry → connect → sync until shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leafsync_core::process;
use leafsync_worker::{backfill, replay};

#[derive(Parser)]
#[command(version, about = "Sync plant-image events from Kafka into MongoDB")]
struct Cli {
    /// TOML config file (also LEAFSYNC_CONFIG); env vars LEAFSYNC__SECTION__KEY override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Join the consumer group and sync (the default).
    Run,
    /// Print the effective configuration, secrets masked, and exit.
    PrintConfig,
    /// Reset the group's committed offsets so the workers re-read events (stop them first).
    /// Every flag can also come from its environment variable, so a Kubernetes Job can be
    /// adjusted with `kubectl set env` (docs/operations.md, "Replay").
    Replay {
        /// Back to the earliest retained offset.
        #[arg(
            long,
            env = "LEAFSYNC_REPLAY_TO_EARLIEST",
            conflicts_with = "to_datetime",
            required_unless_present = "to_datetime"
        )]
        to_earliest: bool,
        /// Back to the first event at or after this time (RFC 3339).
        #[arg(long, env = "LEAFSYNC_REPLAY_TO_DATETIME")]
        to_datetime: Option<chrono::DateTime<chrono::Utc>>,
        /// Only these topics (repeatable, or comma-separated in the variable; default: every
        /// image topic).
        #[arg(long = "topic", env = "LEAFSYNC_REPLAY_TOPICS", value_delimiter = ',')]
        topics: Vec<String>,
        /// Print the plan without changing anything.
        #[arg(long, env = "LEAFSYNC_REPLAY_DRY_RUN")]
        dry_run: bool,
    },
    /// Load existing images from a MongoDB database or JSON Lines files, beside the stream:
    /// stale-guarded (the newest version wins), resumable, bad documents dead-lettered
    /// (docs/operations.md, "Backfill").
    Backfill(backfill::args::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match process::load_config("leafsync-worker", cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::PrintConfig) => {
            print!("{}", config.redacted_toml());
            return ExitCode::SUCCESS;
        }
        Some(Command::Replay {
            to_datetime,
            topics,
            dry_run,
            ..
        }) => {
            let target = to_datetime.map_or(replay::Target::Earliest, replay::Target::At);
            return match replay::replay(&config, target, &topics, dry_run) {
                Ok(plan) => {
                    print!("{}", replay::render(&plan, &config.kafka.group_id, dry_run));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leafsync-worker replay: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Backfill(args)) => {
            let opts = match args.options(&config) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("leafsync-worker backfill: {e}");
                    return ExitCode::from(2);
                }
            };
            let checkpoints = opts.checkpoint_collection.clone();
            return process::run("leafsync-worker", config, |config, token| async move {
                // `{:#}`: the whole chain, as for the worker, not only the outermost context.
                let report = backfill::run(config, opts.clone(), token)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                print!(
                    "{}",
                    backfill::progress::render(&report.types, opts.dry_run)
                );
                if report.interrupted && !opts.dry_run {
                    println!("interrupted: progress is saved in {checkpoints}; run the same command again to resume");
                }
                Ok(report.is_complete())
            });
        }
        Some(Command::Run) | None => {}
    }
    process::run("leafsync-worker", config, |config, token| async move {
        leafsync_worker::run(config, token)
            .await
            .map_err(|e| format!("{e:#}").into())
            .map(|()| true)
    })
}
