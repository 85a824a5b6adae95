//! A network namespace joined to the host by a veth pair, for the partition drills.
//!
//! The host end carries three addresses: `.1` (the host's own source address towards the
//! namespace, so the test reaches admin ports inside it), `.2` for the broker and `.3` for the
//! database; the servers listen there instead of on loopback. A process started in the namespace
//! reaches them over the veth; processes outside reach the same addresses locally. A `blackhole`
//! route inside the namespace then cuts it from one server without touching anything else:
//! packets of established connections vanish (the peer just stops answering, as in a real
//! partition) and new connections fail at once. [`NetNs::slow`] makes the same paths slow and
//! lossy instead.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Process;

/// A server a cut can isolate the namespace from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The broker, on [`NetNs::kafka_ip`].
    Kafka,
    /// The database, on [`NetNs::mongo_ip`].
    Mongo,
}

/// A network namespace with a veth to the host; deleted (with the veth) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: String,
    inner_if: String,
    /// The broker's address, on the host end.
    pub kafka_ip: Ipv4Addr,
    /// The database's address, on the host end.
    pub mongo_ip: Ipv4Addr,
    /// The namespace end's address: where its processes' ports are reached from the host.
    pub inner_ip: Ipv4Addr,
}

impl NetNs {
    /// Creates one, or says why it cannot (not root, no `ip`, namespaces not permitted): the
    /// caller then skips, printing the reason.
    pub fn create() -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 10.200-249.x.0/24: private, per process and per namespace, so parallel tests and
        // parallel runs on one machine do not collide.
        let net = [10, 200 + (pid % 50) as u8, (n % 250) as u8];
        let ip = |last| Ipv4Addr::new(net[0], net[1], net[2], last);
        let tag = format!("{:x}{n}", pid % 0x10000);
        let name = format!("leafsync-drill-{tag}");
        ip_cmd(&["netns", "add", &name])?;
        // From here on, dropping `ns` removes what was made.
        let ns = Self {
            name,
            host_if: format!("lsd{tag}h"),
            inner_if: format!("lsd{tag}n"),
            kafka_ip: ip(2),
            mongo_ip: ip(3),
            inner_ip: ip(10),
        };
        let host = ns.host_if.clone();
        let inner = ns.inner_if.clone();
        ip_cmd(&[
            "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &ns.name,
        ])?;
        // `.1` first: the primary address, so the host's connections into the namespace come
        // from it and never from a server's address that a cut black-holes.
        for last in [1, 2, 3] {
            ip_cmd(&["addr", "add", &format!("{}/24", ip(last)), "dev", &host])?;
        }
        ip_cmd(&["link", "set", &host, "up"])?;
        let inner_addr = format!("{}/24", ns.inner_ip);
        ip_cmd(&["-n", &ns.name, "addr", "add", &inner_addr, "dev", &inner])?;
        ip_cmd(&["-n", &ns.name, "link", "set", &inner, "up"])?;
        ip_cmd(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Starts `bin ARGS` inside the namespace (`ip netns exec` execs it: the pid is the
    /// program's own, so signals reach it).
    pub fn spawn(
        &self,
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        label: &str,
    ) -> Process {
        let mut argv = vec!["netns", "exec", &self.name];
        let bin = bin.to_str().expect("a UTF-8 path");
        argv.push(bin);
        argv.extend_from_slice(args);
        Process::spawn(Path::new("ip"), &argv, env, label)
    }

    /// Cuts the namespace from `server`: its packets to the server's address are dropped.
    pub fn cut(&self, server: Server) {
        self.route("add", server);
    }

    /// Undoes [`cut`](Self::cut).
    pub fn heal(&self, server: Server) {
        self.route("del", server);
    }

    fn route(&self, op: &str, server: Server) {
        let ip = match server {
            Server::Kafka => self.kafka_ip,
            Server::Mongo => self.mongo_ip,
        };
        let dst = format!("{ip}/32");
        ip_cmd(&["-n", &self.name, "route", op, "blackhole", &dst])
            .unwrap_or_else(|e| panic!("{op} the cut to {server:?}: {e}"));
    }

    /// Makes the link slow and lossy, both ways, for the namespace's traffic with the servers:
    /// every packet waits `delay_ms`, and a fraction `loss` is dropped. The kernels we run on have
    /// no `tc netem` (no sch_netem), so iptables queues those packets (NFQUEUE) to
    /// `testkit/slow_net.py`, which gives each its verdict late. Returns that process (the link
    /// stays slow while it lives), or says why it cannot (no iptables, no NFQUEUE).
    pub fn slow(&self, delay_ms: u32, loss: f64) -> Result<Process, String> {
        run("iptables", &["--version"])?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("slow_net.py");
        let p = self.spawn(
            Path::new("python3"),
            &[
                script.to_str().expect("a UTF-8 path"),
                "0",
                &delay_ms.to_string(),
                &loss.to_string(),
            ],
            &[],
            &format!("{}-slow-net", self.name),
        );
        // Bound to the queue before any rule sends packets there (unbound, they would be dropped).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.log_text().contains("slow_net: queue") {
            if Instant::now() > deadline {
                return Err(format!("slow_net.py did not start: {}", p.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let servers = format!("{},{}", self.kafka_ip, self.mongo_ip);
        for (chain, dir) in [("OUTPUT", "-d"), ("INPUT", "-s")] {
            ip_cmd(&[
                "netns",
                "exec",
                &self.name,
                "iptables",
                "-A",
                chain,
                dir,
                &servers,
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
            ])?;
        }
        Ok(p)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host end.
        if let Err(e) = ip_cmd(&["netns", "del", &self.name]) {
            eprintln!("removing network namespace {}: {e}", self.name);
        }
    }
}

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(Output { status, .. }) if status.success() => Ok(()),
        Ok(Output { stderr, .. }) => Err(format!(
            "`{program} {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&stderr).trim()
        )),
        Err(e) => Err(format!("`{program}`: {e}")),
    }
}
