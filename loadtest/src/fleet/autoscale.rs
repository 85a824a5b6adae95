//! The two computations that decide the fleet's size in a cluster, done here as those systems do
//! them, so a drill can follow them with real workers:
//! - KEDA's `apache-kafka` scaler turns the group's offsets into one metric, the total lag
//!   (kedacore/keda v2.21.1, `pkg/scalers/apache_kafka_scaler.go`);
//! - the HPA turns that metric into a replica count, with its tolerance, stabilization windows
//!   and scaling policies (kubernetes v1.34.4, `pkg/controller/podautoscaler/horizontal.go` and
//!   `replica_calculator.go`).
//!
//! Line numbers below are of those versions. Time is in (model) seconds.

use std::fmt;

/// One partition's offsets as the scaler reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The group's committed offset; `None` when it has none yet.
    pub committed: Option<i64>,
    /// The first retained offset.
    pub earliest: i64,
    /// The high watermark.
    pub latest: i64,
}

/// `offsetResetPolicy` of the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// The `apache-kafka` trigger's settings that shape its metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTrigger {
    pub lag_threshold: i64,
    pub offset_reset: OffsetReset,
    pub allow_idle_consumers: bool,
    pub limit_to_partitions_with_lag: bool,
}

impl KafkaTrigger {
    /// The metric KEDA reports for these partitions: `getTotalLag` (l.483-539).
    pub fn total_lag(&self, partitions: &[PartitionOffsets]) -> i64 {
        let mut total = 0;
        let mut with_lag = 0;
        for p in partitions {
            let lag = self.partition_lag(p);
            total += lag;
            if lag > 0 {
                with_lag += 1;
            }
        }
        // l.520-535: unless idle consumers are allowed, the metric is capped so the HPA never
        // asks for more replicas than partitions (or than partitions with lag). The test is an
        // integer division, as in Go.
        if !self.allow_idle_consumers || self.limit_to_partitions_with_lag {
            let upper = if self.limit_to_partitions_with_lag {
                with_lag
            } else {
                partitions.len() as i64
            };
            if total / self.lag_threshold > upper {
                total = upper * self.lag_threshold;
            }
        }
        total
    }

    /// `getLagForPartition` (l.333-400), without `excludePersistentLag`.
    fn partition_lag(&self, p: &PartitionOffsets) -> i64 {
        match (p.committed, self.offset_reset) {
            // l.342-352: no commit yet and `latest`: a lag of 1, so the group is not scaled to 0.
            (None, OffsetReset::Latest) => 1,
            // l.359-372: no commit yet and `earliest`: everything retained.
            (None, OffsetReset::Earliest) => (p.latest - p.earliest).max(0),
            // l.399.
            (Some(c), _) => p.latest - c,
        }
    }
}

/// One HPA scaling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub value: i32,
    pub period_s: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Pods,
    Percent,
}

/// `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Max,
    Min,
    Disabled,
}

/// The scaling rules of one direction, with the API server's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub stabilization_s: u32,
    pub select: Select,
    pub policies: Vec<Policy>,
    /// Of the usage ratio, in this direction (`--horizontal-pod-autoscaler-tolerance`, 0.1).
    pub tolerance: f64,
}

impl Rules {
    /// Scale-up defaults: no stabilization, the larger of 4 pods or 100% per 15 s
    /// (pkg/apis/autoscaling/v2/defaults.go l.30-49).
    pub fn default_up() -> Self {
        Self {
            stabilization_s: 0,
            select: Select::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_s: 15,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_s: 15,
                },
            ],
            tolerance: 0.1,
        }
    }

    /// Scale-down defaults: 100% per 15 s (defaults.go l.50-64), and the controller's
    /// stabilization window of 300 s (config/v1alpha1/defaults.go l.43-44, applied by
    /// `maybeInitScaleDownStabilizationWindow`, horizontal.go l.1049-1055).
    pub fn default_down() -> Self {
        Self {
            stabilization_s: 300,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period_s: 15,
            }],
            tolerance: 0.1,
        }
    }
}

/// What one HPA sync decided, and from what.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub at_s: f64,
    pub metric: i64,
    pub spec_replicas: i32,
    pub status_replicas: i32,
    /// From the metric alone (`GetExternalPerPodMetricReplicas`).
    pub metric_replicas: i32,
    /// After stabilization, before the rate limits.
    pub stabilized: i32,
    /// The new `spec.replicas`.
    pub desired: i32,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:.0}s metric={} replicas {}→{} (metric says {}, stabilized {})",
            self.at_s,
            self.metric,
            self.spec_replicas,
            self.desired,
            self.metric_replicas,
            self.stabilized
        )
    }
}

/// The HPA controller's state for one autoscaler with an External metric and an AverageValue
/// target, and its `reconcileAutoscaler` (horizontal.go l.749-930).
#[derive(Debug, Clone)]
pub struct Hpa {
    pub min: i32,
    pub max: i32,
    /// The AverageValue target (KEDA sets it to `lagThreshold`: scaler.go `GetMetricTarget`).
    pub target: i64,
    pub up: Rules,
    pub down: Rules,
    recommendations: Vec<(f64, i32)>,
    up_events: Vec<(f64, i32)>,
    down_events: Vec<(f64, i32)>,
}

impl Hpa {
    pub fn new(min: i32, max: i32, target: i64, up: Rules, down: Rules) -> Self {
        Self {
            min,
            max,
            target,
            up,
            down,
            recommendations: Vec::new(),
            up_events: Vec::new(),
            down_events: Vec::new(),
        }
    }

    /// One sync at `now`: `spec` is the Deployment's `spec.replicas`, `status` its
    /// `status.replicas` (pods that exist and are not terminating).
    pub fn sync(&mut self, now: f64, spec: i32, status: i32, metric: i64) -> Decision {
        // l.808, `recordInitialRecommendation`: the first sync remembers the current size.
        if self.recommendations.is_empty() {
            self.recommendations.push((now, spec));
        }
        let mut d = Decision {
            at_s: now,
            metric,
            spec_replicas: spec,
            status_replicas: status,
            metric_replicas: spec,
            stabilized: spec,
            desired: spec,
        };
        // l.830-840: a target scaled to 0 is left alone (KEDA's activation wakes it), and
        // out-of-range sizes are corrected first, without metrics or behavior.
        if spec == 0 && self.min != 0 {
            d.desired = 0;
        } else if spec > self.max {
            d.desired = self.max;
        } else if spec < self.min {
            d.desired = self.min;
        } else {
            d.metric_replicas = self.metric_replicas(status, metric);
            d.stabilized = self.stabilize(now, spec, d.metric_replicas);
            d.desired = self.rate_limit(now, spec, d.stabilized);
        }
        if d.desired != spec {
            // l.926, `storeScaleEvent`.
            let events = if d.desired > spec {
                &mut self.up_events
            } else {
                &mut self.down_events
            };
            events.push((now, (d.desired - spec).abs()));
        }
        d
    }

    /// `GetExternalPerPodMetricReplicas` (replica_calculator.go l.369-407): the current size
    /// while the usage ratio is within the tolerance (l.56-58), else ⌈metric / target⌉.
    fn metric_replicas(&self, status: i32, metric: i64) -> i32 {
        let ratio = metric as f64 / (self.target as f64 * f64::from(status));
        let within = 1.0 - self.down.tolerance <= ratio && ratio <= 1.0 + self.up.tolerance;
        if within {
            status
        } else {
            (metric as f64 / self.target as f64).ceil() as i32
        }
    }

    /// `stabilizeRecommendationWithBehaviors` (l.1134-1190): up to the lowest recommendation of
    /// the scale-up window, down to the highest of the scale-down window.
    fn stabilize(&mut self, now: f64, spec: i32, desired: i32) -> i32 {
        let up_cutoff = now - f64::from(self.up.stabilization_s);
        let down_cutoff = now - f64::from(self.down.stabilization_s);
        let mut up = desired;
        let mut down = desired;
        for &(t, r) in &self.recommendations {
            // `After(cutoff)`: strictly newer.
            if t > up_cutoff {
                up = up.min(r);
            }
            if t > down_cutoff {
                down = down.max(r);
            }
        }
        // Samples older than both windows are never read again (l.1162-1165 reuse their slot).
        self.recommendations
            .retain(|&(t, _)| t >= up_cutoff || t >= down_cutoff);
        self.recommendations.push((now, desired));
        spec.max(up).min(down)
    }

    /// `convertDesiredReplicasWithBehaviorRate` (l.1194-1262).
    fn rate_limit(&self, now: f64, spec: i32, desired: i32) -> i32 {
        if desired > spec {
            let limit = self.limit(now, spec, true).max(spec);
            desired.min(self.max.min(limit))
        } else if desired < spec {
            let limit = self.limit(now, spec, false).min(spec);
            desired.max(self.min.max(limit))
        } else {
            desired
        }
    }

    /// `calculateScaleUpLimitWithScalingRules` (l.1311-1337) and
    /// `calculateScaleDownLimitWithBehaviors` (l.1340-1366).
    fn limit(&self, now: f64, spec: i32, up: bool) -> i32 {
        let rules = if up { &self.up } else { &self.down };
        // Scaling up, `Max` picks the largest limit; scaling down, the smallest.
        let pick_larger = match (rules.select, up) {
            (Select::Disabled, _) => return spec,
            (Select::Max, true) | (Select::Min, false) => true,
            (Select::Max, false) | (Select::Min, true) => false,
        };
        let in_period = |events: &[(f64, i32)], period: u32| -> i32 {
            let cutoff = now - f64::from(period);
            events
                .iter()
                .filter(|&&(t, _)| t > cutoff)
                .map(|&(_, n)| n)
                .sum()
        };
        let proposals = rules.policies.iter().map(|p| {
            let start = spec - in_period(&self.up_events, p.period_s)
                + in_period(&self.down_events, p.period_s);
            let v = f64::from(p.value) / 100.0;
            match (p.kind, up) {
                (PolicyKind::Pods, true) => start + p.value,
                (PolicyKind::Pods, false) => start - p.value,
                // Rounded up, so a small fleet can grow at all (l.1330-1331).
                (PolicyKind::Percent, true) => (f64::from(start) * (1.0 + v)).ceil() as i32,
                // Go's int32() conversion truncates (l.1359).
                (PolicyKind::Percent, false) => (f64::from(start) * (1.0 - v)) as i32,
            }
        });
        if pick_larger {
            proposals.max().unwrap_or(spec)
        } else {
            proposals.min().unwrap_or(spec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(committed: Option<i64>, earliest: i64, latest: i64) -> PartitionOffsets {
        PartitionOffsets {
            committed,
            earliest,
            latest,
        }
    }

    fn trigger(threshold: i64) -> KafkaTrigger {
        KafkaTrigger {
            lag_threshold: threshold,
            offset_reset: OffsetReset::Earliest,
            allow_idle_consumers: false,
            limit_to_partitions_with_lag: false,
        }
    }

    #[test]
    fn lag_is_summed_over_partitions_and_uncommitted_ones_count_by_policy() {
        let parts = [
            part(Some(10), 0, 50),
            part(None, 20, 70),
            part(Some(5), 0, 5),
        ];
        // 40 + (70 - 20) + 0.
        assert_eq!(trigger(1000).total_lag(&parts), 90);
        let latest = KafkaTrigger {
            offset_reset: OffsetReset::Latest,
            ..trigger(1000)
        };
        // 40 + 1 + 0.
        assert_eq!(latest.total_lag(&parts), 41);
    }

    #[test]
    fn the_metric_is_capped_at_partitions_times_threshold_unless_idle_consumers_are_allowed() {
        // 3 partitions, 1,000 each, threshold 100: 3,000 / 100 = 30 > 3 → 3 × 100.
        let parts = [part(Some(0), 0, 1000); 3];
        assert_eq!(trigger(100).total_lag(&parts), 300);
        let idle = KafkaTrigger {
            allow_idle_consumers: true,
            ..trigger(100)
        };
        assert_eq!(idle.total_lag(&parts), 3000);
        // Only partitions with lag count: 1 of 3 → capped at 1 × 100.
        let parts = [
            part(Some(0), 0, 1000),
            part(Some(5), 0, 5),
            part(Some(7), 0, 7),
        ];
        let limited = KafkaTrigger {
            limit_to_partitions_with_lag: true,
            ..trigger(100)
        };
        assert_eq!(limited.total_lag(&parts), 100);
        // The test divides as integers: 399 / 100 = 3, not above 3 partitions, so no cap.
        let parts = [
            part(Some(0), 0, 133),
            part(Some(0), 0, 133),
            part(Some(0), 0, 133),
        ];
        assert_eq!(trigger(100).total_lag(&parts), 399);
    }

    fn hpa(max: i32) -> Hpa {
        Hpa::new(1, max, 100, Rules::default_up(), Rules::default_down())
    }

    #[test]
    fn within_the_tolerance_the_size_stays_and_beyond_it_is_metric_over_target_rounded_up() {
        let mut h = hpa(10);
        // 2 replicas, target 100: 210 is a ratio of 1.05 → stays.
        assert_eq!(h.sync(0.0, 2, 2, 210).desired, 2);
        // 221: ratio 1.105 → ⌈2.21⌉ = 3.
        assert_eq!(h.sync(15.0, 2, 2, 221).desired, 3);
    }

    #[test]
    fn default_scale_up_is_the_larger_of_4_pods_and_100_percent_per_15_s() {
        let mut h = hpa(50);
        // From 1, metric for 20: +4 pods (5) beats +100% (2).
        assert_eq!(h.sync(0.0, 1, 1, 2000).desired, 5);
        // 10 s later, within the same 15 s period: the period started at 1, so still ≤ 5.
        assert_eq!(h.sync(10.0, 5, 5, 2000).desired, 5);
        // 16 s after the first step the period starts at 5: +100% = 10 beats +4 = 9.
        assert_eq!(h.sync(16.0, 5, 5, 2000).desired, 10);
    }

    #[test]
    fn scale_down_waits_for_the_highest_recommendation_of_its_window() {
        let mut h = hpa(10);
        assert_eq!(h.sync(0.0, 1, 1, 500).desired, 5);
        // The metric drops at once, but 5 was recommended within 300 s.
        assert_eq!(h.sync(15.0, 5, 5, 100).desired, 5);
        assert_eq!(h.sync(299.0, 5, 5, 100).desired, 5);
        // At 301 s the 5 of t=0 has left the window; the highest left is 1 (t=15…299).
        let d = h.sync(301.0, 5, 5, 100);
        assert_eq!((d.metric_replicas, d.stabilized, d.desired), (1, 1, 1));
    }

    #[test]
    fn shipped_style_policies_limit_each_step() {
        // Up: 4 pods per 30 s, no window; down: 1 pod per 60 s, window 60 s.
        let up = Rules {
            stabilization_s: 0,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Pods,
                value: 4,
                period_s: 30,
            }],
            tolerance: 0.1,
        };
        let down = Rules {
            stabilization_s: 60,
            select: Select::Max,
            policies: vec![Policy {
                kind: PolicyKind::Pods,
                value: 1,
                period_s: 60,
            }],
            tolerance: 0.1,
        };
        let mut h = Hpa::new(1, 18, 100, up, down);
        assert_eq!(h.sync(0.0, 1, 1, 1800).desired, 5);
        assert_eq!(h.sync(15.0, 5, 5, 1800).desired, 5, "30 s period");
        assert_eq!(h.sync(31.0, 5, 5, 1800).desired, 9);
        // Load gone: recommendations of 18 at 0…31 s keep it until they are 60 s old.
        assert_eq!(h.sync(60.0, 9, 9, 0).desired, 9);
        assert_eq!(h.sync(92.0, 9, 9, 0).desired, 8, "then 1 pod");
        assert_eq!(h.sync(107.0, 8, 8, 0).desired, 8, "per 60 s");
        assert_eq!(h.sync(153.0, 8, 8, 0).desired, 7);
    }

    #[test]
    fn min_select_policy_and_disabled() {
        let mut up = Rules::default_up();
        up.select = Select::Min;
        let mut h = Hpa::new(1, 50, 100, up, Rules::default_down());
        // Min of (+4 → 6, +100% → 4) from 2.
        assert_eq!(h.sync(0.0, 2, 2, 5000).desired, 4);
        let mut down = Rules::default_down();
        down.select = Select::Disabled;
        down.stabilization_s = 0;
        let mut h = Hpa::new(1, 50, 100, Rules::default_up(), down);
        assert_eq!(h.sync(0.0, 6, 6, 0).desired, 6, "scale-down disabled");
    }

    #[test]
    fn a_size_outside_min_and_max_is_corrected_and_zero_is_left_alone() {
        let mut h = Hpa::new(2, 3, 100, Rules::default_up(), Rules::default_down());
        assert_eq!(h.sync(0.0, 5, 5, 0).desired, 3);
        assert_eq!(h.sync(15.0, 1, 1, 0).desired, 2);
        assert_eq!(h.sync(30.0, 0, 0, 10_000).desired, 0);
    }
}
