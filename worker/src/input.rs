//! The input side of a partition task: the partition's own (split) queue, plus the
//! *stragglers*, messages of the partition that reached the consumer's main queue before the
//! split took effect, routed here by the consumer loop.
//!
//! Order is kept by construction. A straggler is always older than anything the split queue
//! holds, so stragglers are taken first whenever one is waiting, including while the task is
//! already waiting on the split queue. A message that still arrives after a later offset was
//! taken is never processed out of order: [`Input::next`] reports it as [`Next::Late`], and the
//! task rewinds the partition to it (drops the batch in hand and seeks back), so it and
//! everything after it are redelivered in order and replayed idempotently.
//!
//! After a rewind the stragglers are done with: the seek re-fetches everything from the late
//! offset on through the partition's own queue (librdkafka drops what the main queue still holds
//! from before it: the seek bumps the partition's op version, and a fetch op of an older version
//! is discarded when consumed; librdkafka 2.12.1 `rdkafka_partition.h` ~1062, `rdkafka_queue.c`
//! ~796, `rdkafka.c` ~3285), so whatever the straggler channel
//! still holds, or receives later, is from before the seek and is dropped. Taking it would put a
//! later offset ahead of the rewound one, and store an offset past events not yet written.

use std::future::Future;
use std::time::Duration;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::ConsumerContext;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;

/// Something with a partition offset.
pub trait Positioned {
    /// The message's offset in its partition.
    fn offset(&self) -> i64;
}

impl Positioned for OwnedMessage {
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
}

/// A source of one partition's messages in offset order.
pub trait PartitionQueue<M>: Send {
    /// The next message; waits until there is one.
    fn recv(&mut self) -> impl Future<Output = M> + Send;
}

impl<C: ConsumerContext + 'static> PartitionQueue<OwnedMessage> for StreamPartitionQueue<C> {
    async fn recv(&mut self) -> OwnedMessage {
        loop {
            match StreamPartitionQueue::recv(self).await {
                Ok(m) => return m.detach(),
                Err(e) => {
                    // librdkafka reports fetch problems here and keeps fetching.
                    tracing::warn!(error = %e, "partition consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// What [`Input::next`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<M> {
    /// The next message in order.
    InOrder(M),
    /// A message at or below the highest offset already taken: processing it now would
    /// reorder the partition. Rewind to its offset (and call [`Input::rewound`]).
    Late {
        /// The late message (dropped; it is redelivered after the rewind).
        message: M,
        /// The highest offset taken before it.
        seen: i64,
    },
}

/// One partition's messages, in order.
#[derive(Debug)]
pub struct Input<M, Q> {
    stragglers: mpsc::UnboundedReceiver<M>,
    queue: Q,
    highest: Option<i64>,
    /// Set by the first rewind: stragglers are dropped from then on.
    rewound: bool,
}

impl<M: Positioned, Q: PartitionQueue<M>> Input<M, Q> {
    /// Reads `stragglers` first, then `queue`.
    pub fn new(stragglers: mpsc::UnboundedReceiver<M>, queue: Q) -> Self {
        Self {
            stragglers,
            queue,
            highest: None,
            rewound: false,
        }
    }

    /// The next message. Cancel-safe: a message is taken only when this returns.
    pub async fn next(&mut self) -> Next<M> {
        let m = if self.rewound {
            // From before the seek: dropped (see the module docs).
            while self.stragglers.try_recv().is_ok() {}
            self.queue.recv().await
        } else {
            tokio::select! {
                biased;
                Some(m) = self.stragglers.recv() => m,
                m = self.queue.recv() => m,
            }
        };
        let offset = m.offset();
        match self.highest {
            Some(seen) if offset <= seen => Next::Late { message: m, seen },
            _ => {
                self.highest = Some(offset);
                Next::InOrder(m)
            }
        }
    }

    /// The partition was rewound (seeked back): offsets before the highest taken come again,
    /// through the partition's queue only.
    pub fn rewound(&mut self) {
        self.highest = None;
        self.rewound = true;
        while self.stragglers.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[derive(Debug, PartialEq, Eq)]
    struct M(i64);

    impl Positioned for M {
        fn offset(&self) -> i64 {
            self.0
        }
    }

    struct Queue(mpsc::UnboundedReceiver<M>);

    impl PartitionQueue<M> for Queue {
        async fn recv(&mut self) -> M {
            match self.0.recv().await {
                Some(m) => m,
                None => std::future::pending().await,
            }
        }
    }

    fn input() -> (
        mpsc::UnboundedSender<M>,
        mpsc::UnboundedSender<M>,
        Input<M, Queue>,
    ) {
        let (straggler_tx, straggler_rx) = mpsc::unbounded_channel();
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        (
            straggler_tx,
            queue_tx,
            Input::new(straggler_rx, Queue(queue_rx)),
        )
    }

    #[tokio::test]
    async fn a_straggler_routed_while_waiting_on_the_queue_still_comes_first() {
        let (stragglers, queue, mut input) = input();
        {
            // The task is already waiting on the split queue when both arrive: the straggler
            // (older) and the split queue's first message (newer).
            let mut next = pin!(input.next());
            assert!(futures::poll!(next.as_mut()).is_pending());
            queue.send(M(5)).unwrap();
            stragglers.send(M(3)).unwrap();
            assert_eq!(next.await, Next::InOrder(M(3)));
        }
        assert_eq!(input.next().await, Next::InOrder(M(5)));
    }

    #[tokio::test]
    async fn a_straggler_after_a_later_offset_is_reported_late_not_processed() {
        let (stragglers, queue, mut input) = input();
        queue.send(M(10)).unwrap();
        assert_eq!(input.next().await, Next::InOrder(M(10)));
        stragglers.send(M(7)).unwrap();
        assert_eq!(
            input.next().await,
            Next::Late {
                message: M(7),
                seen: 10
            }
        );
        // The seek purges the partition's queue and redelivers from 7, in order.
        input.rewound();
        for o in 7..=10 {
            queue.send(M(o)).unwrap();
        }
        for o in 7..=10 {
            assert_eq!(input.next().await, Next::InOrder(M(o)));
        }
        // A duplicate of what was just taken is late too (replayed, never reordered).
        queue.send(M(10)).unwrap();
        assert!(matches!(input.next().await, Next::Late { seen: 10, .. }));
    }

    #[tokio::test]
    async fn after_a_rewind_stragglers_from_before_the_seek_are_dropped_not_taken() {
        // Seen on Kafka at a worker's start: the main queue held a run of the partition's
        // messages fetched before the split; the first of them came late, and the rest were
        // still in the straggler channel when the partition was rewound.
        let (stragglers, queue, mut input) = input();
        queue.send(M(10)).unwrap();
        assert_eq!(input.next().await, Next::InOrder(M(10)));
        for o in 7..=9 {
            stragglers.send(M(o)).unwrap();
        }
        assert!(matches!(
            input.next().await,
            Next::Late { message: M(7), .. }
        ));
        input.rewound();
        // The seek redelivers from 7 through the partition's queue; 8 and 9 from before it, and
        // any straggler still routed afterwards, must not be taken ahead of 7.
        for o in 7..=10 {
            queue.send(M(o)).unwrap();
        }
        stragglers.send(M(9)).unwrap();
        for o in 7..=10 {
            assert_eq!(input.next().await, Next::InOrder(M(o)));
        }
    }

    #[tokio::test]
    async fn stragglers_first_when_both_are_ready() {
        let (stragglers, queue, mut input) = input();
        queue.send(M(20)).unwrap();
        stragglers.send(M(18)).unwrap();
        stragglers.send(M(19)).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            match input.next().await {
                Next::InOrder(m) => got.push(m.0),
                late => panic!("{late:?}"),
            }
        }
        assert_eq!(got, [18, 19, 20]);
    }
}
