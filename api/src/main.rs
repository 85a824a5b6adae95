//! `leafsync-api`: load config → init telemetry → serve until shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use leafsync_core::process;

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
    let config = match process::load_config("leafsync-api", cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.print_config {
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    process::run("leafsync-api", config, |config, token| async move {
        leafsync_api::run(config, token)
            .await
            .map_err(|e| format!("{e:#}").into())
            .map(|()| true)
    })
}
