//! Real Redis for the integration tests: `RedisServer` (one `redis-server` child on a
//! free loopback port) and `RedisCluster` (three of them joined by `redis-cli`).
//!
//! Every server is started with `--save '' --appendonly no` in its own temp dir, bound to
//! 127.0.0.1 on a port picked for it, and killed when dropped, so the machine's own Redis
//! (6379) is never used. When a binary is missing the test is skipped (`skips`), unless
//! `HOOKGATE_REQUIRE_REDIS=1` (CI), where it fails.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{PATIENCE, eventually, skips};

/// Set to `1` (as CI does) to fail, not skip, a test whose Redis binaries are missing.
const REQUIRE_REDIS: &str = "HOOKGATE_REQUIRE_REDIS";

/// The machine's own Redis, which tests must never touch.
const SYSTEM_REDIS_PORT: u16 = 6379;

/// Whether a Redis program can be run; when it cannot, the test fails under
/// `HOOKGATE_REQUIRE_REDIS=1` or is skipped (`skips`), and the caller returns.
fn installed_or_skip(program: &'static str, package: &'static str) -> bool {
    skips::installed_or_skip(program, package, REQUIRE_REDIS)
}

/// A cluster node also listens on its port + 10000 (the cluster bus).
const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released); for a
/// cluster node, one whose bus port was free too.
fn free_port(cluster: bool) -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        if port == SYSTEM_REDIS_PORT {
            continue;
        }
        if !cluster {
            return port;
        }
        let bus_is_free = port
            .checked_add(CLUSTER_BUS_OFFSET)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_is_free {
            return port;
        }
    }
}

/// A connection to a Redis on `port`, with every step bounded.
async fn connect(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The pid of the Redis answering on `port`, if one answers.
async fn serving_pid(port: u16) -> Option<u32> {
    let mut conn = connect(port).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Why one attempt to start `redis-server` did not give a server of our own.
enum StartFailure {
    /// It exited; its log says why.
    Exited(String),
    /// The port was taken between picking and binding it: it says so, or another
    /// server (another test's, which won the race) answers there.
    Taken,
}

/// One `redis-server` child on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
    child: Option<Child>,
    tls: Option<RedisTls>,
}

/// A TLS port beside the plain one (which the tests' own checks use).
struct RedisTls {
    cert: PathBuf,
    key: PathBuf,
    port: u16,
}

impl RedisServer {
    /// Starts a server, or returns `None` after saying why the test is skipped.
    /// Use as `let Some(redis) = RedisServer::start_or_skip().await else { return };`.
    pub async fn start_or_skip() -> Option<RedisServer> {
        if !installed_or_skip("redis-server", "redis-server") {
            return None;
        }
        Some(RedisServer::start().await)
    }

    /// Starts a server on a free port and returns once it answers; panics if it cannot.
    pub async fn start() -> RedisServer {
        RedisServer::start_node(false, None).await
    }

    /// `start_or_skip`, also serving TLS (`tls_url`) with the certificate `cert` and its
    /// key `key` (PEM files).
    pub async fn start_tls_or_skip(cert: PathBuf, key: PathBuf) -> Option<RedisServer> {
        if !installed_or_skip("redis-server", "redis-server") {
            return None;
        }
        let tls = RedisTls { cert, key, port: 0 };
        Some(RedisServer::start_node(false, Some(tls)).await)
    }

    /// `rediss://localhost:<TLS port>` (after `start_tls_or_skip`).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with TLS");
        format!("rediss://localhost:{}", tls.port)
    }

    async fn start_node(cluster: bool, tls: Option<RedisTls>) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temp dir for redis-server");
        let mut server = RedisServer {
            port: 0,
            dir,
            cluster,
            child: None,
            tls,
        };
        eventually("a free port for redis-server", async || {
            server.port = free_port(cluster);
            match server.launch().await {
                Ok(()) => true,
                // Lost the race for the port: pick another.
                Err(StartFailure::Taken) => false,
                Err(StartFailure::Exited(log)) => {
                    panic!("redis-server did not start; its log:\n{log}")
                }
            }
        })
        .await;
        server
    }

    /// Spawns `redis-server` on `self.port` and waits until it answers as itself.
    async fn launch(&mut self) -> Result<(), StartFailure> {
        assert_ne!(self.port, SYSTEM_REDIS_PORT, "never the machine's Redis");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the redis-server log");
        let log_start = log.metadata().map_or(0, |m| m.len() as usize);
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(tls) = &mut self.tls {
            tls.port = free_port(false);
            command
                .args([
                    "--tls-port",
                    &tls.port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                // Redis wants CAs even when it asks clients for no certificate.
                .arg("--tls-ca-cert-file")
                .arg(&tls.cert);
        }
        if self.cluster {
            let nodes = self.dir.path().join(format!("nodes-{}.conf", self.port));
            command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                // The nodes still up keep serving their own slots while one is down (no
                // replicas here to fail over to), as a partitioned queue expects.
                .args(["--cluster-require-full-coverage", "no"])
                .arg("--cluster-config-file")
                .arg(nodes);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        let pid = child.id();
        self.child = Some(child);
        let port = self.port;
        eventually(
            format!("redis-server answering on port {port}"),
            async || {
                if let Some(status) = self.child_mut().try_wait().expect("poll redis-server") {
                    self.child = None;
                    let log = self.log();
                    let log = log.get(log_start..).unwrap_or(&log);
                    if log.contains("already in use") {
                        return Ok(Err(StartFailure::Taken));
                    }
                    return Ok(Err(StartFailure::Exited(format!("{status}\n{log}"))));
                }
                match tokio::time::timeout(Duration::from_secs(5), serving_pid(port)).await {
                    Ok(Some(serving)) if serving == pid => Ok(Ok(())),
                    Ok(Some(_)) => {
                        self.kill();
                        Ok(Err(StartFailure::Taken))
                    }
                    Ok(None) | Err(_) => Err(format!("no answer yet; its log:\n{}", self.log())),
                }
            },
        )
        .await
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("redis-server is running")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis-server.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until it is gone: clients see the connection drop.
    pub fn stop(&mut self) {
        assert!(self.child.is_some(), "redis-server is not running");
        self.kill();
    }

    /// Stops the server's process (SIGSTOP) without closing anything: it accepts
    /// connections and never answers, as a hung node does, until the guard is dropped.
    pub fn pause(&self) -> Paused {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        signal(pid, "-STOP");
        Paused(pid)
    }

    /// Starts the server again on the same port (empty: nothing is saved), so clients
    /// that know the address reconnect by themselves.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        eventually(
            format!("port {port} free again for redis-server"),
            async || match self.launch().await {
                Ok(()) => true,
                // The old socket may linger a moment; someone else holding the port for
                // longer than PATIENCE fails the test.
                Err(StartFailure::Taken) => false,
                Err(StartFailure::Exited(log)) => {
                    panic!("redis-server did not restart on port {port}; its log:\n{log}")
                }
            },
        )
        .await;
    }

    /// A fresh connection for inspecting what the gateway wrote.
    pub async fn connection(&self) -> MultiplexedConnection {
        connect(self.port)
            .await
            .unwrap_or_else(|e| panic!("connect to redis-server on {}: {e}", self.port))
    }

    /// Runs one command and returns its reply.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        command
            .query_async(&mut self.connection().await)
            .await
            .unwrap_or_else(|e| panic!("{command:?} on port {}: {e}", self.port))
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// Milliseconds `key` has left: -1 without expiry, -2 when absent.
    pub async fn pttl(&self, key: &str) -> i64 {
        self.query(redis::cmd("PTTL").arg(key)).await
    }

    /// Commands this server has run since it started (or since `CONFIG RESETSTAT`), by
    /// `INFO commandstats`, leaving out what tests and cluster clients ask to inspect
    /// (`info`, `cluster`, `ping`, `config`, `keys`, `command`, `client`, `hello`,
    /// `save`).
    pub async fn data_commands(&self) -> u64 {
        const INSPECTION: [&str; 9] = [
            "info", "cluster", "ping", "config", "keys", "command", "client", "hello", "save",
        ];
        let stats: String = self.query(redis::cmd("INFO").arg("commandstats")).await;
        stats
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .filter_map(|line| {
                let (name, fields) = line.split_once(':')?;
                let command = name.split('|').next().unwrap_or(name);
                if INSPECTION.contains(&command) {
                    return None;
                }
                let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
                calls.parse::<u64>().ok()
            })
            .sum()
    }

    /// Writes the data to the server's dump file, which `restart` loads back.
    pub async fn save(&self) {
        let _: String = self.query(&redis::cmd("SAVE")).await;
    }

    /// The keys matching `pattern` on this server (on a cluster node: its own keys only).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(redis::cmd("KEYS").arg(pattern)).await;
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `redis-server --cluster-enabled yes` nodes holding all slots, no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins a cluster, or returns `None` after saying why the test is skipped.
    pub async fn start_or_skip() -> Option<RedisCluster> {
        if !installed_or_skip("redis-server", "redis-server")
            || !installed_or_skip("redis-cli", "redis-tools")
        {
            return None;
        }
        Some(RedisCluster::start().await)
    }

    /// The nodes' URLs of the one cluster that tests keeping apart by key prefix share
    /// (a cluster takes seconds to form), or `None` after saying why the test is skipped.
    /// The first test that asks starts it; it is stopped when the test binary exits.
    pub async fn shared_or_skip() -> Option<Vec<String>> {
        if !installed_or_skip("redis-server", "redis-server")
            || !installed_or_skip("redis-cli", "redis-tools")
        {
            return None;
        }
        let shared = SHARED_CLUSTER
            .get_or_init(async || Mutex::new(Some(RedisCluster::start().await)))
            .await;
        let cluster = shared.lock().unwrap_or_else(|e| e.into_inner());
        Some(cluster.as_ref().expect("the shared cluster runs").urls())
    }

    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_node(true, None).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let create = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(PATIENCE, create)
            .await
            .expect("redis-cli --cluster create finishes in time")
            .expect("run redis-cli");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            eventually(
                format!("node {} reaching cluster_state:ok", node.port()),
                async || {
                    let info: String = node.query(redis::cmd("CLUSTER").arg("INFO")).await;
                    if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                        Ok(())
                    } else {
                        Err(info)
                    }
                },
            )
            .await;
        }
        cluster
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, to stop and restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The nodes' URLs, for `[store] cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// The cluster `RedisCluster::shared_or_skip` hands out; taken and dropped (its servers
/// killed, its temp dirs removed) when the test binary exits.
static SHARED_CLUSTER: tokio::sync::OnceCell<Mutex<Option<RedisCluster>>> =
    tokio::sync::OnceCell::const_new();

#[dtor::dtor(unsafe)]
fn stop_the_shared_cluster_at_exit() {
    if let Some(shared) = SHARED_CLUSTER.get() {
        drop(shared.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// A paused `redis-server` (`RedisServer::pause`), resumed when dropped.
pub struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, which: &str) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}
