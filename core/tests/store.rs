//! The Mongo store against the real (stand-in) server started by `scripts/stack up`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use leafsync_core::document::Projection;
use leafsync_core::event::{ImageEvent, DEFAULT_MAX_EVENT_BYTES};
use leafsync_core::store::{
    ErrorClass, OutcomesFrom, Store, StoreError, DUPLICATE_KEY, LEGACY_ID_INDEX,
};
use leafsync_core::Outcome::*;
use leafsync_core::{ImageId, Rejected, Version, WriteResult};
use leafsync_testkit::{Cleanup, DelayProxy};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::{ClientOptions, ServerAddress};
use std::time::Duration;

fn event_doc(id: i64, ts: &str, label: &str) -> Document {
    let json = format!(
        r#"{{"id":{id},"updated_at":"{ts}","label":"{label}","created_at":"2025-01-01T00:00:00Z"}}"#
    );
    ImageEvent::decode(json.as_bytes(), DEFAULT_MAX_EVENT_BYTES)
        .unwrap()
        .to_document(&Projection::all())
}

/// A store on a fresh database of the stack's, reached through a relay whose delay the test
/// sets (none at first); connected, so its pool holds one open connection.
async fn store_behind_relay() -> (Store, DelayProxy, Cleanup) {
    let (mut c, cleanup) = common::config();
    let opts = ClientOptions::parse(c.mongo.uri.expose()).await.unwrap();
    let ServerAddress::Tcp { host, port } = &opts.hosts[0] else {
        panic!("the stack's database listens on TCP: {:?}", opts.hosts);
    };
    let server = tokio::net::lookup_host((host.as_str(), port.unwrap_or(27017)))
        .await
        .unwrap()
        .next()
        .expect("the stack's database host resolves");
    let link = DelayProxy::start(server, Duration::ZERO).await;
    c.mongo.uri = leafsync_core::config::Secret::new(format!(
        "mongodb://{}/?directConnection=true",
        link.addr
    ));
    let s = Store::connect(&c.mongo, "leafsync-test").await.unwrap();
    (s, link, cleanup)
}

/// `Store::write_batch` with documents built as maps (easier to edit in a test).
async fn write(s: &Store, docs: &[Document]) -> Result<Vec<WriteResult>, StoreError> {
    write_with(s, docs, OutcomesFrom::Reply).await
}

/// `Store::write_batch_with`, documents as maps.
async fn write_with(
    s: &Store,
    docs: &[Document],
    from: OutcomesFrom,
) -> Result<Vec<WriteResult>, StoreError> {
    let raw: Vec<RawDocumentBuf> = docs
        .iter()
        .map(|d| RawDocumentBuf::from_document(d).unwrap())
        .collect();
    s.write_batch_with("potato", &raw, from).await
}

const BOTH: [OutcomesFrom; 2] = [OutcomesFrom::Reply, OutcomesFrom::Read];

/// The stored document's `label`.
async fn label(s: &Store, id: i64) -> String {
    s.get("potato", ImageId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap()
        .get_str("label")
        .unwrap()
        .to_owned()
}

/// A store on a fresh database, and the guard that drops it.
async fn store() -> (Store, Cleanup) {
    let (c, cleanup) = common::config();
    let s = Store::connect(&c.mongo, "leafsync-test")
        .await
        .expect("MongoDB up (scripts/stack up)");
    (s, cleanup)
}

#[tokio::test]
async fn upsert_read_back_and_count() {
    let (s, _cleanup) = store().await;
    let r = write(
        &s,
        &[
            event_doc(1, "2025-01-01T00:00:01Z", "healthy"),
            event_doc(2, "2025-01-01T00:00:01Z", "late_blight"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r, [Ok(Inserted), Ok(Inserted)]);

    let d = s
        .get("potato", ImageId::new(2).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_str("label").unwrap(), "late_blight");
    assert!(d.get("_id").is_none(), "the API never shows _id");
    assert!(
        matches!(d.get("updated_at"), Some(Bson::DateTime(_))),
        "dates are BSON dates: {d}"
    );
    assert!(s
        .get("potato", ImageId::new(3).unwrap())
        .await
        .unwrap()
        .is_none());

    // Soft delete is an update like any other; counts see it.
    let mut del = event_doc(2, "2025-01-01T00:00:02Z", "late_blight");
    del.insert("deleted", true);
    let r = write(&s, &[del]).await.unwrap();
    assert_eq!(r, [Ok(Updated)]);
    assert_eq!(s.count("potato", false).await.unwrap(), 1);
    assert_eq!(s.count("potato", true).await.unwrap(), 2);
}

#[tokio::test]
async fn documents_are_keyed_by_the_image_id() {
    let (s, _cleanup) = store().await;
    write(&s, &[event_doc(7, "2025-01-01T00:00:01Z", "healthy")])
        .await
        .unwrap();
    // Read without the store's projection: `_id` is the image id itself, so the `_id` index
    // is the only one a write maintains, and a second document for the id cannot exist.
    let raw = s
        .collection("potato")
        .find_one(doc! {"id": 7_i64})
        .await
        .unwrap()
        .expect("written");
    assert_eq!(raw.get("_id"), Some(&Bson::Int64(7)), "{raw}");
    let e = s
        .collection("potato")
        .insert_one(doc! {"_id": 7_i64, "id": 7_i64})
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&DUPLICATE_KEY.to_string()), "{e}");
    let indexes = s.collection("potato").list_index_names().await.unwrap();
    assert_eq!(indexes, ["_id_"], "no index of leafsync's own");
}

#[tokio::test]
async fn values_that_read_like_expressions_are_stored_verbatim() {
    // The first attempt wraps the document in an aggregation pipeline: without `$literal`, a
    // string starting with `$` would be read as a field path and store another value.
    let (s, _cleanup) = store().await;
    for (from, id) in [(OutcomesFrom::Reply, 1), (OutcomesFrom::Read, 2)] {
        for (ts, value, outcome) in [
            ("2025-01-01T00:00:01Z", "$updated_at", Inserted),
            ("2025-01-01T00:00:02Z", "$$ROOT", Updated),
        ] {
            let d = event_doc(id, ts, value);
            let r = write_with(&s, std::slice::from_ref(&d), from)
                .await
                .unwrap();
            assert_eq!(r, [Ok(outcome)], "{from:?} {value}");
            let mut stored = s
                .collection("potato")
                .find_one(doc! {"_id": id})
                .await
                .unwrap()
                .expect("written");
            assert_eq!(stored.remove("_id"), Some(Bson::Int64(id)));
            assert_eq!(stored, d, "{from:?}: stored exactly as sent");
        }
    }
}

#[tokio::test]
async fn the_layout_of_an_older_leafsync_is_refused_by_name() {
    let (s, _cleanup) = store().await;
    // Collections not created yet, and ones in this version's layout, pass.
    s.check_layout(&["potato", "tomato"]).await.unwrap();
    write(&s, &[event_doc(1, "2025-01-01T00:00:01Z", "healthy")])
        .await
        .unwrap();
    s.check_layout(&["potato"]).await.unwrap();
    leafsync_testkit::add_legacy_id_index(&s.collection("tomato"), LEGACY_ID_INDEX).await;
    let e = s.check_layout(&["potato", "tomato"]).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("collection `tomato`") && msg.contains("Upgrading"),
        "{msg}"
    );
}

#[tokio::test]
async fn stale_guard_outcomes() {
    // Both ways of learning outcomes label every case alike (ids apart per way).
    let (s, _cleanup) = store().await;
    for (way, base) in BOTH.into_iter().zip([10, 20]) {
        let w = |docs: Vec<Document>| {
            let s = &s;
            async move { write_with(s, &docs, way).await }
        };
        let v2 = event_doc(base, "2025-01-01T00:00:02Z", "v2");
        assert_eq!(
            w(vec![v2.clone()]).await.unwrap(),
            [Ok(Inserted)],
            "{way:?}"
        );

        // Older: never overwrites, reported stale.
        let r = w(vec![event_doc(base, "2025-01-01T00:00:01Z", "v1")]).await;
        assert_eq!(r.unwrap(), [Ok(Stale)], "{way:?}");

        // Equal and identical: an idempotent replay.
        assert_eq!(w(vec![v2]).await.unwrap(), [Ok(Unchanged)], "{way:?}");

        // Newer: replaces the whole document (fields absent from the event disappear).
        let mut v3 = event_doc(base, "2025-01-01T00:00:03Z", "v3");
        v3.remove("created_at");
        let r = w(vec![v3, event_doc(base + 1, "2025-01-01T00:00:00Z", "new")]).await;
        assert_eq!(r.unwrap(), [Ok(Updated), Ok(Inserted)], "{way:?}");
        let d = s
            .get("potato", ImageId::new(base).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.get_str("label").unwrap(), "v3");
        assert!(d.get("created_at").is_none());

        // A mixed batch: each statement gets its own outcome, none blocks another.
        let r = w(vec![
            event_doc(base, "2025-01-01T00:00:00Z", "old"),
            event_doc(base + 2, "2025-01-01T00:00:00Z", "new"),
            event_doc(base + 1, "2025-01-01T00:00:05Z", "newer"),
            event_doc(base + 1 + 100, "2025-01-01T00:00:05Z", "new"),
        ])
        .await;
        assert_eq!(
            r.unwrap(),
            [Ok(Stale), Ok(Inserted), Ok(Updated), Ok(Inserted)],
            "{way:?}"
        );
        assert_eq!(label(&s, base).await, "v3", "{way:?}");
        assert_eq!(label(&s, base + 1).await, "newer", "{way:?}");
    }
}

#[tokio::test]
async fn a_tie_goes_to_the_later_event_either_way() {
    // Same `updated_at`, different content: the version rule says the later event wins, and
    // the label says the stored version was the same (unchanged).
    let (s, _cleanup) = store().await;
    for (way, id) in BOTH.into_iter().zip([50, 51]) {
        let at = "2025-01-01T00:00:02Z";
        write_with(&s, &[event_doc(id, at, "first")], way)
            .await
            .unwrap();
        let r = write_with(&s, &[event_doc(id, at, "second")], way).await;
        assert_eq!(r.unwrap(), [Ok(Unchanged)], "{way:?}");
        assert_eq!(label(&s, id).await, "second", "{way:?}");
    }
}

#[tokio::test]
async fn an_oversized_document_is_rejected_alone() {
    let (s, _cleanup) = store().await;
    let mut huge = event_doc(21, "2025-01-01T00:00:00Z", "huge");
    huge.insert("blob", "x".repeat(17 * 1024 * 1024));
    let r = write(
        &s,
        &[
            event_doc(20, "2025-01-01T00:00:00Z", "ok"),
            huge,
            event_doc(22, "2025-01-01T00:00:00Z", "ok"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r[0], Ok(Inserted));
    assert_eq!(r[2], Ok(Inserted));
    assert!(
        matches!(&r[1], Err(Rejected { code, message }) if *code != 0 && !message.is_empty()),
        "refused by the server's code, with its message: {r:?}"
    );
    assert!(s
        .get("potato", ImageId::new(21).unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_concurrent_newer_write_wins_over_the_guarded_upsert() {
    // Two writers racing on one id (e.g. two workers during a rebalance): whatever the
    // interleaving, the newest version is what stays, and the older one is labelled stale.
    let (s, _cleanup) = store().await;
    for (way, base) in BOTH.into_iter().zip([300, 400]) {
        for id in base..base + 20 {
            let newer = [event_doc(id, "2025-01-01T00:00:09Z", "newer")];
            let older = [event_doc(id, "2025-01-01T00:00:01Z", "older")];
            let (a, b) = tokio::join!(write_with(&s, &newer, way), write_with(&s, &older, way));
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(label(&s, id).await, "newer", "{way:?} {a:?} {b:?}");
            assert!(
                a == [Ok(Inserted)] || a == [Ok(Updated)] || a == [Ok(Unchanged)],
                "the newer one is applied: {way:?} {a:?}"
            );
            // The older one lost whenever it came second; first, it was replaced.
            assert!(b == [Ok(Stale)] || b == [Ok(Inserted)], "{way:?} {b:?}");
        }
    }
}

#[tokio::test]
async fn unreachable_server_is_a_transient_error() {
    let (mut c, _cleanup) = common::config();
    c.mongo.uri =
        leafsync_core::config::Secret::new("mongodb://127.0.0.1:1/?directConnection=true");
    c.mongo.startup_timeout_ms = 500;
    c.mongo.connect_timeout_ms = 200;
    let e = Store::connect(&c.mongo, "leafsync-test").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(!e.is_document_fault());
    assert_eq!(e.code(), None, "no server answered");
    assert!(e.to_string().contains("mongo.startup_timeout_ms"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the driver's error is kept as the source"
    );
}

/// A readiness ping cut by its timeout must not fail the probes after it. The driver closes a
/// connection dropped mid-command, so a cancelled ping left the next probe to open a connection
/// first; on a link where that plus one round trip is longer than the timeout, every probe was
/// cut in turn and `/ready` stayed 503, although the server answered each ping in half of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_cut_by_its_timeout_does_not_fail_the_ones_after_it() {
    let (s, link, _cleanup) = store_behind_relay().await;
    let timeout = Duration::from_millis(800);

    // One slow answer: the ping in flight outlives its probe.
    link.set_delay(Duration::from_millis(1500));
    assert!(!s.answers_within(timeout).await, "a 3 s round trip is cut");
    // Then a round trip of 500 ms: a ping on an open connection fits the timeout; a new
    // connection's handshake and then its ping (1 s) do not.
    link.set_delay(Duration::from_millis(250));
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(s.answers_within(timeout).await);
    }
    assert!(
        answers.contains(&true),
        "every probe after the slow answer failed: {answers:?}"
    );
}

/// A ping on a connection that went silent is not waited for forever: after the link heals,
/// the probes answer yes again within `PROBE_GIVE_UP` (10 s), not when its reply comes after a
/// minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_gives_up_on_a_ping_that_went_silent() {
    let (s, link, _cleanup) = store_behind_relay().await;
    let timeout = Duration::from_millis(800);
    link.set_delay(Duration::from_secs(60));
    assert!(!s.answers_within(timeout).await, "silent");
    link.set_delay(Duration::ZERO);
    let healed = std::time::Instant::now();
    while !s.answers_within(timeout).await {
        assert!(
            // A literal, not the constant: a give-up of an hour must fail here.
            healed.elapsed() < Duration::from_secs(15),
            "no yes {:?} after the heal",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("ready again {:?} after the heal", healed.elapsed());
}

#[tokio::test]
async fn a_refused_command_is_permanent_and_not_the_documents_fault() {
    // An invalid collection name: the server refuses the request's form, with a code. This
    // must not be mistaken for a bad document (which would dead-letter every event).
    let (s, _cleanup) = store().await;
    let doc = RawDocumentBuf::from_document(&event_doc(40, "2025-01-01T00:00:00Z", "x")).unwrap();
    let e = s.write_batch("bad$name", &[doc]).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{e}");
    assert!(e.code().is_some(), "the server's code is kept: {e}");
    assert!(!e.is_document_fault(), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[tokio::test]
async fn the_write_guard_is_the_version_rule() {
    // For every (stored, new) pair, the server-side guard keeps the stored document exactly
    // when `Version::replaces` says the new one does not replace it.
    let (s, _cleanup) = store().await;
    let ts = |secs: i64| format!("2025-01-01T00:00:0{secs}Z");
    let mut id = 100;
    for stored in 1..=3 {
        for new in 1..=3 {
            id += 1;
            write(&s, &[event_doc(id, &ts(stored), "stored")])
                .await
                .unwrap();
            // Unclassified: every statement goes to the server's guard, none is pre-filtered.
            let new_doc = RawDocumentBuf::from_document(&event_doc(id, &ts(new), "new")).unwrap();
            s.write_batch_unclassified("potato", &[new_doc])
                .await
                .unwrap();
            let d = s
                .get("potato", ImageId::new(id).unwrap())
                .await
                .unwrap()
                .unwrap();
            let v = |secs: i64| {
                Version::of(chrono::DateTime::from_timestamp(1_735_689_600 + secs, 0).unwrap())
            };
            let want = if v(new).replaces(v(stored)) {
                "new"
            } else {
                "stored"
            };
            assert_eq!(
                d.get_str("label").unwrap(),
                want,
                "stored {stored}, new {new}"
            );
        }
    }
}
