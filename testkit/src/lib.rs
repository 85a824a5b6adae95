//! Helpers shared by the integration tests of every leafsync crate: unique names, free ports,
//! private stacks for fault tests, and child processes of the real binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure is a test failure

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod delay;
mod netns;
pub use delay::DelayProxy;
pub use netns::{NetNs, Server};

/// A name no other test (or earlier run) uses; also valid as a topic and database name.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{}x{:x}x{}",
        std::process::id(),
        nanos % 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `LEAFSYNC__A__B=value` pairs as TOML dotted keys (`a.b = value`), for a test's own view of the
/// config it gives a child process: integers stay numbers, `[x, y]` becomes a string array.
pub fn env_to_toml(env: &[(String, String)]) -> String {
    env.iter()
        .filter(|(k, _)| k.starts_with("LEAFSYNC__"))
        .map(|(k, v)| {
            let key = k
                .trim_start_matches("LEAFSYNC__")
                .to_lowercase()
                .replace("__", ".");
            let value = if v.parse::<i64>().is_ok() {
                v.clone()
            } else if v.starts_with('[') {
                let items: Vec<String> = v
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|i| format!("{:?}", i.trim()))
                    .collect();
                format!("[{}]", items.join(", "))
            } else {
                format!("{v:?}")
            };
            format!("{key} = {value}\n")
        })
        .collect()
}

/// A TCP port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A private stack (own ports, own data, no default topics) for tests that stop, kill or restart
/// a server; removed when dropped.
#[derive(Debug)]
pub struct PrivateStack {
    env: Vec<(String, String)>,
    run: PathBuf,
    /// `host:port` of its broker.
    pub kafka: String,
    /// URI of its MongoDB stand-in.
    pub mongo_uri: String,
    /// `host:port` of its SASL_SSL listener, when started with [`PrivateStack::start_secure`].
    pub sasl: Option<String>,
    mongo_host: Ipv4Addr,
}

impl PrivateStack {
    /// Starts both servers (Apache Kafka and the MongoDB stand-in).
    pub fn start() -> Self {
        let s = Self::new();
        s.stack("up");
        s
    }

    /// Starts both servers listening on these addresses instead of loopback (the broker also
    /// advertises its own), e.g. a [`NetNs`]'s, so a namespace can reach them.
    pub fn start_at(kafka_host: Ipv4Addr, mongo_host: Ipv4Addr) -> Self {
        let mut s = Self::new_at(kafka_host, mongo_host);
        s.env.extend([
            (
                "LEAFSYNC_STACK_KAFKA_HOST".to_owned(),
                kafka_host.to_string(),
            ),
            (
                "LEAFSYNC_STACK_MONGO_HOST".to_owned(),
                mongo_host.to_string(),
            ),
        ]);
        s.stack("up");
        s
    }

    /// Starts both servers with credentials and TLS (one CA made for the stack):
    /// - the broker also with a SASL_SSL listener (SCRAM-SHA-512, Kafka's StandardAuthorizer on)
    ///   and these `(user, password)` SCRAM users; its PLAINTEXT listener stays open to the test
    ///   itself as a super user (topics, ACLs, views);
    /// - MongoDB requiring SCRAM-SHA-256 and TLS, with `mongo_admin` as its root user, which
    ///   [`mongo_uri`](Self::mongo_uri) logs in as.
    pub fn start_secure(kafka_users: &[(&str, &str)], mongo_admin: (&str, &str)) -> Self {
        let mut s = Self::new();
        let port = free_port();
        let users: Vec<String> = kafka_users
            .iter()
            .map(|(u, p)| format!("{u}={p}"))
            .collect();
        s.env
            .push(("LEAFSYNC_STACK_SASL_PORT".to_owned(), port.to_string()));
        s.env
            .push(("LEAFSYNC_STACK_SCRAM_USERS".to_owned(), users.join(" ")));
        s.env.push((
            "LEAFSYNC_STACK_MONGO_ADMIN".to_owned(),
            format!("{}={}", mongo_admin.0, mongo_admin.1),
        ));
        s.sasl = Some(format!("{}:{port}", Ipv4Addr::LOCALHOST));
        s.mongo_uri = s.mongo_uri_as(mongo_admin.0, mongo_admin.1);
        s.stack("up");
        s
    }

    /// The URI of its MongoDB for `user` (a user of the `admin` database), over TLS with the
    /// stack's CA.
    pub fn mongo_uri_as(&self, user: &str, password: &str) -> String {
        let port = self
            .env
            .iter()
            .find(|(k, _)| k == "LEAFSYNC_STACK_MONGO_PORT")
            .map(|(_, v)| v.clone())
            .unwrap();
        format!(
            "mongodb://{user}:{password}@{}:{port}/?directConnection=true&authSource=admin&tls=true&tlsCAFile={}",
            self.mongo_host,
            self.run.join("tls/ca.pem").display()
        )
    }

    /// The CA certificate (PEM) that signed the SASL_SSL listener's certificate.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.run.join("tls/ca.pem")).expect("the stack's CA (start_secure)")
    }

    /// Starts only the MongoDB stand-in, for tests that need no broker.
    pub fn start_mongo_only() -> Self {
        let s = Self::new();
        s.stack("start-mongo");
        s
    }

    fn new() -> Self {
        Self::new_at(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)
    }

    fn new_at(kafka_host: Ipv4Addr, mongo_host: Ipv4Addr) -> Self {
        let (kp, cp, mp) = (free_port(), free_port(), free_port());
        let run = std::env::temp_dir().join(unique("leafsync-stack-"));
        let env = vec![
            ("LEAFSYNC_STACK_KAFKA_PORT".to_owned(), kp.to_string()),
            ("LEAFSYNC_STACK_CONTROLLER_PORT".to_owned(), cp.to_string()),
            ("LEAFSYNC_STACK_MONGO_PORT".to_owned(), mp.to_string()),
            ("LEAFSYNC_STACK_RUN".to_owned(), run.display().to_string()),
            ("LEAFSYNC_STACK_TOPICS".to_owned(), String::new()),
            ("LEAFSYNC_STACK_DLQ_TOPIC".to_owned(), String::new()),
        ];
        Self {
            env,
            run,
            kafka: format!("{kafka_host}:{kp}"),
            mongo_uri: format!("mongodb://{mongo_host}:{mp}/?directConnection=true"),
            sasl: None,
            mongo_host,
        }
    }

    /// Runs `scripts/stack CMD` against this stack (`stop-mongo`, `start-kafka`, …).
    pub fn stack(&self, cmd: &str) {
        let st = Command::new(repo_root().join("scripts/stack"))
            .arg(cmd)
            .envs(self.env.iter().cloned())
            .status()
            .unwrap();
        assert!(st.success(), "scripts/stack {cmd} failed");
    }

    /// `kill -9` of one server (`kafka` or `mongo`): no shutdown, no flush, as a node crash.
    pub fn kill9(&self, server: &str) {
        let pid_file = self.run.join(format!("{server}.pid"));
        let pid = std::fs::read_to_string(&pid_file).expect("server pid file");
        let st = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -9 {server}");
        // Wait until it is gone, so a restart does not find its ports still bound.
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::remove_file(pid_file).unwrap();
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        self.stack("reset");
    }
}

/// Runs one of Apache Kafka's own command-line tools (`scripts/stack kafka-tool CLASS ARGS…`)
/// and returns its standard output: an independent view of the broker's state, from the
/// broker's own code rather than librdkafka's.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts/stack"))
        .arg("kafka-tool")
        .arg(class)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{class} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Another binary of the workspace, built beside the test's own (`cargo test --workspace` builds
/// every binary into the target dir that holds `deps/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap();
    assert!(
        p.exists(),
        "{} not built (run cargo test --workspace)",
        p.display()
    );
    p
}

/// Runs an async clean-up when dropped, also when the test fails: each test removes the
/// databases and topics it created, so a long-lived development stack does not grow with every
/// `make test`. Drop runs outside any async context (a test's runtime may be gone), so the
/// clean-up gets a thread and a runtime of its own. Failures are reported, not raised: a test's
/// own verdict matters more than its clean-up.
pub struct Cleanup {
    what: String,
    run: Option<Box<dyn FnOnce() -> BoxFuture + Send + Sync>>,
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

impl Cleanup {
    /// `what` names it in a failure message; `f` does the work.
    pub fn new<F, Fut>(what: impl Into<String>, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            what: what.into(),
            run: Some(Box::new(move || Box::pin(f()))),
        }
    }
}

impl std::fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanup").field("what", &self.what).finish()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else { return };
        let what = std::mem::take(&mut self.what);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), run()).await })
                .map_err(|_| "timed out".to_owned())?
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("clean-up of {what} failed: {e}"),
            Err(_) => eprintln!("clean-up of {what} panicked"),
        }
    }
}

/// A child process of one of the binaries, its output in a log file; killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

impl Process {
    /// Spawns `bin` with `env`, logging to `$TMPDIR/{label}.log`.
    pub fn spawn(bin: &Path, args: &[&str], env: &[(String, String)], label: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{label}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().cloned())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn");
        Self {
            child: Some(child),
            log,
        }
    }

    /// OS process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends a signal, e.g. `-TERM` or `-9`.
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        self.signal("-9");
        self.wait_exit(Duration::from_secs(10));
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 30 log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = self.log_text();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spans received by [`otlp_receiver`].
pub type Spans = std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>;

/// An OTLP/HTTP receiver on loopback that decodes exports with the official proto types and
/// keeps every span; point `telemetry.otlp_endpoint` at `http://{addr}`.
pub async fn otlp_receiver() -> (SocketAddr, Spans) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use warp::Filter;
    let spans: Spans = Default::default();
    let s = spans.clone();
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            let mut all = s.lock().unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    all.extend(ss.spans);
                }
            }
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, spans)
}

/// Hex trace or span id → bytes, as OTLP carries them.
pub fn hex_id(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// GET `http://{addr}{path}`: status and body, `None` when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

/// Waits until `GET path` answers `status`, or panics with `context()` after `timeout`.
pub async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        last = http_get(addr, path).await;
        if last.as_ref().is_some_and(|(s, _)| *s == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} did not answer {status} within {timeout:?}; its last answer: {last:?}\n{}",
        context()
    );
}

/// Gives `collection` what an older leafsync made in the consumer database: a unique index
/// `name` on `id` (its documents had their own ObjectId `_id`). The start-up checks refuse it.
pub async fn add_legacy_id_index(
    collection: &mongodb::Collection<mongodb::bson::Document>,
    name: &str,
) {
    let model = mongodb::IndexModel::builder()
        .keys(mongodb::bson::doc! {"id": 1})
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .name(name.to_owned())
                .build(),
        )
        .build();
    collection
        .create_index(model)
        .await
        .expect("create the legacy index");
}
