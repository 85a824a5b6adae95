//! The API over HTTP, as a client sees it, against the real (stand-in) MongoDB.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use leafsync_core::document::Projection;
use leafsync_core::{Config, ImageEvent, Store};
use leafsync_testkit::{
    env_to_toml, free_port, unique, wait_for_status, Cleanup, PrivateStack, Process,
};
use proptest::prelude::*;
use serde_json::{json, Value};

struct Api {
    process: Process,
    addr: SocketAddr,
    store: Store,
    /// Drops the API's database when the test ends.
    _cleanup: Cleanup,
}

/// Starts `leafsync-api` on a fresh database (of `mongo_uri`, or the stack's) and seeds it.
async fn start_api(mongo_uri: Option<&str>) -> Api {
    start_api_with(mongo_uri, &[]).await
}

/// Like [`start_api`], with extra `LEAFSYNC__…` settings for the API process.
async fn start_api_with(mongo_uri: Option<&str>, extra: &[(&str, &str)]) -> Api {
    let db = unique("api");
    let port = free_port();
    let mut env = vec![
        (
            "LEAFSYNC__API__BIND".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        ("LEAFSYNC__MONGO__DATABASE".to_owned(), db.clone()),
        (
            "LEAFSYNC__API__TOTAL_CACHE_TTL_MS".to_owned(),
            "0".to_owned(),
        ),
        ("LEAFSYNC__API__READY_CACHE_MS".to_owned(), "100".to_owned()),
        // Tests fire hundreds of requests at once to exercise coalescing, not admission.
        (
            "LEAFSYNC__API__MAX_CONCURRENT_REQUESTS".to_owned(),
            "1024".to_owned(),
        ),
        (
            "LEAFSYNC__API__REQUEST_TIMEOUT_MS".to_owned(),
            "1000".to_owned(),
        ),
    ];
    if let Some(u) = mongo_uri {
        env.push(("LEAFSYNC__MONGO__URI".to_owned(), u.to_owned()));
    }
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    let toml = env_to_toml(&env);
    let config = Config::load_with_overrides(&toml).unwrap();
    let store = Store::connect(&config.mongo, "api-test").await.unwrap();
    let seed = |j: &str| {
        ImageEvent::decode(j.as_bytes(), 4096)
            .unwrap()
            .to_raw_document(&Projection::all())
            .unwrap()
    };
    store
        .write_batch(
            "potato",
            &[
                seed(r#"{"id":1,"name":"potato_1.jpg","label":"early_blight","size":48213,"created_at":"2025-12-10T20:21:54.123Z","updated_at":"2025-12-10T20:21:54.123Z","camera":"x100"}"#),
                seed(r#"{"id":2,"name":"potato_2.jpg","deleted":true,"updated_at":"2025-12-11T00:00:00Z"}"#),
            ],
        )
        .await
        .unwrap();
    store
        .write_batch(
            "tomato",
            &[seed(r#"{"id":5,"updated_at":"2025-12-11T00:00:00Z"}"#)],
        )
        .await
        .unwrap();
    let process = Process::spawn(
        Path::new(env!("CARGO_BIN_EXE_leafsync-api")),
        &[],
        &env,
        &db,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_status(addr, "/live", 200, Duration::from_secs(20), || {
        process.log_tail()
    })
    .await;
    let _cleanup = Cleanup::new(format!("database {db}"), move || async move {
        // The test's client belongs to the test's runtime, which may be gone by now.
        let fresh = Store::connect_lazy(&config.mongo, "api-test-cleanup")
            .await
            .map_err(|e| e.to_string())?;
        fresh.database().drop().await.map_err(|e| e.to_string())
    });
    Api {
        process,
        addr,
        store,
        _cleanup,
    }
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, String, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let r = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{addr}{path}"),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (s, body, h) = call(addr, "GET", path).await;
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{path}"
    );
    (
        s,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")),
    )
}

/// The API process most tests share (they only read, and assert on what they read): started by
/// the first test that needs it, stopped (and its database dropped) when the last one that holds
/// it ends.
struct SharedApi {
    _process: Process,
    addr: SocketAddr,
    _cleanup: Cleanup,
}

async fn shared_api() -> Arc<SharedApi> {
    static SHARED: Mutex<Weak<SharedApi>> = Mutex::new(Weak::new());
    // Held across the start so that concurrent tests wait for one server, not start several.
    static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _starting = STARTING.lock().await;
    if let Some(api) = SHARED.lock().unwrap().upgrade() {
        return api;
    }
    let api = start_api(None).await;
    let shared = Arc::new(SharedApi {
        _process: api.process,
        addr: api.addr,
        _cleanup: api._cleanup,
    });
    *SHARED.lock().unwrap() = Arc::downgrade(&shared);
    shared
}

#[tokio::test(flavor = "multi_thread")]
async fn by_id_answers_the_stored_document_or_a_json_error() {
    let api = shared_api().await;
    let a = api.addr;
    assert_eq!(
        get_json(a, "/image-plant/potato/1").await,
        (
            200,
            json!({"id": 1, "name": "potato_1.jpg", "label": "early_blight", "size": 48213, "deleted": false,
            "created_at": "2025-12-10T20:21:54.123Z", "updated_at": "2025-12-10T20:21:54.123Z", "camera": "x100"})
        )
    );
    assert_eq!(
        get_json(a, "/image-plant/potato/2").await,
        (
            200,
            json!({"id": 2, "name": "potato_2.jpg", "deleted": true, "updated_at": "2025-12-11T00:00:00.000Z"})
        )
    );
    assert_eq!(
        get_json(a, "/image-plant/potato/3").await,
        (
            404,
            json!({"error": "image_not_found", "message": "potato image 3 not found"})
        )
    );
    assert_eq!(
        get_json(a, "/image-plant/carrot/1").await,
        (
            400,
            json!({"error": "bad_request", "message": "unknown image type \"carrot\"; valid types are: potato, tomato, pepper"})
        )
    );
    for bad in ["abc", "0", "-4", "99999999999999999999"] {
        let (s, body) = get_json(a, &format!("/image-plant/potato/{bad}")).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("image id must be an integer from 1 to 9223372036854775807"));
    }
    let (s, body, _) = call(a, "HEAD", "/image-plant/potato/1").await;
    assert_eq!((s, body.as_str()), (200, ""));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_by_id_reads_each_get_their_own_exact_answer() {
    // Reads are coalesced into shared `$in` queries; every request must still get exactly its
    // own answer: the document, the deleted document, or a 404 naming its id.
    let api = shared_api().await;
    let client = reqwest::Client::new();
    let requests: Vec<(&str, i64)> = (0..300)
        .map(|i| {
            (
                ["potato", "tomato", "pepper"][i % 3],
                [1, 2, 3, 5, 77][i % 5],
            )
        })
        .collect();
    let answers = futures::future::join_all(requests.iter().map(|(t, id)| {
        let url = format!("http://{}/image-plant/{t}/{id}", api.addr);
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    for ((t, id), (status, body)) in requests.iter().zip(answers) {
        match (*t, *id) {
            ("potato", 1) => assert_eq!(
                (status, body["label"].clone()),
                (200, json!("early_blight"))
            ),
            ("potato", 2) => assert_eq!((status, body["deleted"].clone()), (200, json!(true))),
            ("tomato", 5) => assert_eq!((status, body["id"].clone()), (200, json!(5))),
            _ => assert_eq!(
                (status, body),
                (
                    404,
                    json!({"error": "image_not_found", "message": format!("{t} image {id} not found")})
                )
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn totals_count_live_images_and_deleted_ones_on_request() {
    let api = shared_api().await;
    let a = api.addr;
    for (path, n) in [
        ("/image-plant/potato/total", 1),
        ("/image-plant/potato/total?include_deleted=true", 2),
        ("/image-plant/potato/total?include_deleted=false", 1),
        ("/image-plant/tomato/total", 1),
        ("/image-plant/pepper/total", 0),
    ] {
        assert_eq!(get_json(a, path).await, (200, json!(n)), "{path}");
    }
    assert_eq!(
        get_json(a, "/image-plant/potato/total?include_deleted=maybe").await,
        (
            400,
            json!({"error": "bad_request", "message": "include_deleted must be true or false, got \"maybe\""})
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_get_json_errors() {
    let api = shared_api().await;
    let a = api.addr;
    assert_eq!(
        get_json(a, "/nope").await,
        (
            404,
            json!({"error": "not_found", "message": "no route for GET /nope"})
        )
    );
    let (s, body, h) = call(a, "POST", "/image-plant/potato/1").await;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&body).unwrap()),
        (
            405,
            json!({"error": "method_not_allowed", "message": "method POST not allowed; use GET or HEAD"})
        )
    );
    assert_eq!(h["allow"], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_and_the_openapi_document() {
    let api = shared_api().await;
    let a = api.addr;
    assert_eq!(get_json(a, "/live").await, (200, json!({"status": "ok"})));
    assert_eq!(
        get_json(a, "/ready").await,
        (200, json!({"status": "ready", "database": true}))
    );
    let (s, spec) = get_json(a, "/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(spec["openapi"], "3.0.3");
    for p in [
        "/image-plant/{image_type}/{image_id}",
        "/image-plant/{image_type}/total",
        "/live",
        "/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(spec["paths"][p].is_object(), "{p} documented");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_template_and_status() {
    // Its own server: exact counts need requests no other test makes.
    let api = start_api(None).await;
    let a = api.addr;
    for path in [
        "/image-plant/potato/1",
        "/image-plant/potato/2",
        "/image-plant/potato/3",
    ] {
        get_json(a, path).await;
    }
    call(a, "HEAD", "/image-plant/potato/1").await;
    for bad in ["abc", "0", "-4"] {
        get_json(a, &format!("/image-plant/potato/{bad}")).await;
    }
    get_json(a, "/nope").await;
    let (s, metrics, _) = call(a, "GET", "/metrics").await;
    assert_eq!(s, 200);
    for line in [
        // 2 GET + 1 HEAD
        r#"leafsync_api_requests_total{route="/image-plant/{image_type}/{image_id}",status="200"} 3"#,
        r#"leafsync_api_requests_total{route="/image-plant/{image_type}/{image_id}",status="404"} 1"#,
        r#"leafsync_api_requests_total{route="/image-plant/{image_type}/{image_id}",status="400"} 3"#,
        r#"leafsync_api_requests_total{route="unmatched",status="404"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains("leafsync_api_request_duration_seconds_bucket"));
    assert!(metrics.contains("leafsync_api_requests_in_flight"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_delete_is_seen_through_the_api() {
    // Its own server: it changes the data the shared one serves.
    let api = start_api(None).await;
    let a = api.addr;
    assert_eq!(
        get_json(a, "/image-plant/potato/total").await,
        (200, json!(1))
    );
    let del = ImageEvent::decode(
        br#"{"id":1,"deleted":true,"updated_at":"2025-12-12T00:00:00Z"}"#,
        4096,
    )
    .unwrap();
    api.store
        .write_batch(
            "potato",
            &[del.to_raw_document(&Projection::all()).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(
        get_json(a, "/image-plant/potato/1").await.1["deleted"],
        true
    );
    assert_eq!(
        get_json(a, "/image-plant/potato/total").await,
        (200, json!(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_paths_and_methods_never_get_a_server_error() {
    let api = start_api(None).await;
    let client = reqwest::Client::new();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let segment = "[a-zA-Z0-9_~%\\.\\-]{0,12}";
    let strategy = (
        proptest::collection::vec(
            prop_oneof![
                Just("image-plant".to_owned()),
                Just("potato".to_owned()),
                Just("total".to_owned()),
                segment.prop_map(|s| s)
            ],
            0..5,
        ),
        0usize..6,
        "[a-z_=&%0-9]{0,24}",
    );
    runner
        .run(&strategy, |(segments, m, query)| {
            let method = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"][m];
            let url = format!("http://{}/{}?{query}", api.addr, segments.join("/"));
            let status = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    client
                        .request(
                            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                            &url,
                        )
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                })
            });
            let status = status.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(status < 500, "{method} {url} -> {status}");
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_gives_503_within_bounds_and_recovers() {
    let stack = PrivateStack::start_mongo_only();
    let api = start_api(Some(&stack.mongo_uri)).await;
    let a = api.addr;
    assert_eq!(get_json(a, "/image-plant/potato/1").await.0, 200);

    stack.stack("stop-mongo");
    let t = Instant::now();
    let (s, body) = get_json(a, "/image-plant/potato/1").await;
    assert!(
        t.elapsed() < Duration::from_millis(1_800),
        "answered within the request timeout: {:?}",
        t.elapsed()
    );
    assert_eq!(
        (s, body),
        (
            503,
            json!({"error": "unavailable", "message": "the image database is unavailable; retry later"})
        )
    );
    let (s, _) = get_json(a, "/image-plant/tomato/total").await;
    assert_eq!(s, 503);
    let t = Instant::now();
    wait_for_status(a, "/ready", 503, Duration::from_secs(2), || {
        api.process.log_tail()
    })
    .await;
    assert!(t.elapsed() <= Duration::from_secs(2));
    assert_eq!(
        get_json(a, "/live").await.0,
        200,
        "alive while the database is down"
    );

    stack.stack("start-mongo");
    wait_for_status(a, "/ready", 200, Duration::from_secs(20), || {
        api.process.log_tail()
    })
    .await;
    wait_for_status(
        a,
        "/image-plant/potato/1",
        200,
        Duration::from_secs(20),
        || api.process.log_tail(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_continues_the_callers_trace_with_a_database_child_span() {
    let (otlp, spans) = leafsync_testkit::otlp_receiver().await;
    let api = start_api_with(
        None,
        &[(
            "LEAFSYNC__TELEMETRY__OTLP_ENDPOINT",
            &format!("http://{otlp}"),
        )],
    )
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let r = reqwest::Client::new()
        .get(format!("http://{}/image-plant/potato/1", api.addr))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (want_trace, want_parent) = (
        leafsync_testkit::hex_id(trace_id),
        leafsync_testkit::hex_id(parent),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let all = spans.lock().unwrap();
            if let Some(server) = all
                .iter()
                .find(|s| s.trace_id == want_trace && s.parent_span_id == want_parent)
            {
                assert_eq!(server.name, "GET /image-plant/{image_type}/{image_id}");
                let attrs: Vec<&str> = server.attributes.iter().map(|a| a.key.as_str()).collect();
                for a in [
                    "http.request.method",
                    "http.route",
                    "http.response.status_code",
                ] {
                    assert!(attrs.contains(&a), "{a} missing in {attrs:?}");
                }
                let child = all.iter().find(|s| s.parent_span_id == server.span_id);
                assert!(
                    child.is_some_and(|c| c.name == "find potato"),
                    "DB span under the request span"
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no server span continuing the caller's trace\n{}",
            api.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_gracefully() {
    let mut api = start_api(None).await;
    api.process.signal("-TERM");
    let st = api
        .process
        .wait_exit(Duration::from_secs(10))
        .expect("exits");
    assert!(st.success(), "{}", api.process.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_paths_and_headers_get_json_errors_before_any_work() {
    let api = shared_api().await;
    let long = format!("/image-plant/potato/{}", "9".repeat(3_000));
    let (s, body) = get_json(api.addr, &long).await;
    assert_eq!(s, 414, "{body}");
    assert_eq!(body["error"], "uri_too_long");
    assert!(body["message"].as_str().unwrap().contains("at most 2048"));

    let r = reqwest::Client::new()
        .get(format!("http://{}/image-plant/potato/1", api.addr))
        .header("x-padding", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 431);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "headers_too_large");
    // Just under the limits, the same request is served.
    let (s, _) = get_json(
        api.addr,
        &format!("/image-plant/potato/1?{}", "a=1&".repeat(400)),
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_concurrency_bound_requests_are_shed_at_once_and_probes_still_answer() {
    let stack = PrivateStack::start_mongo_only();
    let api = start_api_with(
        Some(&stack.mongo_uri),
        &[("LEAFSYNC__API__MAX_CONCURRENT_REQUESTS", "2")],
    )
    .await;
    let a = api.addr;
    // With the database down, each data request holds its permit for the request timeout (1 s).
    stack.stack("stop-mongo");
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get_json(a, "/image-plant/potato/1").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (s, body, headers) = call(a, "GET", "/image-plant/tomato/total").await;
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "shed at once: {:?}",
        t.elapsed()
    );
    assert_eq!(s, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "overloaded"
    );
    assert_eq!(headers["retry-after"], "1");
    for probe in ["/live", "/metrics"] {
        assert_eq!(call(a, "GET", probe).await.0, 200, "{probe} is never shed");
    }
    // Counted as a 503, but not in the latency of served requests.
    let (_, metrics, _) = call(a, "GET", "/metrics").await;
    let total = r#"route="/image-plant/{image_type}/total""#;
    assert!(
        metrics.contains(&format!(
            "leafsync_api_requests_total{{{total},status=\"503\"}} 1"
        )),
        "{metrics}"
    );
    assert!(!metrics.contains(&format!(
        "leafsync_api_request_duration_seconds_count{{{total}}}"
    )));
    for s in slow {
        assert_eq!(s.await.unwrap().1["error"], "unavailable");
    }
    // The permits are back: the next request is admitted (and meets the outage).
    let (s, body) = get_json(a, "/image-plant/potato/1").await;
    assert_eq!((s, body["error"].as_str()), (503, Some("unavailable")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_its_request_head_too_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let api = start_api_with(None, &[("LEAFSYNC__API__HEADER_READ_TIMEOUT_MS", "500")]).await;
    let mut c = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    // Half a request head, and then nothing (a slowloris client).
    c.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    let took = t.elapsed();
    // hyper may answer 408 before closing; either way the connection ends.
    let rest = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    // A prompt client on a new connection is served.
    assert_eq!(call(api.addr, "GET", "/live").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_of_an_older_layout_stops_the_api_naming_the_collection() {
    // By-id reads go to `_id`; documents of an older leafsync have ObjectIds there, so serving
    // them would answer 404 for every image instead of saying why.
    let db = unique("api-legacy");
    let port = free_port();
    let env = vec![
        (
            "LEAFSYNC__API__BIND".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        ("LEAFSYNC__MONGO__DATABASE".to_owned(), db.clone()),
    ];
    let config = Config::load_with_overrides(&env_to_toml(&env)).unwrap();
    let store = Store::connect(&config.mongo, "api-test").await.unwrap();
    let _cleanup = {
        let store = store.clone();
        Cleanup::new(format!("database {db}"), move || async move {
            store.database().drop().await.map_err(|e| e.to_string())
        })
    };
    leafsync_testkit::add_legacy_id_index(
        &store.collection(&config.types.pepper.collection),
        leafsync_core::store::LEGACY_ID_INDEX,
    )
    .await;
    let mut p = Process::spawn(
        Path::new(env!("CARGO_BIN_EXE_leafsync-api")),
        &[],
        &env,
        &db,
    );
    let status = p.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}\n{}",
        p.log_tail()
    );
    let cause = format!(
        "collection `{}` has the index `id_unique`",
        config.types.pepper.collection
    );
    assert!(p.log_text().contains(&cause), "{}", p.log_tail());
}
