//! How every leafsync binary starts and ends, in one place: load the config (exit 2 with one
//! line naming the key when it is bad), set up telemetry outside the runtime (so its guard can
//! flush after the runtime ends), run until the shutdown token fires, and turn the outcome into
//! an exit code with one clear line.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::{shutdown, telemetry, Config};

/// Loads the configuration, or prints why not and returns the exit code (2).
pub fn load_config(bin: &str, path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{bin}: {e}");
        ExitCode::from(2)
    })
}

/// Runs `main` with telemetry and a shutdown token; `Ok(false)` means "ran, but the answer is
/// no" (exit 1 without an error line, e.g. a failed verification).
pub fn run<F, Fut>(bin: &str, config: Config, main: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<bool, Box<dyn std::error::Error + Send + Sync>>>,
{
    let _telemetry = match telemetry::init(bin, &config.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{bin}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async { main(config, shutdown::install()).await });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{bin}: {e}");
            eprintln!("{bin}: {e}");
            ExitCode::FAILURE
        }
    }
}
