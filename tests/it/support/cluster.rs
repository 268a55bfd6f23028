//! A real 3-node Redis Cluster on loopback ports for one test: started with
//! `redis-server --cluster-enabled yes` and joined by
//! `redis-cli --cluster create`, shut down (`shutdown nosave`) and its files
//! removed when the test ends, even on panic. Starting it is not optional:
//! when it cannot be started the test fails with the reason.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Client ports are taken from here on (below the kernel's ephemeral range;
/// the cluster bus port of each is +10000, still below it).
const FIRST_PORT: u16 = 21_000;
const LAST_PORT: u16 = 22_500;
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct RedisCluster {
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts 3 primaries (no replicas) and waits until the cluster is `ok`.
    pub async fn start() -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("pipes-it-cluster-{}", ulid::Ulid::new().to_string().to_lowercase()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(start_node_on_free_port(&dir).await);
        }
        let cluster = RedisCluster { ports, dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(20)).await;
        cluster
    }

    /// `PIPES_REDIS_URL` for the cluster: every node, comma-separated.
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// Keys matching `pattern`, per node (each node holds only its own slots' keys).
    pub fn keys_per_node(&self, pattern: &str) -> Vec<Vec<String>> {
        self.ports
            .iter()
            .map(|p| {
                cli(*p, &["--scan", "--pattern", pattern])
                    .lines()
                    .map(str::to_owned)
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .collect()
    }

    /// Shuts every node down (no data kept): Redis is down.
    pub fn stop_all(&self) {
        for port in &self.ports {
            cli(*port, &["shutdown", "nosave"]);
        }
        for port in &self.ports {
            assert!(wait_until(Duration::from_secs(5), || !answers(*port)), "node {port} stopped");
        }
    }

    /// Starts every node again with its cluster config: the same cluster, empty.
    pub async fn restart_all(&self) {
        for port in &self.ports {
            assert!(spawn_node(&self.dir, *port), "node {port} restarted");
        }
        self.wait_ok(Duration::from_secs(30)).await;
    }

    async fn wait_ok(&self, within: Duration) {
        let started = Instant::now();
        loop {
            let all_ok = self.ports.iter().all(|p| cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
            if all_ok {
                return;
            }
            assert!(started.elapsed() < within, "the Redis Cluster did not reach cluster_state:ok within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in &self.ports {
            cli(*port, &["shutdown", "nosave"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).stdin(Stdio::null()).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

fn answers(port: u16) -> bool {
    cli(port, &["ping"]).trim() == "PONG"
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts one node on a port whose bus port is free too; tries other ports
/// when one is taken (another test, another process).
async fn start_node_on_free_port(dir: &std::path::Path) -> u16 {
    let span = LAST_PORT - FIRST_PORT;
    // A random start per test binary, so two runs at once rarely collide.
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() % u32::from(span)) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..50 {
        let port = FIRST_PORT + NEXT_PORT.fetch_add(1, Ordering::SeqCst) % span;
        if !port_free(port) || !port_free(port + 10_000) {
            continue;
        }
        if spawn_node(dir, port) {
            return port;
        }
    }
    panic!("could not start a Redis Cluster node on any port in {FIRST_PORT}..{LAST_PORT}");
}

/// Starts a daemonized cluster node on `port` and waits until it is ours and answering.
fn spawn_node(dir: &std::path::Path, port: u16) -> bool {
    let pidfile = dir.join(format!("redis-{port}.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let status = Command::new("redis-server")
        .args(["--cluster-enabled", "yes", "--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--cluster-config-file")
        .arg(dir.join(format!("nodes-{port}.conf")))
        .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no", "--daemonize", "yes"])
        .arg("--dir")
        .arg(dir)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")))
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|err| {
            panic!("redis-server could not be run ({err}); the Redis Cluster tests need it installed")
        });
    if !status.success() {
        return false;
    }
    // The node is ours once its pid file exists and the port answers with that pid.
    wait_until(Duration::from_secs(5), || {
        let Ok(pid) = std::fs::read_to_string(&pidfile) else { return false };
        cli(port, &["info", "server"]).contains(&format!("process_id:{}", pid.trim()))
    })
}
