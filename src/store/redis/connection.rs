//! The Redis connection the store and the queue use: one multiplexed connection
//! (`ConnectionManager`, which reconnects by itself) or a cluster connection opened on
//! first use and again after it fails, every operation bounded by `connect_timeout +
//! timeout`, timed and counted (`hookgate_store_*{op}`). Commands issued in one
//! scheduler tick leave in one pipelined write (`Batcher`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisFuture, ScriptInvocation};
use tokio::sync::Mutex;

use crate::config::{RedisSettings, RedisTarget};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// One multiplexed connection (or cluster connection), with every operation bounded,
/// timed and counted: the store's (which ingress' enqueue shares), and the Redis queue
/// workers' own (`queue::redis`).
pub(crate) struct RedisConnection {
    connection: Connection,
    metrics: Arc<Metrics>,
    /// The longest one operation may take, a (re)connection included: `connect_timeout +
    /// timeout`. The client's own timeouts do not cover waiting for a reconnection,
    /// which retries with backoff for seconds while Redis is down.
    deadline: Duration,
}

enum Connection {
    Single(Batcher),
    /// Opened on first use; dropped and reopened when it fails.
    Cluster(Box<ClusterSlot>),
}

struct ClusterSlot {
    client: ClusterClient,
    connection: Mutex<Option<ClusterConnection>>,
}

/// TLS that trusts exactly the CAs in `ca` (PEM), presenting no client certificate.
fn trusting(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

impl RedisConnection {
    /// Whether this is one Redis server (not a cluster): a script may then touch keys
    /// of any name, a cluster's only keys of one slot.
    pub fn single(&self) -> bool {
        matches!(self.connection, Connection::Single(_))
    }

    /// Sets up the connection without connecting: Redis may come up after hookgate.
    pub fn new(settings: &RedisSettings, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let connection = match &settings.target {
            RedisTarget::Single(info) => {
                let client = match &settings.ca {
                    Some(ca) => redis::Client::build_with_tls((**info).clone(), trusting(ca)),
                    None => redis::Client::open((**info).clone()),
                }
                .map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.timeout))
                    .set_connection_timeout(Some(settings.connect_timeout))
                    // One connection attempt per ask: `Link::send` asks again while Redis
                    // refuses. The client's own backoff outlasted the deadline, so a call
                    // to a Redis that was down ended as a timeout, its refusal unsaid.
                    .set_number_of_retries(0);
                Connection::Single(Batcher::start(
                    Link::new(client, config).map_err(unavailable)?,
                    settings.connect_timeout + settings.timeout,
                ))
            }
            RedisTarget::Cluster(nodes) => Connection::Cluster(Box::new(ClusterSlot {
                client: match &settings.ca {
                    Some(ca) => ClusterClient::builder(nodes.iter().cloned()).certs(trusting(ca)),
                    None => ClusterClient::builder(nodes.iter().cloned()),
                }
                .response_timeout(settings.timeout)
                .connection_timeout(settings.connect_timeout)
                // No retries by the client: it re-sends a command whose connection
                // dropped before the answer, which may have run, and the queue's
                // scripts must run once (an enqueue run twice stored a second stream
                // entry, attempted twice, under one 202). A redirect or a refused
                // node is then the caller's to handle: the slot map is refreshed for
                // the next command, the queue stores a delivery a node refused in
                // another partition (`script_or_unsent`), and the rest fails once.
                .retries(0)
                .build()
                .map_err(unavailable)?,
                connection: Mutex::new(None),
            })),
        };
        Ok(RedisConnection {
            connection,
            metrics,
            deadline: settings.connect_timeout + settings.timeout,
        })
    }

    /// Runs one round trip within `deadline`, timing it and counting a failure under
    /// `op`. A cluster connection that failed for good is dropped so the next call
    /// reconnects.
    pub async fn call<T>(
        &self,
        op: &str,
        request: impl AsyncFnOnce(&mut Conn<'_>) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let attempt = async {
            let mut conn = self.connection().await?;
            let result = request(&mut conn).await;
            if let (Err(e), Connection::Cluster(slot)) = (&result, &self.connection) {
                if e.is_unrecoverable_error() || e.is_connection_dropped() {
                    *slot.connection.lock().await = None;
                }
            }
            result.map_err(store_error)
        };
        let result = match &self.connection {
            // The batcher bounds each of its writes by the deadline: one timer per batch
            // rather than one per command.
            Connection::Single(_) => attempt.await,
            Connection::Cluster(_) => tokio::time::timeout(self.deadline, attempt)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
        };
        self.metrics.store_op(op, started.elapsed(), result.is_ok());
        if let Err(e) = &result {
            tracing::warn!(op, error = %e, "redis store operation failed");
        }
        result
    }

    async fn connection(&self) -> Result<Conn<'_>, StoreError> {
        match &self.connection {
            Connection::Single(batcher) => Ok(Conn::Single(batcher)),
            Connection::Cluster(slot) => {
                let mut held = slot.connection.lock().await;
                if let Some(conn) = held.as_ref() {
                    return Ok(Conn::Cluster(conn.clone()));
                }
                let conn = slot
                    .client
                    .get_async_connection()
                    .await
                    .map_err(store_error)?;
                *held = Some(conn.clone());
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// Runs a script by `EVALSHA` (loading it once when Redis does not know it yet).
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        op: &str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.call(op, async |conn| invocation.invoke_async(conn).await)
            .await
    }

    /// `script`, saying too whether a failure proves the script never ran: no
    /// connection could be made, the node refused it, or a node answered that another
    /// serves the slot (the redirect the client could not follow: its node is down) or
    /// that none does. A caller may then do the same elsewhere without doing it
    /// twice; after a timeout or a dropped connection it may have run, so it must not.
    pub async fn script_or_unsent<T: redis::FromRedisValue>(
        &self,
        op: &str,
        invocation: ScriptInvocation<'_>,
    ) -> Result<T, (StoreError, Unsent)> {
        let reached = AtomicBool::new(false);
        let refused = AtomicBool::new(false);
        self.call(op, async |conn| {
            reached.store(true, Ordering::Relaxed);
            let result = invocation.invoke_async(conn).await;
            if result.as_ref().is_err_and(never_ran) {
                refused.store(true, Ordering::Relaxed);
            }
            result
        })
        .await
        .map_err(|e| {
            let unsent = !reached.load(Ordering::Relaxed) || refused.load(Ordering::Relaxed);
            (e, Unsent(unsent))
        })
    }
}

/// Whether a failed call certainly did nothing on Redis (`script_or_unsent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsent(pub bool);

fn never_ran(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                )
        )
}

/// A connection for one request: the shared batcher, or a cheap clone of the cluster
/// connection.
pub enum Conn<'a> {
    Single(&'a Batcher),
    Cluster(ClusterConnection),
}

/// Where a cluster's redirect sends a command again: it proves the command did not run,
/// so it is followed once, as the client (told not to retry, see `RedisConnection::new`)
/// does not. `MOVED`: the slot moved for good, the client refreshed its map, the same
/// command goes to the new owner. `ASK`: the slot is migrating and the key is already on
/// the node named, sent there after `ASKING`. Not followed, a resharding answered 503 to
/// every new key of a migrating slot.
enum Redirect {
    Moved,
    Ask(String, u16),
}

fn redirect<T>(result: &redis::RedisResult<T>) -> Option<Redirect> {
    use redis::{ErrorKind, ServerErrorKind};
    let e = result.as_ref().err()?;
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => Some(Redirect::Moved),
        ErrorKind::Server(ServerErrorKind::Ask) => {
            let (node, _) = e.redirect_node()?;
            let (host, port) = node.rsplit_once(':')?;
            Some(Redirect::Ask(host.to_owned(), port.parse().ok()?))
        }
        _ => None,
    }
}

/// One command on a cluster, a redirect followed (`Redirect`).
async fn cluster_command(
    cluster: &mut ClusterConnection,
    cmd: &redis::Cmd,
) -> redis::RedisResult<redis::Value> {
    let result = cluster.req_packed_command(cmd).await;
    match redirect(&result) {
        None => result,
        Some(Redirect::Moved) => cluster.req_packed_command(cmd).await,
        Some(Redirect::Ask(host, port)) => {
            let mut replies = asking(cluster, &host, port, std::iter::once(cmd), 0, 1).await?;
            replies.pop().ok_or_else(|| {
                RedisError::from((redis::ErrorKind::Client, "no reply after ASKING"))
            })
        }
    }
}

/// `commands`, each after an `ASKING` (it holds for the next command only), sent to
/// `host:port`: the replies of the commands from `offset` on, `count` of them.
async fn asking(
    cluster: &mut ClusterConnection,
    host: &str,
    port: u16,
    commands: impl Iterator<Item = &redis::Cmd>,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut pipe = redis::pipe();
    let mut sent = 0;
    for cmd in commands {
        pipe.cmd("ASKING");
        pipe.add_command(cmd.clone());
        sent += 1;
    }
    let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    };
    let replies = cluster.route_pipeline(pipe, 0, 2 * sent, route).await?;
    replies
        .into_iter()
        .skip(1)
        .step_by(2)
        .skip(offset)
        .take(count)
        .map(redis::Value::extract_error)
        .collect()
}

impl Conn<'_> {
    /// Sends the command `build` makes, made as late as possible: when the batch that
    /// carries it is written, so that a group it carries (see `coalesce`) stays open to
    /// the requests of the same tick. A cluster connection has no batches: the tick's
    /// other requests run first, then the command is made and sent.
    pub(super) async fn send_built(
        &mut self,
        build: impl FnOnce() -> redis::Cmd + Send + 'static,
    ) -> redis::RedisResult<redis::Value> {
        match self {
            Conn::Single(batcher) => batcher.send_lazy(Box::new(build)).await,
            Conn::Cluster(connection) => {
                tokio::task::yield_now().await;
                cluster_command(connection, &build()).await
            }
        }
        // A server's error reply, as `query_async` would have turned it.
        .and_then(redis::Value::extract_error)
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.send(cmd),
            Conn::Cluster(c) => Box::pin(cluster_command(c, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => {
                let (link, deadline) = (c.link.clone(), c.deadline);
                Box::pin(async move {
                    link.send(deadline, |mut connection| async move {
                        connection
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    })
                    .await
                })
            }
            Conn::Cluster(c) => Box::pin(async move {
                let result = c.req_packed_commands(pipeline, offset, count).await;
                match redirect(&result) {
                    None => result,
                    Some(Redirect::Moved) => c.req_packed_commands(pipeline, offset, count).await,
                    Some(Redirect::Ask(host, port)) => {
                        asking(c, &host, port, pipeline.cmd_iter(), offset, count).await
                    }
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.link.current().1.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Most commands a batch carries; more wait for the next write.
const MAX_BATCH: usize = 64;

/// Sends the commands that requests issue in the same scheduler tick to Redis in one
/// pipelined write, each with its own reply. Without it the client writes commands one
/// at a time, and each write costs a system call here and a wake-up in Redis: two
/// thirds of what a request spent on its three round trips. Pipelines (already one
/// write) go straight to the connection. Every write, a reconnection it waits for
/// included, is bounded by `deadline`.
pub struct Batcher {
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    link: Arc<Link>,
    deadline: Duration,
}

/// The one connection to a single Redis, replaced by a fresh one when a call on it
/// times out. redis-rs reconnects by itself once a connection broke, but not when it
/// only went silent (a failover behind a virtual IP or a DNS name, a middlebox that
/// drops the packets): every call then timed out, 503 after 503, until TCP gave up on
/// the socket, about 15 minutes later, while a new connection would have been answered
/// at once. A call Redis refused never ran, so it is asked again, on the connection the
/// client is reopening, for half the deadline (redis-rs keeps the refusal of its last
/// reconnect attempt while Redis is down, and handed it to the first call after Redis
/// was back).
struct Link {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection, and how many times it was replaced: of the calls that timed out
    /// on one connection, only the first replaces it.
    current: std::sync::Mutex<(u64, ConnectionManager)>,
    /// Whether a call was sent since the idle watch last looked (`watch_while_idle`).
    used: AtomicBool,
}

/// How often an idle connection is asked a `PING` (see `watch_while_idle`), and the
/// longest pause between pings while they fail.
const IDLE_PING: Duration = Duration::from_secs(1);
const IDLE_PING_MAX: Duration = Duration::from_secs(8);

/// Pings the connection while nothing else uses it, until the link is gone. A connection
/// that broke while idle (Redis restarted) is only found broken by the next call sent on
/// it, which fails as broken and cannot be asked again (it may have run): the first
/// delivery after every Redis restart was answered 503, and `/readyz` said not ready,
/// however long Redis had been back. The failed ping makes redis-rs reconnect before a
/// delivery needs the connection. A ping is one try, never a replacement nor a warning
/// (Redis paused or down is for the calls that need it to say), and pings back off while
/// they fail.
async fn watch_while_idle(link: std::sync::Weak<Link>, deadline: Duration) {
    let mut pause = IDLE_PING;
    loop {
        tokio::time::sleep(pause).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        if link.used.swap(false, Ordering::Relaxed) {
            pause = IDLE_PING;
            continue;
        }
        let (_, mut connection) = link.current();
        let ping = redis::cmd("PING");
        let answered = within(deadline, connection.req_packed_command(&ping)).await;
        pause = match answered {
            Ok(_) => IDLE_PING,
            Err(_) => (pause * 2).min(IDLE_PING_MAX),
        };
    }
}

impl Link {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> redis::RedisResult<Link> {
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Link {
            client,
            config,
            current: std::sync::Mutex::new((0, connection)),
            used: AtomicBool::new(false),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => {
                tracing::warn!("redis: a call timed out; the connection is replaced by a new one");
                *current = (generation + 1, fresh);
            }
            Err(e) => tracing::warn!(error = %e, "redis: cannot open a new connection"),
        }
    }

    /// `request` on the current connection within `deadline`, asked again while Redis
    /// refuses connections, for half the deadline (a refused call never ran; a Redis
    /// restarting meanwhile still answers it, and one that stays down fails as refused,
    /// not as a timeout, early enough that a caller asking once more, as a settle does,
    /// still ends within about the deadline), the connection replaced after a timeout
    /// (see above).
    async fn send<T, F>(
        &self,
        deadline: Duration,
        request: impl Fn(ConnectionManager) -> F,
    ) -> redis::RedisResult<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = tokio::time::Instant::now();
        self.used.store(true, Ordering::Relaxed);
        // The first refusal may be the one redis-rs kept from before Redis came back: the
        // call is asked again at once, then at pauses doubling from 50 to 500 ms.
        let mut pause = Duration::ZERO;
        loop {
            let (generation, connection) = self.current();
            let left = deadline.saturating_sub(started.elapsed());
            let result = within(left, request(connection)).await;
            match &result {
                Err(e) if e.is_connection_refusal() => {
                    if started.elapsed() + pause >= deadline / 2 {
                        return result;
                    }
                    tokio::time::sleep(pause).await;
                    pause =
                        (pause * 2).clamp(Duration::from_millis(50), Duration::from_millis(500));
                }
                Err(e) if e.is_timeout() => {
                    self.replace(generation);
                    return result;
                }
                _ => return result,
            }
        }
    }
}

type Queued = (
    Command,
    tokio::sync::oneshot::Sender<redis::RedisResult<redis::Value>>,
);

/// A command to batch, or what makes it when its batch is written.
enum Command {
    Ready(redis::Cmd),
    Built(Box<dyn FnOnce() -> redis::Cmd + Send>),
}

impl Batcher {
    /// Starts the batching task; it ends when the last handle is dropped.
    fn start(link: Link, deadline: Duration) -> Batcher {
        let (queue, commands) = tokio::sync::mpsc::unbounded_channel();
        let link = Arc::new(link);
        tokio::spawn(batch_forever(commands, link.clone(), deadline));
        tokio::spawn(watch_while_idle(Arc::downgrade(&link), deadline));
        Batcher {
            queue,
            link,
            deadline,
        }
    }

    fn send<'a>(&'a self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        self.enqueue(Command::Ready(cmd.clone()))
    }

    fn send_lazy(
        &self,
        build: Box<dyn FnOnce() -> redis::Cmd + Send>,
    ) -> RedisFuture<'static, redis::Value> {
        self.enqueue(Command::Built(build))
    }

    fn enqueue(&self, command: Command) -> RedisFuture<'static, redis::Value> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = self.queue.send((command, reply));
        Box::pin(async move {
            queued.map_err(|_| batcher_gone())?;
            answer.await.map_err(|_| batcher_gone())?
        })
    }
}

fn batcher_gone() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "the Redis batching task stopped"))
}

/// `request`, or a timeout error (one `is_timeout` recognises) once `deadline` passes.
async fn within<T>(
    deadline: Duration,
    request: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(deadline, request)
        .await
        .unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the Redis operation timed out",
            )))
        })
}

async fn batch_forever(
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    link: Arc<Link>,
    deadline: Duration,
) {
    while let Some(first) = commands.recv().await {
        // Let the other requests that are ready run first and queue their commands.
        tokio::task::yield_now().await;
        // Lazy commands are made now, as the batch is written: what they carry is complete.
        let made = |(command, reply): Queued| match command {
            Command::Ready(cmd) => (cmd, reply),
            Command::Built(build) => (build(), reply),
        };
        let mut batch = vec![made(first)];
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(queued) => batch.push(made(queued)),
                Err(_) => break,
            }
        }
        // Sent concurrently: the next batch need not wait for this one's replies.
        let link = link.clone();
        tokio::spawn(async move {
            if batch.len() == 1 {
                let (cmd, reply) = batch.pop().expect("one command");
                let cmd = &cmd;
                let sent = link
                    .send(deadline, |mut connection| async move {
                        connection.req_packed_command(cmd).await
                    })
                    .await;
                let _ = reply.send(sent);
                return;
            }
            let (cmds, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let pipe = &pipe;
            let results = link
                .send(deadline, |mut connection| async move {
                    pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut connection)
                        .await
                })
                .await;
            match results {
                Ok(results) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Ok(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(RedisError::from((
                            redis::ErrorKind::Client,
                            "a batched reply count did not match",
                        ))));
                    }
                }
                // Every command of the batch fails as the batch did (a timeout stays a
                // timeout).
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// A duration as Redis' `PX` and script arguments take it: whole milliseconds, at
/// least 1 (`PX 0` is an error).
pub(crate) fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_or_a_redirect_proves_a_call_never_ran() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(never_ran(&io(std::io::ErrorKind::ConnectionRefused)));
        // The request may have been sent before the connection broke or the time ran out.
        assert!(!never_ran(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(!never_ran(&io(std::io::ErrorKind::TimedOut)));
        let reply = |kind| RedisError::from((redis::ErrorKind::Server(kind), "reply"));
        assert!(never_ran(&reply(redis::ServerErrorKind::Moved)));
        assert!(never_ran(&reply(redis::ServerErrorKind::ClusterDown)));
        assert!(!never_ran(&reply(redis::ServerErrorKind::ResponseError)));
    }
}
