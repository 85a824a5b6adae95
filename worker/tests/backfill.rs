//! `leafsync-worker backfill` against the real stand-ins: exact state from a MongoDB source,
//! beside a live stream, after a SIGKILL, with bad documents, and from JSON Lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use common::{start_time, TestEnv, Totals};
use leafsync_core::{ImageType, Store};
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::generator::{GenConfig, Generator};
use leafsync_loadtest::seed;
use leafsync_loadtest::verify;
use mongodb::bson::{doc, oid::ObjectId, Document};

const CHECKPOINTS: &str = "leafsync_backfill_checkpoints";

fn gen(seed: u64, ids_per_type: i64) -> GenConfig {
    GenConfig {
        seed,
        ids_per_type,
        delete_ratio: 0.1,
        start: start_time(),
    }
}

/// Seeds the env's source database with `images` images; returns its name and the state.
async fn seeded(env: &TestEnv, source: &Store, seed_: u64, images: usize) -> (String, Expected) {
    let x = seed::images(gen(seed_, images as i64 / 2), images);
    seed::to_database(source, |t| env.config.types.get(t).collection.clone(), &x)
        .await
        .unwrap();
    (source.database().name().to_owned(), x)
}

async fn assert_exact(env: &TestEnv, x: &Expected) {
    let r = verify::check(&env.store, &env.config.types, x)
        .await
        .unwrap();
    assert!(r.is_exact(), "{}", r.summary());
}

/// Every checkpoint document, by its `_id` (type and source).
async fn checkpoints(store: &Store) -> HashMap<String, Document> {
    use futures::TryStreamExt as _;
    store
        .collection(CHECKPOINTS)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.get_str("_id").unwrap().to_owned(), d))
        .collect()
}

/// A count of a checkpoint; 0 for one that holds only a lease (taken before its first page).
fn count(d: &Document, path: &[&str]) -> u64 {
    if !d.contains_key("position") {
        return 0;
    }
    let mut d = d;
    for k in &path[..path.len() - 1] {
        d = d.get_document(k).unwrap();
    }
    d.get_i64(path[path.len() - 1]).unwrap() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongodb_source_of_20000_images_fills_an_empty_database_exactly_and_a_rerun_writes_nothing(
) {
    let env = TestEnv::new().await;
    let (source, _drop) = env.source_database().await;
    let (db, x) = seeded(&env, &source, 11, 20_000).await;
    let uri = env.config.mongo.uri.expose().to_owned();
    let args = ["--from-mongodb", &uri, "--source-database", &db];
    let t = Duration::from_secs(240);

    let dry = env.backfill("dry", &[&args[..], &["--dry-run"]].concat(), t);
    assert_eq!(
        (dry.read, dry.inserted, dry.dead_lettered),
        (20_000, 20_000, 0)
    );
    for ty in ImageType::ALL {
        let c = &env.config.types.get(ty).collection;
        assert_eq!(
            env.store.count(c, true).await.unwrap(),
            0,
            "dry run wrote {ty}"
        );
    }
    assert!(
        checkpoints(&env.store).await.is_empty(),
        "dry run saved a checkpoint"
    );

    let real = env.backfill("real", &args, t);
    assert_eq!(
        real,
        Totals {
            read: 20_000,
            inserted: 20_000,
            updated: 0,
            unchanged: 0,
            stale: 0,
            superseded: 0,
            dead_lettered: 0
        }
    );
    assert_exact(&env, &x).await;
    let cps = checkpoints(&env.store).await;
    assert_eq!(cps.len(), 3);
    for cp in cps.values() {
        assert!(cp.get_bool("finished").unwrap(), "{cp}");
    }

    // The pass is finished, so a new run is a new pass over the same data: nothing changes.
    let again = env.backfill("again", &args, t);
    assert_eq!(
        (again.read, again.written(), again.unchanged),
        (20_000, 0, 20_000)
    );
    assert_exact(&env, &x).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_beside_a_stream_of_newer_versions_ends_with_the_newest_version_of_every_image()
{
    let env = TestEnv::new().await;
    let (source, _drop) = env.source_database().await;
    let (db, old) = seeded(&env, &source, 21, 6_000).await;
    let worker = env.spawn_worker("w", &[]);
    worker.wait_ready(Duration::from_secs(60)).await;

    // Newer versions of mostly the same ids (the same id space), ten days later.
    let newer: Vec<_> = Generator::new(GenConfig {
        start: start_time() + TimeDelta::days(10),
        ..gen(22, 3_000)
    })
    .take(8_000)
    .collect();
    let mut expected = Expected::default();
    for (&(t, _), e) in &old.images {
        expected.apply(t, e);
    }
    let uri = env.config.mongo.uri.expose().to_owned();
    // Paced so that it is still writing old copies after the stream's newer versions landed.
    let mut bf = env.spawn_backfill(
        "bf",
        &[
            "--from-mongodb",
            &uri,
            "--source-database",
            &db,
            "--rate",
            "1500",
            "--batch",
            "100",
        ],
        &[],
    );
    env.produce(newer, &mut expected).await;
    let status = bf.wait_exit(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        bf.log_tail()
    );
    let totals = Totals::parse(&bf.log_text());
    assert_eq!(totals.read, 6_000);
    assert!(
        totals.stale > 0,
        "the backfill never met a newer streamed version, so the race was not exercised: {totals:?}"
    );
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), worker.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_killed_with_sigkill_resumes_from_its_checkpoint() {
    let env = TestEnv::new().await;
    let (source, _drop) = env.source_database().await;
    let (db, x) = seeded(&env, &source, 31, 20_000).await;
    let uri = env.config.mongo.uri.expose().to_owned();
    let batch = 250;
    let mut first = env.spawn_backfill(
        "first",
        &[
            "--from-mongodb",
            &uri,
            "--source-database",
            &db,
            "--rate",
            "2500",
            "--batch",
            "250",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let saved = loop {
        let read: u64 = checkpoints(&env.store)
            .await
            .values()
            .map(|d| count(d, &["read"]))
            .sum();
        if read >= 4_000 {
            break read;
        }
        assert!(
            Instant::now() < deadline,
            "no progress saved\n{}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.kill9();
    let at_kill = checkpoints(&env.store).await;
    let saved_read: u64 = at_kill.values().map(|d| count(d, &["read"])).sum();
    assert!(saved_read >= saved && saved_read < 20_000, "{saved_read}");
    assert!(at_kill
        .values()
        .all(|d| !d.get_bool("finished").unwrap_or(false)));

    // The killed run still holds the checkpoints' leases (for two minutes): a plain second run
    // is refused, and one that is told the first is gone takes over.
    let mut refused = env.spawn_backfill(
        "refused",
        &["--from-mongodb", &uri, "--source-database", &db],
        &[],
    );
    let status = refused.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "refused while the lease is held: {status:?}\n{}",
        refused.log_tail()
    );
    assert!(
        refused
            .log_text()
            .contains("another backfill holds the checkpoint"),
        "{}",
        refused.log_tail()
    );
    assert_eq!(
        checkpoints(&env.store).await,
        at_kill,
        "the refused run changed no checkpoint"
    );
    let second = env.backfill(
        "second",
        &[
            "--from-mongodb",
            &uri,
            "--source-database",
            &db,
            "--take-over",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(
        second.read,
        20_000 - saved_read,
        "resumed exactly after the checkpoint"
    );
    assert!(
        second.unchanged <= 3 * batch,
        "at most the page in flight per type is written twice: {second:?}"
    );
    assert_eq!(second.inserted + second.unchanged, second.read);
    let done = checkpoints(&env.store).await;
    let pass_read: u64 = done.values().map(|d| count(d, &["read"])).sum();
    let pass_written: u64 = done
        .values()
        .map(|d| count(d, &["counts", "inserted"]))
        .sum();
    assert_eq!(pass_read, 20_000, "the pass read every document once");
    assert_eq!(pass_written + second.unchanged, 20_000, "{done:?}");
    assert!(done.values().all(|d| d.get_bool("finished").unwrap()));
    assert!(
        done.values().all(|d| d.get("lease").is_none()),
        "a run that ended released its leases: {done:?}"
    );
    assert_exact(&env, &x).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_documents_of_every_kind_reach_the_dead_letter_topic_with_their_source_position() {
    let env = TestEnv::with_overrides(&[("LEAFSYNC__WORKER__MAX_EVENT_BYTES", "2048")]).await;
    let (source, _drop) = env.source_database().await;
    let (db, x) = seeded(&env, &source, 41, 60).await;
    let at = mongodb::bson::DateTime::from_millis(1_760_000_000_000);
    let bad: Vec<(&str, Document)> = vec![
        ("invalid_id", doc! {"id": "abc", "updated_at": at}),
        ("invalid_id", doc! {"id": -3_i64, "updated_at": at}),
        ("missing_field", doc! {"updated_at": at, "name": "no id"}),
        (
            "missing_field",
            doc! {"id": 70_001_i64, "name": "no version"},
        ),
        (
            "wrong_type",
            doc! {"id": 70_002_i64, "updated_at": at, "size": "big"},
        ),
        (
            "bad_timestamp",
            doc! {"id": 70_003_i64, "updated_at": "yesterday"},
        ),
        (
            "too_large",
            doc! {"id": 70_004_i64, "updated_at": at, "blob": "x".repeat(3000)},
        ),
    ];
    let potatoes = source.collection(&env.config.types.potato.collection);
    let mut ids = HashMap::new();
    for (kind, mut d) in bad.clone() {
        let oid = ObjectId::new();
        d.insert("_id", oid);
        potatoes.insert_one(d).await.unwrap();
        ids.insert(oid.to_hex(), kind);
    }
    let uri = env.config.mongo.uri.expose().to_owned();
    let t = env.backfill(
        "mongo",
        &["--from-mongodb", &uri, "--source-database", &db],
        Duration::from_secs(120),
    );
    assert_eq!((t.read, t.inserted, t.dead_lettered), (60 + 7, 60, 7));
    assert_exact(&env, &x).await;

    // The decoder's other kinds only a file can hold, one per line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tomato.jsonl");
    let good = r#"{"id":900001,"updated_at":"2025-01-01T00:00:00Z"}"#;
    let lines: [(&[u8], Option<&str>); 6] = [
        (good.as_bytes(), None),
        (b"\xff\xfe not utf-8", Some("not_utf8")),
        (b"{\"id\": 5,", Some("not_json")),
        (b"[1, 2]", Some("not_object")),
        (
            br#"{"id":6,"updated_at":"2025-01-01T00:00:00Z","$set":1}"#,
            Some("reserved_field"),
        ),
        (
            br#"{"id":7,"updated_at":"2025-01-01T00:00:00Z","width":-1}"#,
            Some("wrong_type"),
        ),
    ];
    let mut text = Vec::new();
    for (l, _) in &lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(&file, &text).unwrap();
    let spec = format!("tomato={}", file.display());
    let t = env.backfill("jsonl", &["--from-jsonl", &spec], Duration::from_secs(60));
    assert_eq!((t.read, t.inserted, t.dead_lettered), (6, 1, 5));

    let letters = env.dead_letters(12, Duration::from_secs(30));
    assert_eq!(letters.len(), 12);
    let (from_db, from_file): (Vec<_>, Vec<_>) = letters
        .iter()
        .partition(|l| l.headers.contains_key("leafsync.source.document_id"));
    assert_eq!(from_db.len(), 7);
    for l in &from_db {
        let h = &l.headers;
        assert_eq!(h["leafsync.source"], "backfill");
        assert_eq!(h["leafsync.source.type"], "potato");
        assert_eq!(h["leafsync.source.database"], db);
        assert_eq!(
            h["leafsync.source.collection"],
            env.config.types.potato.collection
        );
        let expected_kind = ids[&h["leafsync.source.document_id"]];
        assert_eq!(h["leafsync.error.kind"], expected_kind, "{h:?}");
        assert!(!h["leafsync.error.message"].is_empty());
        assert!(l.value.is_some(), "the document is in the letter");
    }
    let mut by_line: Vec<(u64, String)> = from_file
        .iter()
        .map(|l| {
            assert_eq!(l.headers["leafsync.source"], "backfill");
            assert_eq!(l.headers["leafsync.source.type"], "tomato");
            assert_eq!(
                l.headers["leafsync.source.file"],
                file.display().to_string()
            );
            (
                l.headers["leafsync.source.line"].parse().unwrap(),
                l.headers["leafsync.error.kind"].clone(),
            )
        })
        .collect();
    by_line.sort();
    let want: Vec<(u64, String)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, (_, k))| k.map(|k| (i as u64 + 1, k.to_owned())))
        .collect();
    assert_eq!(by_line, want);
    let cut = from_file
        .iter()
        .find(|l| l.headers["leafsync.source.line"] == "3")
        .unwrap();
    assert_eq!(
        cut.value.as_deref(),
        Some(&b"{\"id\": 5,"[..]),
        "the line's bytes, as they were"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_lines_source_with_a_truncated_last_line_loads_the_rest_and_dead_letters_the_cut_line(
) {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let x = seed::images(gen(51, 1_000), 2_000);
    let files = seed::to_json_lines(dir.path(), &x).unwrap();
    let potato = &files
        .iter()
        .find(|(t, _)| *t == ImageType::Potato)
        .unwrap()
        .1;
    let complete_lines = std::fs::read_to_string(potato).unwrap().lines().count() as u64;
    // An export cut off mid-line: no closing brace, no line break.
    let cut = br#"{"id":999999,"updated_at":"2025-01-0"#;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(potato)
        .unwrap();
    std::io::Write::write_all(&mut f, cut).unwrap();
    drop(f);
    let args: Vec<String> = files
        .iter()
        .flat_map(|(t, p)| ["--from-jsonl".to_owned(), format!("{t}={}", p.display())])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let t = env.backfill("first", &args, Duration::from_secs(120));
    assert_eq!((t.read, t.inserted, t.dead_lettered), (2_001, 2_000, 1));
    assert_exact(&env, &x).await;
    let letters = env.dead_letters(1, Duration::from_secs(30));
    assert_eq!(letters.len(), 1);
    let h = &letters[0].headers;
    assert_eq!(h["leafsync.error.kind"], "not_json");
    assert_eq!(h["leafsync.source.line"], (complete_lines + 1).to_string());
    assert_eq!(letters[0].value.as_deref(), Some(&cut[..]));

    let again = env.backfill("again", &args, Duration::from_secs(120));
    assert_eq!(
        (again.written(), again.unchanged, again.dead_lettered),
        (0, 2_000, 1)
    );
}
