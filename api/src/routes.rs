//! Routing and handlers. One warp filter extracts method, path, query and headers; routing is a
//! plain `match`, so every status and body (404 vs 405 vs 400) is explicit and testable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafsync_core::config::ms;
use leafsync_core::document::document_to_json;
use leafsync_core::{ImageId, ImageType, StoreError};
use opentelemetry::propagation::Extractor;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::Reply as _;

use crate::coalesce::ReadError;
use crate::error::ApiError;
use crate::State;

/// A matched route, with its parameters already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /image-plant/{type}/{id}`.
    Image(ImageType, ImageId),
    /// `GET /image-plant/{type}/total`.
    Total(ImageType, bool),
    /// `GET /live`.
    Live,
    /// `GET /ready`.
    Ready,
    /// `GET /metrics`.
    Metrics,
    /// `GET /openapi.json`.
    OpenApi,
}

/// The route template a path has the shape of, valid or not, for metric labels and span names:
/// a 400 on `/image-plant/carrot/1` counts under the route the client meant. Unknown shapes share one
/// label so random paths cannot blow up metric cardinality.
pub fn template_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["live"] => "/live",
        ["ready"] => "/ready",
        ["metrics"] => "/metrics",
        ["openapi.json"] => "/openapi.json",
        ["image-plant", _, "total"] => "/image-plant/{image_type}/total",
        ["image-plant", _, _] => "/image-plant/{image_type}/{image_id}",
        _ => "unmatched",
    }
}

fn parse_query(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Matches `method path?query` to a route, or says exactly what is wrong.
pub fn route(method: &Method, path: &str, query: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route = match segments.as_slice() {
        ["live"] => Route::Live,
        ["ready"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["openapi.json"] => Route::OpenApi,
        ["image-plant", image_type, rest] => {
            let image_type: ImageType =
                image_type
                    .parse()
                    .map_err(|e: leafsync_core::image::UnknownImageType| {
                        ApiError::BadRequest(e.to_string())
                    })?;
            if *rest == "total" {
                let include_deleted = match parse_query(query)
                    .get("include_deleted")
                    .map(String::as_str)
                {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(ApiError::BadRequest(format!(
                            "include_deleted must be true or false, got {:?}",
                            other.chars().take(40).collect::<String>()
                        )))
                    }
                };
                Route::Total(image_type, include_deleted)
            } else {
                let id: ImageId =
                    rest.parse()
                        .map_err(|e: leafsync_core::image::InvalidImageId| {
                            ApiError::BadRequest(e.to_string())
                        })?;
                Route::Image(image_type, id)
            }
        }
        _ => {
            return Err(ApiError::NotFound(format!(
                "{method} {}",
                path.chars().take(200).collect::<String>()
            )))
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    Ok(route)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> warp::reply::Response {
    let mut r = warp::reply::with_status(warp::reply::json(body), status).into_response();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r.headers_mut()
            .insert("allow", warp::http::HeaderValue::from_static("GET, HEAD"));
    }
    r
}

fn error_response(e: &ApiError) -> warp::reply::Response {
    let mut r = json_response(e.status(), &e.body());
    if *e == ApiError::Overloaded {
        // A shed request is cheap to retry soon; a second is ~1,000 requests' worth of service.
        r.headers_mut()
            .insert("retry-after", warp::http::HeaderValue::from_static("1"));
    }
    r
}

/// The size limits, checked before any database work: a request past them costs nothing more.
fn within_limits(
    state: &State,
    path: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let api = &state.config.api;
    let uri = path.len() + query.len();
    if uri > api.max_uri_bytes {
        return Err(ApiError::UriTooLong(uri, api.max_uri_bytes));
    }
    // As on the wire: "name: value\r\n" per header.
    let head: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if head > api.max_header_bytes {
        return Err(ApiError::HeadersTooLarge(head, api.max_header_bytes));
    }
    Ok(())
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Bounds a store call by the request timeout; a slow or absent MongoDB becomes a 503.
async fn bounded<T>(
    state: &State,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(ms(state.config.api.request_timeout_ms), op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "database call failed");
            Err(ApiError::Unavailable)
        }
        Err(_) => {
            tracing::warn!("database call timed out");
            Err(ApiError::Unavailable)
        }
    }
}

async fn serve(state: &State, route: &Route) -> Result<warp::reply::Response, ApiError> {
    match route {
        Route::Image(t, id) => {
            let coll = &state.config.types.get(*t).collection;
            let span = tracing::info_span!("mongodb.find", otel.name = format!("find {coll}"), otel.kind = "client",
                db.system = "mongodb", db.collection.name = %coll, db.operation.name = "find");
            // The span covers this request's wait; with coalescing, the shared query has its
            // own span linked to it.
            let lookup = async {
                match state.reads.as_ref().and_then(|r| r.get(t)) {
                    Some(lane) => lane.get(*id).await.map_err(|e| match e {
                        ReadError::Failed(e) => e,
                        ReadError::TimedOut => {
                            StoreError::abandoned("find", "the shared query timed out")
                        }
                        ReadError::Abandoned => StoreError::abandoned(
                            "find",
                            "the shared query ended without an answer",
                        ),
                    }),
                    None => state.store.get(coll, *id).await,
                }
            };
            match bounded(state, lookup.instrument(span)).await? {
                Some(doc) => Ok(json_response(StatusCode::OK, &document_to_json(&doc))),
                None => Err(ApiError::ImageNotFound {
                    image_type: t.to_string(),
                    id: id.get(),
                }),
            }
        }
        Route::Total(t, include_deleted) => {
            let coll = &state.config.types.get(*t).collection;
            let include_deleted = *include_deleted;
            let n = bounded(state, async {
                state
                    .totals
                    .get((*t, include_deleted), || {
                        let span = tracing::info_span!("mongodb.count", otel.name = format!("count {coll}"), otel.kind = "client",
                            db.system = "mongodb", db.collection.name = %coll, db.operation.name = "count");
                        state.count(*t, include_deleted).instrument(span)
                    })
                    .await
            })
            .await?;
            Ok(json_response(StatusCode::OK, &n.into()))
        }
        Route::Live => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        Route::Ready => {
            let ok = state.ready().await;
            let (status, word) = if ok {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
            };
            Ok(json_response(
                status,
                &serde_json::json!({"status": word, "database": ok}),
            ))
        }
        Route::Metrics => {
            let mut r = warp::reply::Response::new(state.metrics.render().into());
            r.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        Route::OpenApi => Ok(json_response(StatusCode::OK, &crate::openapi::document())),
    }
}

/// Handles one request: routes it, serves it inside a server span, counts it.
pub async fn handle(
    state: Arc<State>,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
) -> warp::reply::Response {
    let started = Instant::now();
    let routed = route(&method, &path, &query);
    let template = template_of(&path);
    let span = tracing::info_span!("http.request", otel.name = format!("{method} {template}"), otel.kind = "server",
        http.request.method = %method, http.route = template, url.path = %path, http.response.status_code = tracing::field::Empty);
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&headers)));
    let _ = span.set_parent(parent);
    state.metrics.in_flight.inc();
    let (response, shed) = async {
        let admitted = within_limits(&state, &path, &query, &headers)
            .and(routed)
            .and_then(|r| Ok((state.admit(&r)?, r)));
        match admitted {
            Ok((_permit, r)) => (
                serve(&state, &r)
                    .await
                    .unwrap_or_else(|e| error_response(&e)),
                false,
            ),
            Err(e) => (error_response(&e), e == ApiError::Overloaded),
        }
    }
    .instrument(span.clone())
    .await;
    state.metrics.in_flight.dec();
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    state
        .metrics
        .requests
        .with_label_values(&[template, &status.to_string()])
        .inc();
    // The latency of served requests: a shed one answers in microseconds and would hide how
    // long the admitted ones take (it is counted above, as a 503).
    if !shed {
        state
            .metrics
            .latency
            .with_label_values(&[template])
            .observe(started.elapsed().as_secs_f64());
    }
    tracing::debug!(method = %method, route = template, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

/// How long `/ready` may take at most.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_and_their_errors() {
        let get = Method::GET;
        assert_eq!(
            route(&get, "/image-plant/potato/42", ""),
            Ok(Route::Image(ImageType::Potato, ImageId::new(42).unwrap()))
        );
        assert_eq!(
            route(&Method::HEAD, "/image-plant/tomato/total", ""),
            Ok(Route::Total(ImageType::Tomato, false))
        );
        assert_eq!(
            route(&get, "/image-plant/pepper/total", "include_deleted=true"),
            Ok(Route::Total(ImageType::Pepper, true))
        );
        assert_eq!(route(&get, "/live", ""), Ok(Route::Live));
        assert_eq!(route(&get, "/openapi.json", ""), Ok(Route::OpenApi));

        let e = route(&get, "/image-plant/carrot/1", "").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.to_string(),
            "unknown image type \"carrot\"; valid types are: potato, tomato, pepper"
        );
        for bad in ["0", "-1", "abc", "1.5", "99999999999999999999"] {
            let e = route(&get, &format!("/image-plant/potato/{bad}"), "").unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                e.to_string()
                    .starts_with("image id must be an integer from 1 to"),
                "{e}"
            );
        }
        let e = route(&get, "/image-plant/potato/total", "include_deleted=yes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "include_deleted must be true or false, got \"yes\""
        );
        assert_eq!(
            route(&get, "/nope", "").unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            template_of("/image-plant/carrot/1"),
            "/image-plant/{image_type}/{image_id}"
        );
        assert_eq!(
            template_of("/image-plant/carrot/total"),
            "/image-plant/{image_type}/total"
        );
        assert_eq!(template_of("/x/y"), "unmatched");
        assert_eq!(
            route(&get, "/image-plant/potato/1/x", "")
                .unwrap_err()
                .status(),
            StatusCode::NOT_FOUND
        );
        let e = route(&Method::POST, "/image-plant/potato/1", "").unwrap_err();
        assert_eq!(e, ApiError::MethodNotAllowed("POST".into()));
        assert_eq!(e.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    /// What the API documents for a request, stated independently of `route`: the path's shape
    /// decides 404, then its parameters 400, then the method 405.
    fn documented(
        method: &Method,
        segments: &[String],
        query: &str,
    ) -> Result<(), (u16, &'static str)> {
        // Repeated leading slashes are ignored (`//live` is `/live`).
        let seg: Vec<&str> = segments
            .iter()
            .map(String::as_str)
            .skip_while(|s| s.is_empty())
            .collect();
        let seg = if seg.is_empty() { vec![""] } else { seg };
        match seg.as_slice() {
            ["live"] | ["ready"] | ["metrics"] | ["openapi.json"] => {}
            ["image-plant", t, rest] => {
                if !["potato", "tomato", "pepper"].contains(t) {
                    return Err((400, "bad_request"));
                }
                if *rest == "total" {
                    let flag = query
                        .split('&')
                        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
                        .filter(|(k, _)| *k == "include_deleted")
                        .map(|(_, v)| v)
                        .next_back();
                    if flag.is_some_and(|v| v != "true" && v != "false") {
                        return Err((400, "bad_request"));
                    }
                } else if rest.is_empty()
                    || rest.starts_with('0')
                    || !rest.bytes().all(|b| b.is_ascii_digit())
                    || rest.parse::<i64>().is_err()
                {
                    // The documented id: canonical decimal digits, 1 to i64::MAX.
                    return Err((400, "bad_request"));
                }
            }
            _ => return Err((404, "not_found")),
        }
        if *method != Method::GET && *method != Method::HEAD {
            return Err((405, "method_not_allowed"));
        }
        Ok(())
    }

    proptest! {
        // Every request gets the documented answer: a route, or the documented 4xx with a JSON
        // body whose `error` is the documented kind and whose message says something.
        #[test]
        fn every_request_gets_its_documented_answer(
            segments in proptest::collection::vec(prop_oneof![
                Just("image-plant".to_owned()), Just("potato".to_owned()), Just("pepper".to_owned()),
                Just("total".to_owned()), Just("live".to_owned()), Just("42".to_owned()),
                Just("0".to_owned()), "[a-z0-9\\-\\.%]{0,8}",
            ], 0..5),
            m in 0usize..5,
            q in prop_oneof![Just(String::new()), "include_deleted=(true|false|yes|)", "[a-z_=&]{0,20}"],
        ) {
            let method = [Method::GET, Method::HEAD, Method::POST, Method::DELETE, Method::PUT][m].clone();
            let path = format!("/{}", segments.join("/"));
            let got = route(&method, &path, &q);
            match (documented(&method, &segments, &q), got) {
                (Ok(()), Ok(_)) => prop_assert_ne!(template_of(&path), "unmatched"),
                (Err((status, kind)), Err(e)) => {
                    prop_assert_eq!(e.status().as_u16(), status, "{} {}?{}: {}", method, path, q, e);
                    let body = e.body();
                    prop_assert_eq!(body["error"].as_str(), Some(kind));
                    prop_assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
                }
                (want, got) => prop_assert!(false, "{} {}?{}: documented {:?}, got {:?}", method, path, q, want, got),
            }
        }
    }
}
