//! Failures that must stop the worker instead of stalling it: a panicking partition task or
//! writer lane, a dead letter the broker will never accept, or a broker that keeps refusing the
//! credentials or failing TLS. Without this, tokio would catch the panic, the partition would
//! stay parked with nothing reading it, and only `/live` would notice, minutes later. A fast,
//! loud exit is better: the orchestrator restarts the worker, the other partitions drain and
//! commit as on SIGTERM, and the failed one resumes from its committed offset (its failed batch
//! was never stored).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use futures::FutureExt as _;
use leafsync_kafka::AccessWatch;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Raises a fatal error: the first reason is kept, and the shutdown token is cancelled so the
/// worker drains, commits and exits non-zero with that reason.
#[derive(Debug, Clone)]
pub struct Fatal {
    shutdown: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Fatal {
    /// Stops the worker through `shutdown` when raised.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            reason: Arc::default(),
        }
    }

    /// Logs `reason`, keeps it if it is the first, and starts the shutdown.
    pub fn raise(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(reason = %reason, "fatal: the worker stops (its orchestrator restarts it)");
        let _ = self.reason.set(reason);
        self.shutdown.cancel();
    }

    /// The first fatal reason raised, if any.
    pub fn reason(&self) -> Option<&str> {
        self.reason.get().map(String::as_str)
    }

    /// A watch that raises a fatal error when Kafka keeps refusing the credentials or the
    /// broker's certificate: no retry fixes either, so the worker exits and says why.
    pub fn access_watch(&self) -> AccessWatch {
        let fatal = self.clone();
        AccessWatch::new(move |reason| fatal.raise(reason))
    }

    /// Spawns `task` on `rt`; a panic in it raises a fatal error naming `what`.
    pub fn spawn_on<F>(&self, rt: &Handle, what: String, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fatal = self.clone();
        rt.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                fatal.raise(format!("{what} panicked: {}", panic_message(&*panic)));
            }
        })
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_task_stops_the_worker_with_its_message() {
        let shutdown = CancellationToken::new();
        let fatal = Fatal::new(shutdown.clone());
        let n = 7;
        let join = fatal.spawn_on(
            &Handle::current(),
            "partition task t/3".into(),
            async move { panic!("boom {n}") },
        );
        join.await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), shutdown.cancelled())
            .await
            .expect("shutdown requested");
        assert_eq!(fatal.reason(), Some("partition task t/3 panicked: boom 7"));
    }

    #[tokio::test]
    async fn the_first_reason_is_kept_and_a_clean_task_raises_nothing() {
        let shutdown = CancellationToken::new();
        let fatal = Fatal::new(shutdown.clone());
        fatal
            .spawn_on(&Handle::current(), "fine".into(), async {})
            .await
            .unwrap();
        assert!(!shutdown.is_cancelled());
        assert_eq!(fatal.reason(), None);
        fatal.raise("first");
        fatal.raise("second");
        assert_eq!(fatal.reason(), Some("first"));
    }
}
