//! The load tool against the real stack and a real worker: `run` passes, `verify` catches a
//! lost and a stale document and exits non-zero, poison events all reach the dead-letter topic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::process::Command;
use std::time::Duration;

use common::{sibling, Isolated};
use leafsync_core::Store;
use leafsync_loadtest::expected::Expected;
use leafsync_testkit::{free_port, wait_for_status, Process};
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread")]
async fn run_passes_and_verify_catches_lost_and_stale_documents() {
    let port = free_port();
    let iso = Isolated::new().await;
    let (name, config) = (&iso.name, &iso.config);
    let mut env = iso.env.clone();
    env.push((
        "LEAFSYNC__WORKER__ADMIN_ADDR".into(),
        format!("127.0.0.1:{port}"),
    ));

    let worker = Process::spawn(
        &sibling("leafsync-worker"),
        &[],
        &env,
        &format!("{name}-worker"),
    );
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_status(admin, "/ready", 200, Duration::from_secs(30), || {
        worker.log_tail()
    })
    .await;

    let out = tempfile::tempdir().unwrap();
    let loadtest = env!("CARGO_BIN_EXE_leafsync-loadtest");
    let run = Command::new(loadtest)
        .args([
            "run",
            "--count",
            "3000",
            "--ids-per-type",
            "200",
            "--poison-ratio",
            "0.01",
            "--seed",
            "3",
            "--timeout",
            "120",
        ])
        .args([
            "--worker-metrics",
            &format!("http://{admin}/metrics"),
            "--out",
        ])
        .arg(out.path())
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        worker.log_tail()
    );
    assert!(
        stdout.contains("lost 0 stale 0 mismatched 0 unexpected 0"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["events"], 3000);
    let poison = report["poison"].as_i64().unwrap();
    assert!(poison > 0, "the run sent poison");
    assert_eq!(
        report["dead_lettered"].as_i64().unwrap(),
        poison,
        "every poison event is in the dead-letter topic"
    );
    assert!(!report["samples"].as_array().unwrap().is_empty());
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Consumer lag"));

    let expected_file = out.path().join("expected.jsonl");
    let verify = |label: &str| {
        let o = Command::new(loadtest)
            .args(["verify", "--timeout", "3", "--expected"])
            .arg(&expected_file)
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        println!("{label}: {text}");
        (o.status.success(), text)
    };
    let (ok, text) = verify("clean");
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!(
            "dead-letter topic: {poison} messages (poison sent in this run: {poison})"
        )),
        "{text}"
    );

    // Sabotage the database: one document removed, another downgraded to an older version.
    let expected = Expected::load(&expected_file).unwrap();
    let mut potatoes = expected
        .images
        .keys()
        .filter(|(t, _)| *t == leafsync_core::ImageType::Potato);
    let (_, lost_id) = potatoes.next().unwrap();
    let (_, stale_id) = potatoes.next().unwrap();
    let store = Store::connect(&config.mongo, "lt-test").await.unwrap();
    let coll = store.collection(&config.types.potato.collection);
    coll.delete_one(doc! {"id": lost_id}).await.unwrap();
    let old = mongodb::bson::DateTime::from_millis(0);
    coll.update_one(doc! {"id": stale_id}, doc! {"$set": {"updated_at": old}})
        .await
        .unwrap();

    let (ok, text) = verify("sabotaged");
    assert!(!ok, "verify must exit non-zero");
    assert!(text.contains("lost 1 stale 1"), "{text}");
    assert!(
        text.contains(&format!("lost: potato/{lost_id}"))
            && text.contains(&format!("stale: potato/{stale_id}")),
        "{text}"
    );
}
