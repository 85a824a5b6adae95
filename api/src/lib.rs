//! leafsync-api: the HTTP read service over the consumer database, scaled and failing
//! independently of the workers. [`routes`] holds routing and handlers, [`error`] the error
//! bodies, [`total_cache`] the bounded-staleness counts, [`openapi`] the API description.

pub mod coalesce;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod total_cache;

use std::net::SocketAddr;
use std::sync::Arc;

use leafsync_core::cached_check::CachedCheck;
use leafsync_core::config::ms;
use leafsync_core::{Config, ImageId, ImageType, Store, StoreError};
use mongodb::bson::Document;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Process-wide state of the API.
pub struct State {
    /// Effective configuration.
    pub config: Config,
    /// The consumer database.
    pub store: Store,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Cached counts for `/total`.
    pub totals: total_cache::TotalCache,
    /// Coalesced by-id reads, one lane per image type (`None`: `api.coalesce_reads` is off).
    pub reads: Option<Reads>,
    ready: CachedCheck,
    /// Permits for data requests (`api.max_concurrent_requests`).
    admission: Arc<tokio::sync::Semaphore>,
}

impl State {
    /// A permit to serve `route`, or `Overloaded` at once when every permit is taken. Probes and
    /// metrics need none: shedding them would restart or unroute a pod for being busy.
    pub fn admit(
        &self,
        route: &routes::Route,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, error::ApiError> {
        match route {
            routes::Route::Live | routes::Route::Ready | routes::Route::Metrics => Ok(None),
            _ => self
                .admission
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| error::ApiError::Overloaded),
        }
    }

    /// A new count of `t`'s images, for the `/total` cache to run when it needs one.
    pub fn count(
        &self,
        t: ImageType,
        include_deleted: bool,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send + 'static {
        let coll = self.config.types.get(t).collection.clone();
        let store = self.store.clone();
        async move { store.count(&coll, include_deleted).await }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Whether MongoDB answers a ping (checked with a short timeout, cached briefly).
    pub async fn ready(&self) -> bool {
        self.ready
            .get(|| self.store.answers_within(routes::READY_TIMEOUT))
            .await
    }
}

/// By-id reads of one image type, coalesced.
pub type Reads = HashMap<ImageType, coalesce::Coalescer<ImageId, Document, StoreError>>;

/// One coalescer per image type over `store`.
fn reads(config: &Config, store: &Store, metrics: &metrics::Metrics) -> Reads {
    ImageType::ALL
        .into_iter()
        .map(|t| {
            let collection = config.types.get(t).collection.clone();
            let store = store.clone();
            let sizes = metrics.read_batch.with_label_values(&[t.as_str()]);
            let lane = coalesce::Coalescer::new(
                format!("find {collection}"),
                config.api.max_read_batch,
                ms(config.api.request_timeout_ms),
                move |ids: Vec<ImageId>| {
                    let (store, collection) = (store.clone(), collection.clone());
                    async move { store.get_many(&collection, &ids).await }
                },
                move |n| sizes.observe(n as f64),
            );
            (t, lane)
        })
        .collect()
}

/// Serves until `shutdown`; then stops accepting, finishes in-flight requests and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut mongo = config.mongo.clone();
    // A request must fail within its timeout, so server selection may not wait longer.
    mongo.connect_timeout_ms = mongo.connect_timeout_ms.min(config.api.request_timeout_ms);
    // Start even while MongoDB is down: /ready says so, and data routes answer 503.
    let store = Store::connect_lazy(&mongo, "leafsync-api").await?;
    let bind = config.api.bind;
    let config_ready_ms = config.api.ready_cache_ms;
    let max_concurrent = config.api.max_concurrent_requests;
    let metrics = metrics::Metrics::new();
    let reads = config
        .api
        .coalesce_reads
        .then(|| reads(&config, &store, &metrics));
    let state = Arc::new(State {
        totals: total_cache::TotalCache::new(ms(config.api.total_cache_ttl_ms)),
        config,
        store,
        metrics,
        reads,
        ready: CachedCheck::new(ms(config_ready_ms)),
        admission: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
    });
    warm_totals(&state);
    tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            let fetch = |(t, include_deleted)| state.count(t, include_deleted);
            state.totals.keep_warm(fetch, shutdown).await;
        }
    });
    let store = state.store.clone();
    let collections = state.config.types.collections().map(str::to_owned);
    let login = tokio::spawn(check_database(store.clone(), collections, shutdown.clone()));
    let (addr, server) = serve(state, bind, shutdown).await?;
    tracing::info!(%addr, "leafsync-api listening");
    server.await?;
    login.abort();
    store.shutdown().await;
    if let Ok(Err(e)) = login.await {
        return Err(e.into());
    }
    tracing::info!("leafsync-api stopped");
    Ok(())
}

/// The API starts while MongoDB is down (it answers 503 meanwhile), but two answers will never
/// let it serve: a refused login (the error names the configuration key), and collections of an
/// older leafsync, whose documents the by-id reads (on `_id`) would never find, so every image
/// would be a silent 404. Pings until the first answer, then checks the layout; stops the API
/// on either.
async fn check_database(
    store: Store,
    collections: [String; 3],
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let names = collections.each_ref().map(String::as_str);
    loop {
        let fatal = match store.ping().await {
            Ok(()) => match store.check_layout(&names).await {
                Ok(()) => return Ok(()),
                Err(e) => (!e.is_transient()).then_some(e),
            },
            Err(e) if e.is_refused_login() => Some(e.into_refused_login()),
            // Down or unreachable: /ready says so meanwhile.
            Err(_) => None,
        };
        if let Some(e) = fatal {
            tracing::error!(error = %e, "the consumer database cannot be served; stopping");
            shutdown.cancel();
            return Err(e);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Starts every `/total` count in the background, so the first clients find them cached
/// instead of waiting for a multi-second count of a large collection.
fn warm_totals(state: &Arc<State>) {
    for t in ImageType::ALL {
        for include_deleted in [false, true] {
            let state = state.clone();
            tokio::spawn(async move {
                let fetch = || state.count(t, include_deleted);
                let _ = state.totals.get((t, include_deleted), fetch).await;
            });
        }
    }
}

/// Binds `bind` and spawns the server; returns the bound address and the server task.
pub async fn serve(
    state: Arc<State>,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on api.bind {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    let header_read_timeout_ms = state.config.api.header_read_timeout_ms;
    let with_state = warp::any().map(move || state.clone());
    let routes = with_state
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .then(
            |state, method, path: warp::path::FullPath, query, headers| {
                routes::handle(state, method, path.as_str().to_owned(), query, headers)
            },
        );
    let header_timeout = ms(header_read_timeout_ms);
    Ok((
        addr,
        tokio::spawn(accept_loop(listener, routes, header_timeout, shutdown)),
    ))
}

/// Serves `filter` on every connection until `shutdown`, then waits for the requests in flight.
/// warp's own server has no timer, so hyper could not time out a client that sends its request
/// head slowly (slowloris); this is warp's loop with hyper's `header_read_timeout` set.
async fn accept_loop<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let svc = hyper_util::service::TowerToHyperService::new(warp::service(filter.clone()));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
