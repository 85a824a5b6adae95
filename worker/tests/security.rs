//! SASL_SSL end to end on Apache Kafka: SCRAM-SHA-512 over TLS with a private CA, Kafka's
//! StandardAuthorizer on, and only the ACLs that docs/operations.md lists. Every Kafka client
//! of leafsync goes through that listener with the settings the Kubernetes Secret gives
//! (`LEAFSYNC__KAFKA__PROPERTIES__*`, the CA as `ssl.ca.pem`); a wrong password or an untrusted
//! CA stops each binary quickly, with the cause named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{PrivateStack, TestEnv};
use leafsync_core::Config;
use leafsync_loadtest::expected::Expected;
use leafsync_testkit::{http_get, kafka_tool, workspace_bin, Process};

const WORKER_USER: &str = "leafsync";
const WORKER_PASSWORD: &str = "wkr-Secret-7c1e9a";
const PRODUCER_USER: &str = "producer";
const PRODUCER_PASSWORD: &str = "prd-Secret-3b8f20";
/// A user the broker knows and the ACLs grant nothing.
const NOBODY: (&str, &str) = ("nobody", "nobody-pw");
/// MongoDB's root user (the test's own view), the workers' user (`readWrite` on the consumer
/// database) and the API's (`read`).
const MONGO_ROOT: (&str, &str) = ("root", "root-Secret-5e0d44");
const MONGO_WORKER: (&str, &str) = ("leafsync", "db-Secret-a91c07");
const MONGO_API: (&str, &str) = ("reader", "rd-Secret-62f3b8");

/// Every secret a process of these tests is given, for the sweep: none may appear in any output.
const SECRETS: [&str; 7] = [
    WORKER_PASSWORD,
    PRODUCER_PASSWORD,
    NOBODY.1,
    MONGO_ROOT.1,
    MONGO_WORKER.1,
    MONGO_API.1,
    WRONG_PASSWORD,
];
const WRONG_PASSWORD: &str = "wrong-Secret-0d5e13";

/// Fails naming the secret and where it leaked.
fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "a secret ({s}) leaked into {what}");
    }
}

fn secure_stack() -> PrivateStack {
    PrivateStack::start_secure(
        &[
            (WORKER_USER, WORKER_PASSWORD),
            (PRODUCER_USER, PRODUCER_PASSWORD),
            NOBODY,
        ],
        MONGO_ROOT,
    )
}

/// Creates a MongoDB user with `role` on the test's database only, as an operator would for
/// leafsync; returns its URI (TLS, the stack's CA).
async fn mongo_user(
    stack: &PrivateStack,
    env: &TestEnv,
    (user, pwd): (&str, &str),
    role: &str,
) -> String {
    let client = mongodb::Client::with_uri_str(&stack.mongo_uri)
        .await
        .unwrap();
    client
        .database("admin")
        .run_command(mongodb::bson::doc! {
            "createUser": user,
            "pwd": pwd,
            "roles": [{ "role": role, "db": &env.name }],
        })
        .await
        .unwrap();
    stack.mongo_uri_as(user, pwd)
}

/// The client settings a Kubernetes Secret gives: the SASL_SSL listener, SCRAM-SHA-512, the
/// user's password and the CA as PEM text (the `kafka-ca-pem` key).
fn sasl_env(
    stack: &PrivateStack,
    user: &str,
    password: &str,
    ca_pem: &str,
) -> Vec<(String, String)> {
    [
        (
            "LEAFSYNC__KAFKA__BOOTSTRAP_SERVERS",
            stack.sasl.as_deref().unwrap(),
        ),
        ("LEAFSYNC__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
        (
            "LEAFSYNC__KAFKA__PROPERTIES__SASL_MECHANISM",
            "SCRAM-SHA-512",
        ),
        ("LEAFSYNC__KAFKA__PROPERTIES__SASL_USERNAME", user),
        ("LEAFSYNC__KAFKA__PROPERTIES__SASL_PASSWORD", password),
        ("LEAFSYNC__KAFKA__PROPERTIES__SSL_CA_PEM", ca_pem),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// One line of the ```acl block in docs/operations.md.
#[derive(Debug)]
struct Acl {
    principal: String,
    operation: String,
    resource: String,
    names: Vec<String>,
}

/// The ACLs docs/operations.md lists, with the default names (leafsync.example.toml's) mapped
/// to this test's topics and group.
fn documented_acls(env: &TestEnv) -> Vec<Acl> {
    let doc =
        std::fs::read_to_string(leafsync_testkit::repo_root().join("docs/operations.md")).unwrap();
    let block = doc
        .split("```acl\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an ```acl block in docs/operations.md");
    let defaults = Config::load_with_overrides("").unwrap();
    let rename = |name: &str| -> String {
        if name == defaults.kafka.group_id {
            return env.config.kafka.group_id.clone();
        }
        if name == defaults.kafka.dead_letter_topic {
            return env.config.kafka.dead_letter_topic.clone();
        }
        for t in leafsync_core::ImageType::ALL {
            if name == defaults.types.get(t).topic {
                return env.config.types.get(t).topic.clone();
            }
        }
        panic!("docs/operations.md grants on `{name}`, which is no topic or group of leafsync")
    };
    let acls: Vec<Acl> = block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 4, "acl line `{l}`");
            Acl {
                principal: f[0].to_owned(),
                operation: f[1].to_owned(),
                resource: f[2].to_owned(),
                names: f[3..].iter().map(|n| rename(n)).collect(),
            }
        })
        .collect();
    assert!(acls.len() >= 3, "{acls:?}");
    acls
}

/// Grants exactly `acls` with Kafka's own AclCommand, through the stack's admin listener.
fn grant(stack: &PrivateStack, acls: &[Acl]) {
    for a in acls {
        let flag = match a.resource.as_str() {
            "Topic" => "--topic",
            "Group" => "--group",
            other => panic!("resource type {other}"),
        };
        let mut args = vec![
            "--bootstrap-server",
            &stack.kafka,
            "--add",
            "--allow-principal",
            &a.principal,
            "--operation",
            &a.operation,
        ];
        for n in &a.names {
            args.extend([flag, n.as_str()]);
        }
        kafka_tool("org.apache.kafka.tools.AclCommand", &args);
    }
}

fn run(bin: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(bin)
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kafka_client_works_over_sasl_ssl_with_only_the_documented_acls() {
    let stack = secure_stack();
    let env = TestEnv::on(&stack).await;
    grant(&stack, &documented_acls(&env));
    let ca = stack.ca_pem();
    let mut worker_sasl = sasl_env(&stack, WORKER_USER, WORKER_PASSWORD, &ca);
    worker_sasl.push((
        "LEAFSYNC__MONGO__URI".into(),
        mongo_user(&stack, &env, MONGO_WORKER, "readWrite").await,
    ));

    // Every process logs at debug level and sends its traces to a receiver: the secrets sweep
    // at the end reads all of it.
    let (otlp, spans) = leafsync_testkit::otlp_receiver().await;
    let loud = [
        (
            "LEAFSYNC__TELEMETRY__LOG_FILTER".to_owned(),
            "debug".to_owned(),
        ),
        (
            "LEAFSYNC__TELEMETRY__OTLP_ENDPOINT".to_owned(),
            format!("http://{otlp}"),
        ),
    ];
    worker_sasl.extend(loud.iter().cloned());
    let mut outputs: Vec<(String, String)> = Vec::new();
    let config = run(
        Path::new(env!("CARGO_BIN_EXE_leafsync-worker")),
        &["print-config"],
        &env.process_env(&refs(&worker_sasl)),
    );
    assert!(config.status.success());
    let shown = text(&config);
    // Where a secret's value is shown, its masked form is.
    assert!(shown.contains("sasl_password = \"****\""), "{shown}");
    assert!(shown.contains("mongodb://leafsync:****@"), "{shown}");
    outputs.push(("print-config".into(), shown));

    let mut w = env.spawn_worker("w1", &refs(&worker_sasl));
    w.wait_ready(Duration::from_secs(60)).await;

    // The load tool, as its own principal: flood, verify, report.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let mut producer_env = sasl_env(&stack, PRODUCER_USER, PRODUCER_PASSWORD, &ca);
    producer_env.extend(loud.iter().cloned());
    let load = run(
        &workspace_bin("leafsync-loadtest"),
        &[
            "run",
            "--count",
            "3000",
            "--ids-per-type",
            "200",
            "--poison-ratio",
            "0.01",
            "--seed",
            "11",
            "--trace",
            "--timeout",
            "120",
            "--worker-metrics",
            &format!("http://{}/metrics", w.admin),
            "--out",
            report.to_str().unwrap(),
        ],
        &env.process_env(&refs(&producer_env)),
    );
    assert!(load.status.success(), "run: {}", text(&load));
    outputs.push(("the load tool's output".into(), text(&load)));
    for f in ["report.json", "report.html"] {
        outputs.push((f.into(), std::fs::read_to_string(report.join(f)).unwrap()));
    }
    let expected = Expected::load(&report.join("expected.jsonl")).unwrap();
    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());

    // The API reads with its own read-only user, over TLS.
    let api_port = leafsync_testkit::free_port();
    let api_addr = format!("127.0.0.1:{api_port}");
    let api_uri = mongo_user(&stack, &env, MONGO_API, "read").await;
    let mut api_env = loud.to_vec();
    api_env.push(("LEAFSYNC__API__BIND".into(), api_addr.clone()));
    api_env.push(("LEAFSYNC__MONGO__URI".into(), api_uri));
    let api_process = Process::spawn(
        &workspace_bin("leafsync-api"),
        &[],
        &env.process_env(&refs(&api_env)),
        &format!("{}-api", env.name),
    );
    let api: std::net::SocketAddr = api_addr.parse().unwrap();
    leafsync_testkit::wait_for_status(api, "/ready", 200, Duration::from_secs(30), || {
        String::new()
    })
    .await;
    let (status, body) = http_get(api, "/image-plant/potato/total").await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (
            200,
            expected
                .count(leafsync_core::ImageType::Potato, false)
                .to_string()
                .as_str()
        )
    );

    // A bad request's error body, and the API's metrics.
    for path in ["/image-plant/potato/abc", "/metrics"] {
        let (_, body) = http_get(api, path).await.unwrap();
        outputs.push((format!("the API's {path}"), body));
    }

    // Dead letters went out through the listener (Write on the dead-letter topic).
    assert!(w.events_total("outcome=\"dead_lettered\"").await > 0);
    assert!(!env.dead_letters(1, Duration::from_secs(10)).is_empty());
    // The lag queries (committed offsets, watermarks) work with Read alone: lag reaches 0.
    w.wait_metrics(Duration::from_secs(30), |m| {
        let lines: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("leafsync_worker_consumer_lag{"))
            .collect();
        !lines.is_empty() && lines.iter().all(|l| l.ends_with(" 0"))
    })
    .await;

    outputs.push((
        "the worker's /metrics".into(),
        w.get("/metrics").await.unwrap().1,
    ));

    // The backfill: writes and dead-letters through the same principal.
    let file = dir.path().join("potato.jsonl");
    std::fs::write(
        &file,
        "{\"id\":990001,\"updated_at\":\"2025-01-01T00:00:00Z\"}\n{\"id\": 5,\n",
    )
    .unwrap();
    let mut bf = env.spawn_backfill(
        "bf",
        &["--from-jsonl", &format!("potato={}", file.display())],
        &refs(&worker_sasl),
    );
    let status = bf.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{}", bf.log_tail());
    let t = common::Totals::parse(&bf.log_text());
    assert_eq!((t.read, t.inserted, t.dead_lettered), (2, 1, 1));

    // The replay: refuses while the worker is a live member, then resets once it has left.
    let worker_bin = Path::new(env!("CARGO_BIN_EXE_leafsync-worker"));
    let replay_env = env.process_env(&refs(&worker_sasl));
    let refused = run(worker_bin, &["replay", "--to-earliest"], &replay_env);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("active member"),
        "{}",
        text(&refused)
    );
    w.signal("-TERM");
    assert!(w
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let before = env.committed_and_end().0;
    assert!(before > 0);
    let replay = run(worker_bin, &["replay", "--to-earliest"], &replay_env);
    assert!(replay.status.success(), "replay: {}", text(&replay));
    assert_eq!(
        env.committed_and_end().0,
        0,
        "every committed offset back to 0"
    );

    // The sweep: logs at debug level (the URI shown masked where the worker logs it), command
    // outputs, reports, metrics and every span the receiver got.
    let worker_log = w.log_text();
    assert!(
        worker_log.contains("leafsync:****@"),
        "the worker logs its masked URI"
    );
    outputs.push(("the worker's log".into(), worker_log));
    outputs.push(("the API's log".into(), api_process.log_text()));
    outputs.push(("the backfill's log".into(), bf.log_text()));
    outputs.push((
        "the replay's output".into(),
        text(&refused) + &text(&replay),
    ));
    let spans = format!("{:?}", spans.lock().unwrap());
    assert!(spans.len() > 1_000, "the receiver got spans");
    outputs.push(("the exported spans".into(), spans));
    for (what, out) in &outputs {
        assert_no_secret(what, out);
    }
}

/// A second CA, which signed nothing the broker presents.
fn other_ca(dir: &Path) -> String {
    let (key, cert) = (dir.join("other.key"), dir.join("other.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-the-brokers-ca", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "openssl: {st:?}");
    std::fs::read_to_string(cert).unwrap()
}

/// Runs `bin args` and expects it to stop on its own within 30 s, non-zero, naming `cause`;
/// with `ready` (a worker's admin address), `/ready` must never answer 200 meanwhile.
async fn expect_refusal(
    env: &TestEnv,
    bin: &Path,
    args: &[&str],
    extra: &[(String, String)],
    cause: &str,
    label: &str,
) {
    let port = leafsync_testkit::free_port();
    let admin = format!("127.0.0.1:{port}");
    let mut penv = env.process_env(&refs(extra));
    penv.push(("LEAFSYNC__WORKER__ADMIN_ADDR".into(), admin.clone()));
    let mut p = Process::spawn(bin, args, &penv, &format!("{}-{label}", env.name));
    let started = Instant::now();
    let status = loop {
        if let Some(st) = p.wait_exit(Duration::from_millis(200)) {
            break st;
        }
        let ready = http_get(admin.parse().unwrap(), "/ready").await;
        assert!(
            !matches!(ready, Some((200, _))),
            "{label}: ready while Kafka refuses it\n{}",
            p.log_tail()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{label}: still running after 30 s\n{}",
            p.log_tail()
        );
    };
    assert!(!status.success(), "{label}: exit {status:?}");
    let log = p.log_text();
    assert!(
        log.contains(cause),
        "{label}: no `{cause}` in\n{}",
        p.log_tail()
    );
    assert_no_secret(&format!("the error output of {label}"), &log);
    eprintln!("{label}: stopped in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_an_untrusted_ca_stops_every_binary_with_the_cause() {
    let stack = secure_stack();
    let env = TestEnv::on(&stack).await;
    grant(&stack, &documented_acls(&env));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("potato.jsonl");
    std::fs::write(&file, "{\"id\": 5,\n").unwrap();
    let jsonl = format!("potato={}", file.display());
    let worker = Path::new(env!("CARGO_BIN_EXE_leafsync-worker")).to_path_buf();
    let loadtest = workspace_bin("leafsync-loadtest");
    let expected = dir.path().join("e.jsonl");
    let commands: [(&str, &Path, Vec<&str>); 4] = [
        ("worker", &worker, vec![]),
        ("replay", &worker, vec!["replay", "--to-earliest"]),
        (
            "backfill",
            &worker,
            vec!["backfill", "--from-jsonl", &jsonl],
        ),
        (
            "loadtest",
            &loadtest,
            vec![
                "flood",
                "--count",
                "10",
                "--expected",
                expected.to_str().unwrap(),
            ],
        ),
    ];
    let cases = [
        (
            "wrong-password",
            sasl_env(&stack, WORKER_USER, WRONG_PASSWORD, &stack.ca_pem()),
            "Kafka refused the credentials",
        ),
        (
            "untrusted-ca",
            sasl_env(&stack, WORKER_USER, WORKER_PASSWORD, &other_ca(dir.path())),
            "TLS with the Kafka broker failed",
        ),
    ];
    for (case, extra, cause) in &cases {
        for (what, bin, args) in &commands {
            expect_refusal(&env, bin, args, extra, cause, &format!("{what}-{case}")).await;
        }
    }
    // Without the documented ACLs: denied the dead-letter topic at start-up; denied the group
    // (the load tool's principal may describe the dead-letter topic, not join the group).
    let ca = stack.ca_pem();
    let acl_cases = [
        (
            "no-acls",
            sasl_env(&stack, NOBODY.0, NOBODY.1, &ca),
            "Kafka describe refused for topic",
        ),
        (
            "no-group-acl",
            sasl_env(&stack, PRODUCER_USER, PRODUCER_PASSWORD, &ca),
            "Kafka denied the principal an operation",
        ),
    ];
    for (case, extra, cause) in &acl_cases {
        expect_refusal(&env, &worker, &[], extra, cause, &format!("worker-{case}")).await;
    }
    // MongoDB refusing the login: each binary that uses it stops, naming the key.
    let mut bad_db = sasl_env(&stack, WORKER_USER, WORKER_PASSWORD, &ca);
    mongo_user(&stack, &env, MONGO_WORKER, "readWrite").await;
    bad_db.push((
        "LEAFSYNC__MONGO__URI".into(),
        stack.mongo_uri_as(MONGO_WORKER.0, WRONG_PASSWORD),
    ));
    let api = workspace_bin("leafsync-api");
    let api_port = leafsync_testkit::free_port().to_string();
    let db_commands: [(&str, &Path, Vec<&str>); 3] = [
        ("worker", &worker, vec![]),
        (
            "backfill",
            &worker,
            vec!["backfill", "--from-jsonl", &jsonl],
        ),
        ("api", &api, vec![]),
    ];
    bad_db.push((
        "LEAFSYNC__API__BIND".into(),
        format!("127.0.0.1:{api_port}"),
    ));
    for (what, bin, args) in &db_commands {
        expect_refusal(
            &env,
            bin,
            args,
            &bad_db,
            "credentials of configuration key `mongo.uri`",
            &format!("{what}-mongo-login"),
        )
        .await;
    }
    // Nothing was written: no command got past the broker.
    assert!(env.dead_letters(1, Duration::from_secs(2)).is_empty());
}
