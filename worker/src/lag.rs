//! Consumer lag per partition: high watermark − committed offset, the number KEDA scales on.

use std::sync::Arc;
use std::time::Duration;

use leafsync_core::config::ms;
use leafsync_kafka::offsets::positions;
use rdkafka::consumer::Consumer;

use crate::consumer::LeafConsumer;
use crate::events::{Emit, LagMeasurementFailed};
use crate::Shared;

/// Updates the lag gauges every `worker.lag_interval_ms` for the partitions assigned to this
/// worker. A partition whose watermarks cannot be read keeps its last good value (a gap would
/// read as "no lag" to a scaler); one that is no longer assigned loses its gauge.
pub async fn report(consumer: Arc<LeafConsumer>, shared: Arc<Shared>) {
    let period = ms(shared.config.worker.lag_interval_ms);
    loop {
        tokio::time::sleep(period).await;
        let c = consumer.clone();
        let s = shared.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || measure(&c, &s)).await {
            LagMeasurementFailed {
                partition: None,
                error: &e.to_string(),
            }
            .emit(&shared.metrics);
        }
    }
}

fn measure(consumer: &LeafConsumer, shared: &Shared) -> rdkafka::error::KafkaResult<()> {
    let timeout = Duration::from_secs(5);
    let committed = consumer.committed(timeout)?;
    let gauge = &shared.metrics.consumer_lag;
    let mut shown = shared.metrics.lag_partitions();
    for (e, p) in committed
        .elements()
        .iter()
        .zip(positions(consumer, &committed, timeout))
    {
        let key = (e.topic().to_owned(), e.partition());
        shown.remove(&key);
        match p {
            Ok(p) => gauge
                .with_label_values(&[&p.topic, &p.partition.to_string()])
                .set(p.lag()),
            Err(error) => LagMeasurementFailed {
                partition: Some((&key.0, key.1)),
                error: &error.to_string(),
            }
            .emit(&shared.metrics),
        }
    }
    // Gauges of partitions this worker no longer owns would report a stale lag forever.
    for (topic, partition) in shown {
        let _ = gauge.remove_label_values(&[&topic, &partition.to_string()]);
    }
    Ok(())
}
