//! The embedded store: one SQLite file in WAL mode.
//!
//! One worker thread owns the writing connection and runs every write; async callers
//! send it closures over a bounded channel and await the answer. That single writer is
//! what makes ingest fast *and* durable: the worker takes every operation waiting in the
//! channel, runs each in its own savepoint, and commits them together with one fsync
//! (`synchronous = FULL`), answering no caller before that commit. Under load one
//! commit carries many batches; alone, a batch costs one commit. Being the only
//! writer, it also serialises every decision, which is how the budget holds.
//!
//! Reads never queue behind writes: they run on read-only connections of their own
//! (WAL lets readers and the writer work at once), on blocking threads. An in-memory
//! database (tests) has no second connection: its reads go through the writer.

mod dashboard;
mod schema;
mod trust;
mod tx;

use super::decide::{flush_alerts, Decider};
use super::outbox::{AlertKind, Claim, Occurrence};
use super::{
    cursor_params, fetch_limit, severity_of, ActionFilter, ActionRecord, Cursor, Decided,
    FindingRecord, Finish, FleetCounts, HostFilter, HostRecord, HostSort, ImageRecord,
    IngestOutcome, IngestRecord, Outcome, Page, PageRequest, Policy, Request, Store, StoreError,
    StoreResult, TokenRecord, Transition,
};
use super::{Admission, Binding, Enrolled};
use async_trait::async_trait;
use driftwatch_protocol::wire::HostState;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tracing::error;
use tx::SqliteTx;

/// Operations waiting for the worker. Enough for a burst of thousands of agents; a full
/// queue makes callers wait (back-pressure on ingest) instead of growing memory.
const QUEUE: usize = 4096;
/// Most operations committed together: bounds the latency one commit adds to the first.
const MAX_GROUP: usize = 512;
/// Read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 4;

type Finisher = Box<dyn FnOnce(StoreResult<()>) + Send>;
type Operation = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;

/// The SQLite store.
pub struct SqliteStore {
    operations: SyncSender<Operation>,
    /// Where read connections open; `None` for an in-memory database.
    path: Option<PathBuf>,
    /// Idle read connections.
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Dropping it stops the checkpointer (file databases only).
    _checkpointer: Option<SyncSender<()>>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn db_error(err: rusqlite::Error) -> StoreError {
    match err {
        rusqlite::Error::FromSqlConversionFailure(_, _, cause) => {
            match cause.downcast::<StoreError>() {
                Ok(store_error) => *store_error,
                Err(other) => StoreError::Corrupt(other.to_string()),
            }
        }
        other => StoreError::Database(other.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let connection = Connection::open(path).map_err(db_error)?;
        // The writer never checkpoints (wal_autocheckpoint = 0): a checkpoint copies
        // the log into the database and fsyncs it, which on a grown database took the
        // one writer away from ingest for 100+ ms. A thread of its own does it,
        // passively, beside the writer (WAL lets both run at once). A 32 MiB page
        // cache instead of SQLite's 2 MiB keeps the hosts and findings indexes of a
        // fleet in memory. (Checkpointing is this process's own business: a SQLite
        // file has one collector, so it needs no lease.)
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = ON;
                 PRAGMA busy_timeout = 5000;
                 PRAGMA wal_autocheckpoint = 0;
                 PRAGMA cache_size = -32768;",
            )
            .map_err(db_error)?;
        let mut store = SqliteStore::start(connection, Some(path.to_path_buf()))?;
        store._checkpointer = Some(checkpointer(path)?);
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_memory() -> StoreResult<SqliteStore> {
        SqliteStore::start(Connection::open_in_memory().map_err(db_error)?, None)
    }

    fn start(mut connection: Connection, path: Option<PathBuf>) -> StoreResult<SqliteStore> {
        schema::migrate(&mut connection)?;
        let (operations, queue) = sync_channel::<Operation>(QUEUE);
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || work(&connection, &queue))
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            operations,
            path,
            readers: Arc::new(Mutex::new(Vec::new())),
            _checkpointer: None,
        })
    }

    /// Runs `operation` in the worker, committed before the answer arrives.
    async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (answer, answered) = oneshot::channel();
        let boxed: Operation = Box::new(move |connection| {
            let result = operation(connection);
            let ok = result.is_ok();
            let finisher: Finisher = Box::new(move |commit| {
                let _ = answer.send(commit.and(result));
            });
            (ok, finisher)
        });
        let mut pending = boxed;
        loop {
            match self.operations.try_send(pending) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    // Back-pressure without blocking a runtime thread.
                    pending = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
            }
        }
        answered.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on a read-only connection of its own (never behind the writer); an
    /// in-memory database reads through the writer.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let Some(path) = self.path.clone() else {
            return self.run(read).await;
        };
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let idle = readers.lock().ok().and_then(|mut idle| idle.pop());
            let connection = match idle {
                Some(connection) => connection,
                None => open_reader(&path)?,
            };
            // A snapshot per read: one statement or several, consistent.
            connection.execute_batch("BEGIN").map_err(db_error)?;
            let result = read(&connection);
            let _ = connection.execute_batch("COMMIT");
            if let Ok(mut idle) = readers.lock() {
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(connection);
                }
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_error)?;
    connection
        .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA cache_size = -16384;")
        .map_err(db_error)?;
    Ok(connection)
}

/// Starts the thread that checkpoints the WAL of the database at `path` every
/// [`CHECKPOINT_EVERY`], until the returned sender is dropped.
fn checkpointer(path: &Path) -> StoreResult<SyncSender<()>> {
    let connection = Connection::open(path).map_err(db_error)?;
    connection
        .execute_batch("PRAGMA busy_timeout = 5000;")
        .map_err(db_error)?;
    let (stop, stopped) = sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            // Until the store is dropped (the sender with it).
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                // PASSIVE: copies what it can without waiting for the writer.
                let done = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                if let Err(err) = done {
                    error!(error = %err, "WAL checkpoint failed; retrying.");
                }
            }
        })
        .map_err(|e| StoreError::Database(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(stop)
}

/// The worker: group commit of whatever is waiting.
fn work(connection: &Connection, queue: &Receiver<Operation>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if let Err(err) = connection.execute_batch("BEGIN IMMEDIATE") {
            let message = db_error(err).to_string();
            for operation in group {
                let (_, finish) = operation(connection);
                finish(Err(StoreError::Database(message.clone())));
            }
            continue;
        }
        let mut finishers = Vec::with_capacity(group.len());
        for operation in group {
            // A savepoint per operation: one failing batch does not take the others
            // of its group down with it.
            let saved = connection.execute_batch("SAVEPOINT op").is_ok();
            let (ok, finish) = operation(connection);
            if saved {
                let end = if ok {
                    "RELEASE op"
                } else {
                    "ROLLBACK TO op; RELEASE op"
                };
                if let Err(err) = connection.execute_batch(end) {
                    error!(error = %err, "Savepoint failed.");
                }
            }
            finishers.push(finish);
        }
        let commit = connection.execute_batch("COMMIT").map_err(db_error);
        if commit.is_err() {
            let _ = connection.execute_batch("ROLLBACK");
        }
        for finish in finishers {
            finish(match &commit {
                Ok(()) => Ok(()),
                Err(err) => Err(StoreError::Database(err.to_string())),
            });
        }
    }
}

const HOST_COLUMNS: &str = "host_id, hostname, image_id, baseline_digest, state, state_since,
    first_seen, last_seen, last_heartbeat, heartbeat_interval, agent_version, mark_reason,
    marked_at, hold, hold_reason, unmarked_at, revoked, n_critical, n_high, n_medium, n_low,
    findings_dropped";

fn host_from_row(row: &Row<'_>) -> rusqlite::Result<HostRecord> {
    let state: String = row.get(4)?;
    let tally = |i: usize| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
    let hold: Option<String> = row.get(13)?;
    let hold = hold
        .map(|name| super::Hold::parse(&name))
        .transpose()
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e))
        })?;
    Ok(HostRecord {
        host_id: row.get(0)?,
        hostname: row.get(1)?,
        image_id: row.get(2)?,
        baseline_digest: row.get(3)?,
        state: tx::state_of(&state)?,
        state_since_ms: row.get(5)?,
        first_seen_ms: row.get(6)?,
        last_seen_ms: row.get(7)?,
        last_heartbeat_ms: row.get(8)?,
        heartbeat_interval_secs: tally(9)?,
        agent_version: row.get(10)?,
        mark_reason: row.get(11)?,
        marked_at_ms: row.get(12)?,
        hold,
        hold_reason: row.get(14)?,
        unmarked_at_ms: row.get(15)?,
        revoked: row.get::<_, i64>(16)? != 0,
        findings_by_severity: [tally(17)?, tally(18)?, tally(19)?, tally(20)?],
        findings_dropped: tally(21)?,
    })
}

fn finding_from_row(row: &Row<'_>) -> rusqlite::Result<FindingRecord> {
    let json: String = row.get(5)?;
    let corrupt = |e: StoreError| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Integer, Box::new(e))
    };
    Ok(FindingRecord {
        host_id: row.get(0)?,
        key: row.get(1)?,
        kind: row.get(2)?,
        severity: severity_of(row.get(3)?).map_err(corrupt)?,
        subject: row.get(4)?,
        finding: serde_json::from_str(&json)
            .map_err(|e| corrupt(StoreError::Corrupt(format!("a stored finding: {e}"))))?,
        first_seen_ms: row.get(6)?,
        last_seen_ms: row.get(7)?,
    })
}

const FINDING_COLUMNS: &str =
    "host_id, key, kind, severity, subject, finding, first_seen, last_seen";

fn collect<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = connection.prepare_cached(sql).map_err(db_error)?;
    let rows = statement.query_map(params, map).map_err(db_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
}

/// The one number a `SELECT count(…)` answers.
fn count(connection: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<u64> {
    connection
        .query_row(sql, params, |row| row.get::<_, Option<i64>>(0))
        .map(|n| n.unwrap_or(0).max(0) as u64)
        .map_err(db_error)
}

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        image_id: row.get(0)?,
        baseline_digest: row.get(1)?,
        signer: row.get(2)?,
        entries: row.get::<_, i64>(3)?.max(0) as u64,
        created_at: row.get(4)?,
        registered_ms: row.get(5)?,
    })
}

const IMAGE_COLUMNS: &str = "image_id, baseline_digest, signer, entries, created_at, registered";

fn action_from_row(row: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    let outcome: String = row.get(6)?;
    Ok(ActionRecord {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        host_id: row.get(2)?,
        image_id: row.get(3)?,
        action: row.get(4)?,
        target: row.get(5)?,
        outcome: Outcome::parse(&outcome).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?,
        detail: row.get(7)?,
    })
}

/// Polls a decision flow to completion: against SQLite it never suspends.
fn complete<T>(flow: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
    futures_executor::block_on(flow)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        record: IngestRecord,
        policy: Arc<Policy>,
    ) -> StoreResult<IngestOutcome> {
        self.run(move |c| {
            let (accepted, duplicates, new_findings, first_contact) =
                tx::store_batch(c, &record, policy.max_findings_per_host)?;
            let host = tx::require_host(c, &record.host_id)?;
            let mut tx = SqliteTx(c);
            let decided = complete(
                Decider::new(&mut tx, &policy, record.received_ms)
                    .after_ingest(host, &new_findings),
            )?;
            Ok(IngestOutcome {
                accepted,
                duplicates,
                new_findings,
                host: decided.host,
                first_contact,
                budget_stopped: decided.budget_stopped,
            })
        })
        .await
    }

    async fn decide(
        &self,
        host_id: &str,
        request: Request,
        policy: Arc<Policy>,
    ) -> StoreResult<Decided> {
        let host_id = host_id.to_string();
        self.run(move |c| {
            let mut tx = SqliteTx(c);
            complete(Decider::new(&mut tx, &policy, super::now_ms()).request(&host_id, request))
        })
        .await
    }

    async fn host(&self, host_id: &str) -> StoreResult<Option<HostRecord>> {
        let host_id = host_id.to_string();
        self.read(move |c| tx::load_host(c, &host_id)).await
    }

    async fn hosts(&self, filter: HostFilter) -> StoreResult<Page<HostRecord>> {
        self.read(move |c| {
            let (has, number, text) = cursor_params(&filter.page);
            // A plain `state = ?1` when filtering by state, so that the planner walks
            // the index of the state and the order instead of every host.
            let by_state = match filter.state {
                Some(_) => "state = ?1",
                None => "?1 IS NULL",
            };
            let severe = match filter.min_severity {
                Some(_) => "severity_rank >= ?7",
                None => "?7 IS NULL",
            };
            // A page after the first starts with a range on the order's key, so that
            // the index is entered at the cursor instead of walked from the top.
            let after = match (&filter.page.after, filter.sort) {
                (None, _) => "(NOT ?4 OR ?5 IS NULL OR ?6 IS NULL)",
                (Some(_), HostSort::LastSeen) => {
                    "(?4 AND last_seen <= ?5 AND (last_seen < ?5 OR host_id > ?6))"
                }
                (Some(_), HostSort::Id) => "(?4 AND ?5 IS NOT NULL AND host_id > ?6)",
                (Some(_), HostSort::Severity) => {
                    "(?4 AND severity_rank <= ?5 AND (severity_rank < ?5 OR host_id > ?6))"
                }
            };
            let rows = collect(
                c,
                &format!(
                    "SELECT {HOST_COLUMNS} FROM hosts
                     WHERE {by_state} AND (?2 IS NULL OR image_id = ?2) AND {severe}
                       AND {after}
                     ORDER BY {} LIMIT ?3",
                    filter.sort.order_by()
                ),
                params![
                    filter.state.map(HostState::name),
                    filter.image_id,
                    fetch_limit(filter.page.limit),
                    has,
                    number,
                    text,
                    filter.min_severity.map(super::severity_rank_at_least),
                ],
                host_from_row,
            )?;
            Ok(Page::of(rows, filter.page.limit, |h| {
                filter.sort.cursor_of(h)
            }))
        })
        .await
    }

    async fn findings(&self, host_id: &str, page: PageRequest) -> StoreResult<Page<FindingRecord>> {
        let host_id = host_id.to_string();
        self.read(move |c| {
            let (has, number, text) = cursor_params(&page);
            let rows = collect(
                c,
                &format!(
                    "SELECT {FINDING_COLUMNS} FROM findings WHERE host_id = ?1
                       AND (NOT ?3 OR severity < ?4 OR (severity = ?4 AND key > ?5))
                     ORDER BY severity DESC, key LIMIT ?2"
                ),
                params![host_id, fetch_limit(page.limit), has, number, text],
                finding_from_row,
            )?;
            Ok(Page::of(rows, page.limit, |f| Cursor {
                number: super::severity_code(f.severity),
                text: f.key.clone(),
            }))
        })
        .await
    }

    async fn provisioning(&self, host_id: &str) -> StoreResult<Option<serde_json::Value>> {
        let host_id = host_id.to_string();
        self.read(move |c| {
            let delta: Option<String> = c
                .query_row(
                    "SELECT delta FROM provisioning WHERE host_id = ?1",
                    [host_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db_error)?;
            super::parse_delta(delta)
        })
        .await
    }

    async fn transition(
        &self,
        host_id: &str,
        change: Transition,
        at_ms: i64,
    ) -> StoreResult<HostRecord> {
        let host_id = host_id.to_string();
        self.run(move |c| tx::transition(c, &host_id, change, at_ms))
            .await
    }

    async fn marked_since(&self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64> {
        let image_id = image_id.map(str::to_string);
        self.read(move |c| tx::marked_since(c, image_id.as_deref(), since_ms))
            .await
    }

    async fn live_hosts_on_image(&self, image_id: Option<&str>) -> StoreResult<u64> {
        let image_id = image_id.map(str::to_string);
        self.read(move |c| tx::live_hosts(c, image_id.as_deref()))
            .await
    }

    async fn overdue_hosts(&self, missed: u32, now_ms: i64) -> StoreResult<Vec<String>> {
        self.read(move |c| {
            collect(
                c,
                "SELECT host_id FROM hosts
                 WHERE state NOT IN ('silent', 'gone') AND heartbeat_interval > 0
                   AND coalesce(last_heartbeat, first_seen)
                       + heartbeat_interval * 1000 * ?1 < ?2",
                params![missed, now_ms],
                |row| row.get(0),
            )
        })
        .await
    }

    async fn held_hosts(&self, hold: super::Hold) -> StoreResult<Vec<String>> {
        self.read(move |c| {
            collect(
                c,
                "SELECT host_id FROM hosts WHERE state = 'drifted' AND hold = ?1",
                [hold.name()],
                |row| row.get(0),
            )
        })
        .await
    }

    async fn held(&self, hold: super::Hold, limit: u32) -> StoreResult<super::HeldHosts> {
        self.read(move |c| dashboard::held(c, hold, limit)).await
    }

    async fn findings_of(
        &self,
        host_ids: Vec<String>,
        per_host: u32,
    ) -> StoreResult<Vec<FindingRecord>> {
        self.read(move |c| dashboard::findings_of(c, &host_ids, per_host))
            .await
    }

    async fn hosts_by_image_state(&self) -> StoreResult<Vec<super::ImageStates>> {
        self.read(dashboard::hosts_by_image_state).await
    }

    async fn marked_by_image(&self, since_ms: i64) -> StoreResult<Vec<(Option<String>, u64)>> {
        self.read(move |c| dashboard::marked_by_image(c, since_ms))
            .await
    }

    async fn keep_baseline(&self, image_id: &str, baseline: Option<Vec<u8>>) -> StoreResult<()> {
        let image_id = image_id.to_string();
        self.run(move |c| dashboard::keep_baseline(c, &image_id, baseline.as_deref()))
            .await
    }

    async fn kept_baseline(&self, image_id: &str) -> StoreResult<Option<Vec<u8>>> {
        let image_id = image_id.to_string();
        self.read(move |c| dashboard::kept_baseline(c, &image_id))
            .await
    }

    async fn open_session(&self, session: super::SessionRecord, max: u64) -> StoreResult<()> {
        self.run(move |c| dashboard::open_session(c, &session, max, super::now_ms()))
            .await
    }

    async fn session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Option<super::SessionRecord>> {
        let id_hash = id_hash.to_string();
        self.read(move |c| dashboard::session(c, &id_hash, now_ms))
            .await
    }

    async fn close_session(&self, id_hash: &str) -> StoreResult<()> {
        let id_hash = id_hash.to_string();
        self.run(move |c| dashboard::close_session(c, &id_hash))
            .await
    }

    async fn expire_hosts(&self, before_ms: i64) -> StoreResult<u64> {
        self.run(move |c| {
            let doomed = "SELECT host_id FROM hosts
                          WHERE state IN ('silent', 'gone') AND state_since < ?1";
            for table in ["events", "findings"] {
                c.execute(
                    &format!("DELETE FROM {table} WHERE host_id IN ({doomed})"),
                    [before_ms],
                )
                .map_err(db_error)?;
            }
            trust::expire(c, before_ms)?;
            c.execute(
                "DELETE FROM hosts WHERE state IN ('silent', 'gone') AND state_since < ?1",
                [before_ms],
            )
            .map(|n| n as u64)
            .map_err(db_error)
        })
        .await
    }

    async fn bind(&self, binding: Binding) -> StoreResult<Enrolled> {
        self.run(move |c| trust::bind(c, &binding)).await
    }

    async fn admission(&self, host_id: &str, key_fingerprint: &str) -> StoreResult<Admission> {
        let (host_id, key) = (host_id.to_string(), key_fingerprint.to_string());
        self.read(move |c| trust::admission(c, &host_id, &key))
            .await
    }

    async fn revoke(&self, host_id: &str, at_ms: i64) -> StoreResult<bool> {
        let host_id = host_id.to_string();
        self.run(move |c| trust::revoke(c, &host_id, at_ms)).await
    }

    async fn create_token(&self, token: TokenRecord, hash: String) -> StoreResult<()> {
        self.run(move |c| trust::create_token(c, &token, &hash))
            .await
    }

    async fn token(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        let hash = hash.to_string();
        self.read(move |c| trust::token(c, &hash)).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.read(trust::tokens).await
    }

    async fn revoke_token(&self, name: &str, at_ms: i64) -> StoreResult<bool> {
        let name = name.to_string();
        self.run(move |c| trust::revoke_token(c, &name, at_ms))
            .await
    }

    async fn register_image(&self, image: ImageRecord) -> StoreResult<()> {
        self.run(move |c| {
            c.execute(
                "INSERT INTO images (image_id, baseline_digest, signer, entries, created_at, registered)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (image_id) DO UPDATE SET baseline_digest = ?2, signer = ?3,
                     entries = ?4, created_at = ?5, registered = ?6",
                params![
                    image.image_id,
                    image.baseline_digest,
                    image.signer,
                    i64::try_from(image.entries).unwrap_or(i64::MAX),
                    image.created_at,
                    image.registered_ms
                ],
            )
            .map(|_| ())
            .map_err(db_error)
        })
        .await
    }

    async fn image(&self, image_id: &str) -> StoreResult<Option<ImageRecord>> {
        let image_id = image_id.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = ?1"),
                [image_id],
                image_from_row,
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn images(&self, page: PageRequest) -> StoreResult<Page<ImageRecord>> {
        self.read(move |c| {
            let (has, number, text) = cursor_params(&page);
            let rows = collect(
                c,
                &format!(
                    "SELECT {IMAGE_COLUMNS} FROM images
                     WHERE NOT ?2 OR registered < ?3 OR (registered = ?3 AND image_id > ?4)
                     ORDER BY registered DESC, image_id LIMIT ?1"
                ),
                params![fetch_limit(page.limit), has, number, text],
                image_from_row,
            )?;
            Ok(Page::of(rows, page.limit, |i| Cursor {
                number: i.registered_ms,
                text: i.image_id.clone(),
            }))
        })
        .await
    }

    async fn record_action(&self, action: ActionRecord) -> StoreResult<i64> {
        self.run(move |c| tx::record_action(c, &action)).await
    }

    async fn actions(&self, filter: ActionFilter) -> StoreResult<Page<ActionRecord>> {
        self.read(move |c| {
            let (has, number, _) = cursor_params(&filter.page);
            let rows = collect(
                c,
                "SELECT id, at, host_id, image_id, action, target, outcome, detail FROM actions
                 WHERE (?1 IS NULL OR host_id = ?1) AND (NOT ?3 OR id < ?4)
                 ORDER BY id DESC LIMIT ?2",
                params![filter.host_id, fetch_limit(filter.page.limit), has, number],
                action_from_row,
            )?;
            Ok(Page::of(rows, filter.page.limit, |a| Cursor {
                number: a.id,
                text: String::new(),
            }))
        })
        .await
    }

    async fn counts(&self) -> StoreResult<FleetCounts> {
        self.read(|c| {
            let mut counts = FleetCounts::default();
            for (state, count) in collect(
                c,
                "SELECT state, count(*) FROM hosts GROUP BY state",
                [],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )? {
                let index = HostState::ALL
                    .iter()
                    .position(|s| s.name() == state)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown host state {state:?}")))?;
                counts.hosts_by_state[index] = count.max(0) as u64;
            }
            // One scan for the four sums.
            counts.findings_by_severity = c
                .query_row(
                    "SELECT coalesce(sum(n_critical), 0), coalesce(sum(n_high), 0),
                            coalesce(sum(n_medium), 0), coalesce(sum(n_low), 0) FROM hosts",
                    [],
                    |row| {
                        let sum = |i: usize| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
                        Ok([sum(0)?, sum(1)?, sum(2)?, sum(3)?])
                    },
                )
                .map_err(db_error)?;
            counts.images = count(c, "SELECT count(*) FROM images", [])?;
            counts.pending_alerts = count(c, "SELECT count(*) FROM alert_groups", [])?
                + count(
                    c,
                    "SELECT count(*) FROM outbox WHERE state = 'pending' AND kind = 'webhook'",
                    [],
                )?;
            counts.pending_commands = count(
                c,
                "SELECT count(*) FROM outbox WHERE state = 'pending' AND kind = 'command'",
                [],
            )?;
            Ok(counts)
        })
        .await
    }

    async fn announce_mark(
        &self,
        host: HostRecord,
        reason: String,
        policy: Arc<Policy>,
    ) -> StoreResult<()> {
        self.run(move |c| {
            let mut tx = SqliteTx(c);
            complete(Decider::new(&mut tx, &policy, super::now_ms()).announce_mark(&host, reason))
        })
        .await
    }

    async fn raise(&self, occurrences: Vec<Occurrence>, policy: Arc<Policy>) -> StoreResult<()> {
        self.run(move |c| {
            let now = super::now_ms();
            for occurrence in &occurrences {
                tx::raise(c, occurrence, now + policy.group_wait_ms, now)?;
            }
            Ok(())
        })
        .await
    }

    async fn flush_alerts(&self, now_ms: i64, policy: Arc<Policy>) -> StoreResult<Vec<AlertKind>> {
        self.run(move |c| complete(flush_alerts(&mut SqliteTx(c), &policy, now_ms)))
            .await
    }

    async fn forget_alerted(&self, before_ms: i64) -> StoreResult<u64> {
        self.run(move |c| {
            c.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND created_at < ?1",
                [before_ms],
            )
            .map_err(db_error)?;
            c.execute(
                "DELETE FROM alert_hosts WHERE pending = 0 AND seen_at < ?1",
                [before_ms],
            )
            .map(|n| n as u64)
            .map_err(db_error)
        })
        .await
    }

    async fn claim(
        &self,
        replica: &str,
        kind: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<Claim>> {
        let (replica, kind) = (replica.to_string(), kind.to_string());
        self.run(move |c| {
            let rows = collect(
                c,
                "UPDATE outbox SET claimed_by = ?1, claim_expires_at = ?2 + ?3,
                     attempts = attempts + 1
                 WHERE id IN (SELECT id FROM outbox
                     WHERE state = 'pending' AND kind = ?5 AND next_attempt_at <= ?2
                       AND (claimed_by IS NULL OR claim_expires_at < ?2)
                     ORDER BY next_attempt_at, id LIMIT ?4)
                 RETURNING id, payload, idempotency_key, attempts, give_up_at",
                params![replica, now_ms, lease_ms, limit, kind],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(id, payload, key, attempts, give_up)| {
                    Claim::from_stored(id, &payload, key, attempts, give_up)
                })
                .collect()
        })
        .await
    }

    async fn finish(&self, id: i64, replica: &str, finish: Finish) -> StoreResult<bool> {
        let replica = replica.to_string();
        self.run(move |c| {
            let ours = match &finish {
                Finish::Done(action) => c.execute(
                    "UPDATE outbox SET state = ?3, claimed_by = NULL, claim_expires_at = NULL
                     WHERE id = ?1 AND claimed_by = ?2",
                    params![
                        id,
                        replica,
                        if action.outcome == Outcome::Ok {
                            "done"
                        } else {
                            "failed"
                        }
                    ],
                ),
                Finish::Retry { at_ms, error } => c.execute(
                    "UPDATE outbox SET claimed_by = NULL, claim_expires_at = NULL,
                         next_attempt_at = ?3, last_error = ?4
                     WHERE id = ?1 AND claimed_by = ?2",
                    params![id, replica, at_ms, error],
                ),
            }
            .map_err(db_error)?
                == 1;
            if let (true, Finish::Done(action)) = (ours, &finish) {
                tx::record_action(c, action)?;
            }
            Ok(ours)
        })
        .await
    }

    async fn lease(
        &self,
        name: &str,
        replica: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> StoreResult<bool> {
        let (name, replica) = (name.to_string(), replica.to_string());
        self.run(move |c| {
            c.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3 + ?4)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?3",
                params![name, replica, now_ms, ttl_ms],
            )
            .map(|n| n == 1)
            .map_err(db_error)
        })
        .await
    }
}
