//! The API's Prometheus metrics.
#![allow(clippy::expect_used)] // fixed metric names and labels: a failure is a programming error

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Metric handles.
pub struct Metrics {
    registry: Registry,
    /// Requests by route template and status.
    pub requests: IntCounterVec,
    /// Latency by route template.
    pub latency: HistogramVec,
    /// Requests being served.
    pub in_flight: IntGauge,
    /// Ids per coalesced by-id query, by image type.
    pub read_batch: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "leafsync_api_requests_total",
                "Requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "leafsync_api_request_duration_seconds",
                "Latency of served requests by route (shed ones excluded)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("leafsync_api_requests_in_flight", "Requests being served")
            .expect("valid metric");
        let read_batch = HistogramVec::new(
            HistogramOpts::new(
                "leafsync_api_read_batch_size",
                "Distinct ids per coalesced by-id query",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["type"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(read_batch.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        Self {
            registry,
            requests,
            latency,
            in_flight,
            read_batch,
        }
    }

    /// Exposition text.
    pub fn render(&self) -> String {
        leafsync_core::telemetry::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
