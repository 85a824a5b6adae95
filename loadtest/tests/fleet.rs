//! The CI-sized autoscaling drill: `leafsync-loadtest fleet` with the shipped ScaledObject and
//! Deployment, time-scaled 10×, a step from 300 to 12,000 events/s and back, real workers on the
//! shared stack. Each HPA sync is checked against the rules it must follow, computed here from
//! the poll's own inputs; the fleet grows and shrinks back; nothing is lost or stale.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::process::Command;

use common::{sibling, Isolated};

/// The shipped `lagThreshold` (keda/scaledobject.yaml) divided by the time scale.
const THRESHOLD: i64 = 80_000 / 10;
/// 3 topics × 6 partitions: KEDA caps the metric at that many replicas' worth.
const PARTITIONS: i64 = 18;

#[tokio::test(flavor = "multi_thread")]
async fn a_step_scales_the_fleet_out_and_back_by_the_shipped_rules_and_loses_nothing() {
    let iso = Isolated::new().await;
    let out = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = Command::new(env!("CARGO_BIN_EXE_leafsync-loadtest"))
        .args(["fleet", "--profile", "step", "--time-scale", "10"])
        .args(["--base", "300", "--peak", "12000", "--timeout", "240"])
        .arg("--worker-bin")
        .arg(sibling("leafsync-worker"))
        .arg("--scaled-object")
        .arg(root.join("keda/scaledobject.yaml"))
        .arg("--deployment")
        .arg(root.join("k8s/base/worker.yaml"))
        .arg("--out")
        .arg(out.path())
        .envs(iso.env.iter().cloned())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{stdout}");
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("lost 0 stale 0 mismatched 0 unexpected 0"),
        "{stdout}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(r["lag_threshold"][1].as_i64(), Some(THRESHOLD));
    let polls = r["polls"].as_array().unwrap();
    assert!(polls.len() > 50, "{} polls", polls.len());
    let int = |p: &serde_json::Value, k: &str| p[k].as_i64().unwrap();
    for p in polls {
        let (lag, metric) = (int(p, "lag"), int(p, "metric"));
        let (spec, desired) = (int(p, "spec_replicas"), int(p, "desired"));
        // KEDA's metric: the total lag, capped at a replica per partition.
        let capped = if lag / THRESHOLD > PARTITIONS {
            PARTITIONS * THRESHOLD
        } else {
            lag
        };
        assert_eq!(metric, capped, "{p}");
        // The fleet did what the HPA asked.
        assert_eq!(int(p, "running_after"), desired, "{p}");
        assert!((1..=18).contains(&desired), "{p}");
        let asked = (metric as f64 / THRESHOLD as f64).ceil() as i64;
        if desired > spec {
            // Up: never past what the metric asks, at most 4 pods a step (Pods 4 per 30 s).
            assert!(desired <= asked.max(1) && desired - spec <= 4, "{p}");
        }
        if desired < spec {
            // Down: one pod a step (Pods 1 per 60 s), never below what the metric asks.
            assert!(spec - desired == 1 && desired >= asked.max(1), "{p}");
        }
    }
    // Down steps are 60 model seconds apart at least (the policy's period).
    let downs: Vec<f64> = polls
        .iter()
        .filter(|p| int(p, "desired") < int(p, "spec_replicas"))
        .map(|p| p["t"].as_f64().unwrap())
        .collect();
    for w in downs.windows(2) {
        assert!(w[1] - w[0] >= 60.0, "down steps at {downs:?}");
    }
    let s = &r["summary"];
    assert!(
        s["peak_replicas"].as_i64().unwrap() >= 2,
        "the step scaled out: {s}"
    );
    assert_eq!(
        int(polls.last().unwrap(), "desired"),
        1,
        "back at the minimum"
    );
    // The first scale-down waited out the 300 s (model) stabilization after the peak's
    // recommendations.
    assert!(s["scale_in_delay_s"].as_f64().unwrap() > 0.0, "{s}");
    assert!(!downs.is_empty());
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Replicas"));
}
