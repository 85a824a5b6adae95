//! Consumer lag per partition: high watermark − committed offset, the number KEDA scales on.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::Offset;

use crate::consumer::LeafConsumer;
use crate::Shared;

const PERIOD: Duration = Duration::from_secs(5);

/// Updates the lag gauges every few seconds for the partitions assigned to this worker.
pub async fn report(consumer: Arc<LeafConsumer>, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PERIOD).await;
        let c = consumer.clone();
        let s = shared.clone();
        let done = tokio::task::spawn_blocking(move || measure(&c, &s)).await;
        if let Ok(Err(e)) = done {
            tracing::debug!(error = %e, "cannot measure consumer lag");
        }
    }
}

fn measure(consumer: &LeafConsumer, shared: &Shared) -> rdkafka::error::KafkaResult<()> {
    let timeout = Duration::from_secs(5);
    let committed = consumer.committed(timeout)?;
    shared.metrics.consumer_lag.reset();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let done = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        shared
            .metrics
            .consumer_lag
            .with_label_values(&[e.topic(), &e.partition().to_string()])
            .set((high - done).max(0));
    }
    Ok(())
}
