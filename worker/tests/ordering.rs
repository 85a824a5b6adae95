//! Per-image ordering and the stale guard: interleaved, out-of-order and replayed events never
//! make a document regress.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::time::Duration;

use chrono::TimeDelta;
use common::{start_time, TestEnv};
use leafsync_core::{ImageEvent, ImageId, ImageType};
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::generator::Generated;

fn event(id: i64, ms: i64, label: &str, deleted: bool) -> Generated {
    let e = ImageEvent {
        id: ImageId::new(id).unwrap(),
        updated_at: start_time() + TimeDelta::milliseconds(ms),
        deleted,
        name: Some(format!("tomato_{id}.jpg")),
        url: None,
        size: Some(1000),
        width: None,
        height: None,
        label: Some(label.into()),
        user_id: None,
        created_at: Some(start_time()),
        extra: Default::default(),
    };
    Generated {
        image_type: ImageType::Tomato,
        event: e,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_interleaved_and_replayed_events_never_regress() {
    let env = TestEnv::new().await;
    let mut expected = Expected::default();
    // Same ids interleaved inside one batch, older-after-newer, a delete, and ties.
    let mut events = Vec::new();
    for id in 1..=50 {
        events.push(event(id, 10, "v10", false));
        events.push(event(id, 30, "v30", false));
        events.push(event(id, 20, "v20-late", false)); // older after newer: stale
        events.push(event(id, 30, "v30", false)); // replay of the same version
    }
    // Ties with different content: the same updated_at, a different label. The later event of
    // a tie wins; checked on the stored documents themselves, not through the load tool's model.
    for id in 41..=50 {
        events.push(event(id, 30, "v30-tie-later", false));
    }
    events.push(event(7, 40, "deleted", true));
    let sent = events.len() as u64;
    env.produce(events, &mut expected).await;

    let w = env.spawn_worker("w1", &[]);
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());
    let collection = &env.config.types.tomato.collection;
    for id in [40, 41, 50] {
        let doc = env
            .store
            .get(collection, ImageId::new(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        let want = if id > 40 { "v30-tie-later" } else { "v30" };
        assert_eq!(doc.get_str("label").unwrap(), want, "id {id}: {doc:?}");
    }

    // Later batches: an older event arriving in a later batch is stale too. The state does
    // not change, so only the counter can tell: it must grow by exactly the one event sent.
    let settled = w.wait_events("", sent, Duration::from_secs(10)).await;
    assert_eq!(settled, sent, "every event of the first flood settled");
    let stale_before = w.events_total("outcome=\"stale\"").await;
    env.produce(vec![event(3, 5, "ancient", false)], &mut expected)
        .await;
    let stale = w
        .wait_events(
            "outcome=\"stale\"",
            stale_before + 1,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(stale, stale_before + 1, "{}", w.log_tail());
    assert_eq!(w.events_total("").await, sent + 1, "nothing else happened");
    let r = env.wait_synced(&expected, Duration::from_secs(5)).await;
    assert!(r.is_exact(), "{}", r.summary());
    drop(w);

    // A full replay from earliest by a second group: nothing regresses, nothing is written anew.
    let replay = env.spawn_worker(
        "replay",
        &[("LEAFSYNC__KAFKA__GROUP_ID", &format!("{}.replay", env.name))],
    );
    let total = sent + 1;
    assert_eq!(
        replay.wait_events("", total, Duration::from_secs(60)).await,
        total,
        "{}",
        replay.log_tail()
    );
    assert_eq!(replay.events_total("outcome=\"inserted\"").await, 0);
    assert_eq!(replay.events_total("outcome=\"updated\"").await, 0);
    let r = env.wait_synced(&expected, Duration::from_secs(1)).await;
    assert!(r.is_exact(), "{}", r.summary());
}
