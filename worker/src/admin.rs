//! The admin HTTP port: `/live`, `/ready`, `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leafsync_core::config::ms;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::Shared;

fn json(status: StatusCode, body: serde_json::Value) -> warp::reply::Response {
    // warp's own JSON reply cannot fail to build, unlike a hand-made `Response::builder()`.
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

async fn live(shared: Arc<Shared>) -> Result<warp::reply::Response, Infallible> {
    let stuck = shared.health.stuck(ms(shared.config.worker.stuck_after_ms));
    Ok(if stuck.is_empty() {
        json(StatusCode::OK, serde_json::json!({"status": "ok"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stuck", "partitions": stuck}),
        )
    })
}

async fn ready(shared: Arc<Shared>) -> Result<warp::reply::Response, Infallible> {
    let joined = shared.health.joined();
    let db = shared
        .health
        .database
        .get(|| shared.store.answers_within(Duration::from_secs(1)))
        .await;
    let status = if joined && db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(
        status,
        serde_json::json!({"status": if status == StatusCode::OK {"ready"} else {"not_ready"}, "group_joined": joined, "database": db}),
    ))
}

/// Binds the admin port (so a taken port fails start-up) and serves it until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let with = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let live = warp::path!("live").and(with.clone()).and_then(live);
    let ready = warp::path!("ready").and(with.clone()).and_then(ready);
    let metrics = warp::path!("metrics").and(with).map(|s: Arc<Shared>| {
        warp::reply::with_header(
            s.metrics.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
    });
    let routes = warp::get().and(live.or(ready).or(metrics));
    let server = warp::serve(routes)
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await });
    Ok((local, tokio::spawn(server.run())))
}
