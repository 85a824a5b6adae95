//! Shutdown: SIGTERM or SIGINT cancels one token that every task watches; a second signal exits
//! at once (status 130), for an operator who does not want to wait for the drain.

use tokio_util::sync::CancellationToken;

/// Spawns the signal watcher and returns the token it cancels. Call inside the runtime.
pub fn install() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if let Err(e) = wait_for_signal().await {
            tracing::error!(error = %e, "cannot listen for shutdown signals");
            return;
        }
        tracing::info!("shutdown signal received; draining (send it again to exit at once)");
        t.cancel();
        if wait_for_signal().await.is_ok() {
            tracing::warn!("second shutdown signal; exiting now");
            std::process::exit(130);
        }
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
