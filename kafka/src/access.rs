//! Kafka errors that no retry fixes: the broker refuses the credentials, its certificate fails
//! verification, or an ACL denies the principal the group or a topic. librdkafka reports them
//! and then retries for ever, so a worker with a wrong password would sit unready without saying
//! why in its exit status. [`AccessWatch`] turns them into one clear, fatal reason.
//!
//! Which codes mean what, in librdkafka 2.12:
//! - `__AUTHENTICATION`: the broker answered SaslAuthenticate with an error (wrong password,
//!   unknown user; `rdkafka_request.c` `rd_kafka_handle_SaslAuthenticate`, ~3391 and ~3418), or
//!   the mechanism is not enabled (`rdkafka_broker.c` ~2441).
//! - `__SSL`: the TLS handshake or the certificate check failed (`rdkafka_ssl.c`
//!   `rd_kafka_transport_ssl_verify` ~603/610, `rd_kafka_transport_ssl_handshake` ~680). A
//!   disconnect during the handshake is reported as `__TRANSPORT` instead (~674-678), so a
//!   restarting broker does not look like a TLS failure.
//! - `GROUP_`/`TOPIC_`/`CLUSTER_AUTHORIZATION_FAILED`: the broker's authorizer said no; the
//!   consumer gets them from its queue, not the error callback ([`AccessWatch::observe_queued`]).
//!
//! A refusal is fatal only when it repeats ([`REPEATS`] within [`WINDOW`]): one can be a race
//! with a broker restart (a disconnect mid-authentication), while a wrong password or an
//! untrusted CA fails every reconnect, which librdkafka retries within a second or two
//! (`reconnect.backoff.ms` 100, doubling).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How many refusals within [`WINDOW`] make one fatal.
pub const REPEATS: usize = 3;
/// See [`REPEATS`].
pub const WINDOW: Duration = Duration::from_secs(60);

type Hook = Box<dyn Fn(&str) + Send + Sync>;

/// Watches a client's errors for refused credentials or an untrusted certificate; calls its hook
/// once, with a reason that names the cause and the settings to check.
#[derive(Clone)]
pub struct AccessWatch {
    inner: Arc<Inner>,
}

struct Inner {
    seen: Mutex<VecDeque<Instant>>,
    reason: OnceLock<String>,
    hook: Hook,
}

impl std::fmt::Debug for AccessWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessWatch")
            .field("reason", &self.inner.reason.get())
            .finish_non_exhaustive()
    }
}

impl AccessWatch {
    /// Calls `hook` with the reason when a refusal becomes fatal.
    pub fn new(hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                seen: Mutex::default(),
                reason: OnceLock::new(),
                hook: Box::new(hook),
            }),
        }
    }

    /// For one-shot commands (replay, the load tool): print the reason and exit at once with
    /// status 1. Their Kafka calls block with timeouts and would otherwise end, seconds later,
    /// with a transport error that does not say why.
    pub fn exiting(bin: &'static str) -> Self {
        Self::new(move |reason| {
            tracing::error!(reason, "{bin}: stopping");
            eprintln!("{bin}: {reason}");
            std::process::exit(1);
        })
    }

    /// Feeds one error from librdkafka's error callback; returns the fatal reason when this error
    /// made it fatal (the hook has then been called).
    pub fn observe(&self, error: &KafkaError, reason: &str) -> Option<String> {
        self.observe_at(error, reason, Instant::now())
    }

    /// Feeds an error a consumer got from its queue (`poll`/`recv`): with a group id, librdkafka
    /// forwards its main queue to the consumer's, and rdkafka returns those errors instead of
    /// calling the context's `error`, so they carry no separate reason text.
    pub fn observe_queued(&self, error: &KafkaError) -> Option<String> {
        self.observe(error, &error.to_string())
    }

    fn observe_at(&self, error: &KafkaError, reason: &str, now: Instant) -> Option<String> {
        let cause = cause(error)?;
        let repeated = {
            let mut seen = self
                .inner
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.push_back(now);
            while seen
                .front()
                .is_some_and(|t| now.duration_since(*t) > WINDOW)
            {
                seen.pop_front();
            }
            seen.len() >= REPEATS
        };
        if !repeated || self.inner.reason.get().is_some() {
            return None;
        }
        let text = format!("{cause}: {reason}");
        if self.inner.reason.set(text.clone()).is_err() {
            return None; // another thread got there first and called the hook
        }
        (self.inner.hook)(&text);
        Some(text)
    }

    /// The fatal reason, once there is one.
    pub fn refused(&self) -> Option<&str> {
        self.inner.reason.get().map(String::as_str)
    }
}

/// What an access error means for the operator, or `None` for any other error.
fn cause(error: &KafkaError) -> Option<&'static str> {
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => Some(
            "Kafka refused the credentials (check kafka.properties sasl.mechanism, sasl.username, sasl.password)",
        ),
        RDKafkaErrorCode::SSL => Some(
            "TLS with the Kafka broker failed (check kafka.properties ssl.ca.pem or ssl.ca.location: is the broker's CA trusted?)",
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::GroupAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(
            "Kafka denied the principal an operation (grant the ACLs in docs/operations.md, \"Kafka ACLs\")",
        ),
        _ => None,
    }
}

/// A client context that logs librdkafka's errors and feeds them to an [`AccessWatch`]; for the
/// clients that have no context of their own (producers, admin and metadata clients).
#[derive(Debug, Clone)]
pub struct WatchedContext {
    /// Where refusals go.
    pub access: AccessWatch,
}

impl ClientContext for WatchedContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error (librdkafka keeps retrying)");
        self.access.observe(&error, reason);
    }
}

impl ConsumerContext for WatchedContext {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting() -> (AccessWatch, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let w = AccessWatch::new(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
        (w, calls)
    }

    fn auth() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::Authentication)
    }

    #[test]
    fn repeated_refusals_are_fatal_once_with_the_cause_named() {
        let (w, calls) = counting();
        let t = Instant::now();
        assert_eq!(w.observe_at(&auth(), "bad password", t), None);
        assert_eq!(w.observe_at(&auth(), "bad password", t), None);
        let reason = w
            .observe_at(&auth(), "bad password", t + Duration::from_secs(1))
            .unwrap();
        assert!(reason.contains("refused the credentials"), "{reason}");
        assert!(reason.ends_with("bad password"), "{reason}");
        assert_eq!(w.observe_at(&auth(), "again", t), None, "only once");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(w.refused(), Some(reason.as_str()));
    }

    #[test]
    fn tls_failures_name_the_ca_settings() {
        let (w, _) = counting();
        let e = KafkaError::Global(RDKafkaErrorCode::SSL);
        let t = Instant::now();
        let mut last = None;
        for _ in 0..REPEATS {
            last = w.observe_at(&e, "certificate verify failed", t);
        }
        assert!(last.unwrap().contains("ssl.ca.location"));
    }

    #[test]
    fn refusals_spread_over_more_than_the_window_are_not_fatal() {
        let (w, calls) = counting();
        let t = Instant::now();
        for i in 0..10u32 {
            w.observe_at(&auth(), "x", t + WINDOW * i + Duration::from_secs(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn other_errors_are_ignored() {
        let (w, calls) = counting();
        let t = Instant::now();
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
        ] {
            for _ in 0..REPEATS * 2 {
                w.observe_at(&KafkaError::Global(code), "down", t);
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(w.refused(), None);
    }
}
