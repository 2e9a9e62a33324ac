//! Shared statements under load: resolutions that wait for a connection go to
//! the database together.
//!
//! A resolution joins its pool's queue. While fewer than
//! [`MAX_STATEMENTS_IN_FLIGHT`] *drainers* run (and fewer than the pool's
//! `max_connections`), it starts one (a task that takes a pooled connection);
//! otherwise a running drainer will take it. A drainer with a connection takes
//! everything queued at that moment (up to [`MAX_BATCH`]), runs one statement
//! for those instance IDs, hands each waiter its own rows, and goes again until
//! the queue is empty, then gives its connection back.
//!
//! What this guarantees:
//! - **No timer.** Nothing waits to collect company: at low load a drainer
//!   finds only the request that started it and runs [`RESOLVE_SQL`] for it
//!   alone, as without a queue. Batches form only while every drainer is busy.
//! - **No cached answer.** A waiter is taken from the queue before its statement
//!   is sent, so every answer comes from a statement that started after the
//!   request arrived; one that arrives while a statement is in flight waits for
//!   the next. A rebuild committed before a request arrives is always seen.
//! - **Bounded.** At most [`MAX_STATEMENTS_IN_FLIGHT`] drainers and [`MAX_BATCH`] IDs per
//!   statement. A waiter not taken within the pool's acquire timeout leaves the
//!   queue with [`sqlx::Error::PoolTimedOut`] (the API's 503), as it would
//!   have waiting for a connection of its own.
//! - **Cancellation-safe.** Drainers are tasks of their own, so a request that
//!   goes away (client gone, request timeout) cannot strand the others it
//!   would have carried; its rows are simply not delivered.
//! - A connection found dead (I/O error, or the server's FATAL `57P…`
//!   "terminating connection") is closed and its batch queued again
//!   at the front, up to three attempts per request, as before batching; the
//!   drainer then pings each connection it takes before using it, until one
//!   answers, so the retries do not land on the pool's other cut connections.
//! - **One request's failure is its own.** A shared statement that fails for
//!   any other reason is run again for each of its instance IDs alone, so a
//!   bad ID (one PostgreSQL refuses) fails only the requests that carry it.
//!
//! The queue belongs to the pool, not to a caller: every handle to one pool
//! shares it, so callers pass the pool as before. Queues live in a
//! process-wide map keyed by the address of the pool's shared state, and only
//! while a waiter or a drainer of that pool exists; the entry holds a handle
//! to the pool, so the address cannot be reused meanwhile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;

use crate::db::resolve::{fetch_many, fetch_one, Candidate};

/// Most instance IDs one statement carries; more waiters go in the next one.
pub const MAX_BATCH: usize = 64;

/// Most drainers one pool runs at once, so most resolution statements in
/// flight, whatever the pool's size: one statement runs while the next batch
/// forms. More drainers only cut the same waiting requests into smaller
/// statements, and a statement's fixed cost (protocol, a backend's wake-up,
/// scheduling) is most of what a small one costs PostgreSQL.
///
/// Measured on 2 cores (`idgate-bench ceiling`, one run, a pool of 10, genuine
/// AWS authentications at 256 clients): with up to 10 drainers 10,139
/// authentications/s and 55.6 µs of PostgreSQL CPU per authentication; with 4,
/// 14,088/s and 31.1 µs; with 2, 16,471/s and 23.5 µs; with 1, 17,051/s and
/// 16.4 µs. Two keep a statement's round trip hidden behind the other's when
/// the database is remote, for little of one's cost; a lone request still
/// starts a drainer at once, so the idle path is unchanged.
pub const MAX_STATEMENTS_IN_FLIGHT: u32 = 2;

/// Attempts per request when connections turn out to be dead.
const ATTEMPTS: u32 = 3;

/// What a waiter receives: its candidates in query order and how long it
/// waited for its statement to start, or the error that statement (or the
/// wait for a connection) ended with.
type Reply = Result<(Vec<Candidate>, Duration), SharedError>;

/// One request in a queue.
struct Waiter {
    /// Names this waiter in its queue, so that it can take itself out.
    seq: u64,
    instance_id: String,
    arrived: Instant,
    attempts: u32,
    reply: oneshot::Sender<Reply>,
}

/// One pool's queue.
struct Queue {
    /// Keeps the pool (and so the address [`pool_key`] names it by) alive
    /// while its queue exists, even if every caller has gone away.
    pool: PgPool,
    waiting: VecDeque<Waiter>,
    /// Drainer tasks running for this pool.
    drainers: u32,
    next_seq: u64,
}

/// Every pool's queue, keyed by [`pool_key`].
fn queues() -> MutexGuard<'static, HashMap<usize, Queue>> {
    static QUEUES: OnceLock<Mutex<HashMap<usize, Queue>>> = OnceLock::new();
    // No code panics while holding the lock; if some did, the map is still whole.
    QUEUES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Identifies a pool: the address of the state all its handles share.
fn pool_key(pool: &PgPool) -> usize {
    std::ptr::from_ref(pool.options()) as usize
}

/// The candidates of `instance_id` in query order, from a statement that
/// starts after this call, shared with whatever else waits for one; also how
/// long this waited for that statement to start.
pub async fn candidates(pool: &PgPool, instance_id: &str) -> Result<(Vec<Candidate>, Duration), sqlx::Error> {
    let key = pool_key(pool);
    let (reply, answer) = oneshot::channel();
    let (seq, start_drainer) = {
        let mut all = queues();
        let queue = all.entry(key).or_insert_with(|| Queue {
            pool: pool.clone(),
            waiting: VecDeque::new(),
            drainers: 0,
            next_seq: 0,
        });
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.waiting.push_back(Waiter {
            seq,
            instance_id: instance_id.to_string(),
            arrived: Instant::now(),
            attempts: 0,
            reply,
        });
        let start = queue.drainers < pool.options().get_max_connections().clamp(1, MAX_STATEMENTS_IN_FLIGHT);
        if start {
            queue.drainers += 1;
        }
        (seq, start)
    };
    if start_drainer {
        tokio::spawn(drain(pool.clone()));
    }
    let mut answer = answer;
    let reply = match tokio::time::timeout(pool.options().get_acquire_timeout(), &mut answer).await {
        Ok(reply) => reply,
        Err(_) => {
            // Not taken within the acquire timeout: leave, unless a statement
            // has just taken this waiter (then its answer is on the way).
            if leave(key, seq) {
                return Err(sqlx::Error::PoolTimedOut);
            }
            answer.await
        }
    };
    match reply {
        Ok(reply) => reply.map_err(SharedError::into_error),
        // The drainer died without answering (it panicked).
        Err(_) => Err(sqlx::Error::WorkerCrashed),
    }
}

/// Takes waiter `seq` out of its queue; false if a drainer already took it.
fn leave(key: usize, seq: u64) -> bool {
    let mut all = queues();
    let Some(queue) = all.get_mut(&key) else {
        return false;
    };
    let Some(at) = queue.waiting.iter().position(|w| w.seq == seq) else {
        return false;
    };
    queue.waiting.remove(at);
    forget_if_idle(&mut all, key);
    true
}

fn forget_if_idle(all: &mut HashMap<usize, Queue>, key: usize) {
    if all.get(&key).is_some_and(|q| q.drainers == 0 && q.waiting.is_empty()) {
        all.remove(&key);
    }
}

/// Takes up to [`MAX_BATCH`] waiters whose requests are still there. With
/// none left, the drainer ends: counted out here, under the same lock that
/// queues new waiters, so no waiter is left without a drainer.
fn take(key: usize) -> Option<Vec<Waiter>> {
    let mut all = queues();
    let queue = all.get_mut(&key).expect("a running drainer keeps its queue");
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH {
        let Some(waiter) = queue.waiting.pop_front() else {
            break;
        };
        if !waiter.reply.is_closed() {
            batch.push(waiter);
        }
    }
    if batch.is_empty() {
        queue.drainers -= 1;
        forget_if_idle(&mut all, key);
        return None;
    }
    Some(batch)
}

/// Ends the drainer if nothing is queued (see [`take`]).
fn end_if_empty(key: usize) -> bool {
    let mut all = queues();
    let queue = all.get_mut(&key).expect("a running drainer keeps its queue");
    if !queue.waiting.is_empty() {
        return false;
    }
    queue.drainers -= 1;
    forget_if_idle(&mut all, key);
    true
}

/// Counts a drainer out if it ends without doing so itself (a panic, or its
/// runtime shutting down), and starts another if waiters remain, so that the
/// queue never stalls.
struct Running {
    key: usize,
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut all = queues();
        let Some(queue) = all.get_mut(&self.key) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !queue.waiting.is_empty() => {
                // This drainer's place passes to a new one.
                let pool = queue.pool.clone();
                drop(all);
                runtime.spawn(drain(pool));
            }
            _ => {
                queue.drainers -= 1;
                forget_if_idle(&mut all, self.key);
            }
        }
    }
}

/// One drainer: a connection, then batches until the queue is empty.
async fn drain(pool: PgPool) {
    let key = pool_key(&pool);
    let mut running = Running { key, ended: false };
    // Connections found dead in a row (the batch's own, then failed pings):
    // while non-zero, a connection is pinged before a batch spends an attempt
    // on it. The inner loop leaves a connection only when it died.
    let mut lost = 0u32;
    loop {
        let asked = Instant::now();
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                // Those queued before this attempt began have waited as long as
                // the pool lets anyone wait (or the pool is closed).
                let failed = take_older_than(key, asked);
                let error = SharedError::new(e);
                for waiter in failed {
                    let _ = waiter.reply.send(Err(error.clone()));
                }
                if end_if_empty(key) {
                    running.ended = true;
                    return;
                }
                continue;
            }
        };
        // One dead connection is seldom alone: a proxy that marks a server
        // down (HAProxy's `shutdown-sessions`, a Patroni promotion) or a
        // restarted server cuts every pooled connection at once, and the
        // pool's idle ones look alive until used. Without this check the
        // retries of one batch could each land on another cut connection and
        // exhaust their attempts. It costs one round trip, only after a loss,
        // and at most the pool's size of them before trusting the pool again.
        if lost > 0 && lost <= pool.options().get_max_connections() {
            use sqlx::Connection;
            if conn.ping().await.is_err() {
                conn.close_on_drop();
                lost += 1;
                continue;
            }
        }
        loop {
            let Some(batch) = take(key) else {
                running.ended = true;
                return;
            };
            if !run(&mut conn, batch, key).await {
                // Dead connection: do not return it to the pool.
                conn.close_on_drop();
                lost = 1;
                break;
            }
        }
    }
}

fn take_older_than(key: usize, asked: Instant) -> Vec<Waiter> {
    let mut all = queues();
    let queue = all.get_mut(&key).expect("a running drainer keeps its queue");
    let (old, young): (VecDeque<Waiter>, VecDeque<Waiter>) = queue.waiting.drain(..).partition(|w| w.arrived <= asked);
    queue.waiting = young;
    old.into()
}

/// Runs one statement for `batch` and answers each waiter; false if the
/// connection is dead (the batch is then queued again, or failed after
/// [`ATTEMPTS`]). A shared statement that fails otherwise is run again for
/// each instance ID alone, so one request's bad ID fails only its own.
async fn run(conn: &mut PoolConnection<Postgres>, batch: Vec<Waiter>, key: usize) -> bool {
    let shared = !one_instance(&batch);
    match run_once(conn, batch, key).await {
        Outcome::Answered => true,
        Outcome::ConnectionLost => false,
        Outcome::Failed(batch, e) if shared => {
            tracing::debug!(error = %e, waiting = batch.len(), "a shared resolution failed; resolving its instance IDs one by one");
            let mut by_id: BTreeMap<String, Vec<Waiter>> = BTreeMap::new();
            for waiter in batch {
                by_id.entry(waiter.instance_id.clone()).or_default().push(waiter);
            }
            let mut groups = by_id.into_values();
            while let Some(group) = groups.next() {
                match run_once(conn, group, key).await {
                    Outcome::Answered => {}
                    Outcome::Failed(group, e) => fail(group, SharedError::new(e)),
                    Outcome::ConnectionLost => {
                        // The rest go back to the queue with the lost batch.
                        requeue(key, groups.flatten().collect());
                        return false;
                    }
                }
            }
            true
        }
        Outcome::Failed(batch, e) => {
            fail(batch, SharedError::new(e));
            true
        }
    }
}

/// Whether every waiter of `batch` asks for the same instance ID: the
/// single-ID statement answers them, and nobody else's ID can fail it.
fn one_instance(batch: &[Waiter]) -> bool {
    batch.iter().all(|w| w.instance_id == batch[0].instance_id)
}

/// Whether `e` means the connection is gone, so the statement may run again
/// on another: an I/O error (the socket closed under it: a proxy cut it), or
/// the server's FATAL "terminating connection" (SQLSTATE class 57P: an
/// administrator's `pg_terminate_backend`, a shutdown, a crashed sibling),
/// after which the server closes the connection.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// How one statement for one batch ended.
enum Outcome {
    /// Every waiter has its rows.
    Answered,
    /// The connection is dead: the batch was queued again (or failed after
    /// [`ATTEMPTS`]).
    ConnectionLost,
    /// The statement failed otherwise; nobody was answered yet.
    Failed(Vec<Waiter>, sqlx::Error),
}

fn fail(batch: Vec<Waiter>, error: SharedError) {
    for waiter in batch {
        let _ = waiter.reply.send(Err(error.clone()));
    }
}

/// Puts `waiters` back at the front of the queue, in their order.
fn requeue(key: usize, waiters: Vec<Waiter>) {
    let mut all = queues();
    let queue = all.get_mut(&key).expect("a running drainer keeps its queue");
    for waiter in waiters.into_iter().rev() {
        queue.waiting.push_front(waiter);
    }
}

/// Runs one statement for `batch` and answers each waiter if it succeeds.
async fn run_once(conn: &mut PoolConnection<Postgres>, mut batch: Vec<Waiter>, key: usize) -> Outcome {
    let started = Instant::now();
    let rows = if one_instance(&batch) {
        // One instance ID: the single-ID statement, as for a lone request.
        fetch_one(conn, &batch[0].instance_id)
            .await
            .map(|rows| HashMap::from([(batch[0].instance_id.as_str(), rows)]))
    } else {
        let mut ids: Vec<&str> = batch.iter().map(|w| w.instance_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        fetch_many(conn, &ids).await.map(|rows| {
            let mut by_id: HashMap<&str, Vec<Candidate>> = ids.iter().map(|id| (*id, Vec::new())).collect();
            for (id, candidate) in rows {
                if let Some(list) = by_id.get_mut(id.as_str()) {
                    list.push(candidate);
                }
            }
            by_id
        })
    };
    match rows {
        Ok(mut by_id) => {
            let mut count: HashMap<&str, usize> = HashMap::new();
            for waiter in &batch {
                *count.entry(waiter.instance_id.as_str()).or_default() += 1;
            }
            let mut replies = Vec::with_capacity(batch.len());
            for waiter in &batch {
                let id = waiter.instance_id.as_str();
                let left = count.get_mut(id).expect("counted");
                *left -= 1;
                // The last waiter for an ID takes the rows; the others a copy.
                let rows = if *left == 0 {
                    by_id.remove(id).unwrap_or_default()
                } else {
                    by_id.get(id).cloned().unwrap_or_default()
                };
                replies.push(Ok((rows, started.saturating_duration_since(waiter.arrived))));
            }
            drop(by_id);
            for (waiter, reply) in batch.into_iter().zip(replies) {
                let _ = waiter.reply.send(reply);
            }
            Outcome::Answered
        }
        Err(e) if connection_lost(&e) => {
            tracing::debug!(error = %e, waiting = batch.len(), "database connection lost; retrying the resolutions");
            let error = SharedError::new(e);
            for waiter in &mut batch {
                waiter.attempts += 1;
            }
            let (retry, failed): (Vec<Waiter>, Vec<Waiter>) = batch.into_iter().partition(|w| w.attempts < ATTEMPTS);
            fail(failed, error);
            requeue(key, retry);
            Outcome::ConnectionLost
        }
        Err(e) => Outcome::Failed(batch, e),
    }
}

/// One statement's error, delivered to every waiter of its batch.
#[derive(Debug, Clone)]
struct SharedError(Arc<sqlx::Error>);

impl SharedError {
    fn new(e: sqlx::Error) -> Self {
        SharedError(Arc::new(e))
    }

    /// The error for one waiter: the original for the last one, a copy that
    /// the API classifies the same way (503 or 500, same text) for the others.
    fn into_error(self) -> sqlx::Error {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| copy_error(&shared))
    }
}

fn copy_error(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::Tls(tls) => sqlx::Error::Tls(tls.to_string().into()),
        sqlx::Error::Database(db) => sqlx::Error::Database(Box::new(CopiedDatabaseError {
            message: db.message().to_string(),
            code: db.code().map(|c| c.into_owned()),
        })),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// A server error's message and SQLSTATE, for the second and later waiters
/// of a batch whose statement failed.
#[derive(Debug)]
struct CopiedDatabaseError {
    message: String,
    code: Option<String>,
}

impl std::fmt::Display for CopiedDatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CopiedDatabaseError {}

impl DatabaseError for CopiedDatabaseError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.as_deref().map(std::borrow::Cow::Borrowed)
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}
