//! `leafsync-worker`: load config → init telemetry → connect → sync until shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leafsync_core::{shutdown, telemetry, Config};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leafsync-worker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    // Telemetry is set up outside the runtime so its guard can flush after the runtime ends.
    let _telemetry = match telemetry::init("leafsync-worker", &config.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("leafsync-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leafsync-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let token = shutdown::install();
        leafsync_worker::run(config, token).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("leafsync-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
