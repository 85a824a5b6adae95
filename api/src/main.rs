//! `leafsync-api`: load config → init telemetry → serve until shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use leafsync_core::{shutdown, telemetry, Config};

#[derive(Parser)]
#[command(version, about = "HTTP read service over leafsync's image database")]
struct Cli {
    /// TOML config file (also LEAFSYNC_CONFIG); env vars LEAFSYNC__SECTION__KEY override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration, secrets masked, and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leafsync-api: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    let _telemetry = match telemetry::init("leafsync-api", &config.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("leafsync-api: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leafsync-api: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let token = shutdown::install();
        leafsync_api::run(config, token).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("leafsync-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}
