//! The embedded store: one SQLite file in WAL mode.
//!
//! One worker thread owns the connection and runs every operation; async callers send
//! it closures over a bounded channel and await the answer. That single writer is what
//! makes ingest fast *and* durable: the worker takes every operation waiting in the
//! channel, runs each in its own savepoint, and commits them together with one fsync
//! (`synchronous = FULL`), answering no caller before that commit. Under load one
//! commit carries many batches; alone, a batch costs one commit.
//!
//! Migrations are numbered SQL scripts applied in order inside a transaction;
//! `PRAGMA user_version` records how far a database has come.

use super::{
    now_ms, ActionRecord, FindingRecord, FleetCounts, HostFilter, HostRecord, ImageRecord,
    IngestBody, IngestOutcome, IngestRecord, Store, StoreError, StoreResult, Transition,
};
use async_trait::async_trait;
use driftwatch_protocol::report::Severity;
use driftwatch_protocol::wire::HostState;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use tokio::sync::oneshot;
use tracing::error;

/// Operations waiting for the worker. Enough for a burst of thousands of agents; a full
/// queue makes callers wait (back-pressure on ingest) instead of growing memory.
const QUEUE: usize = 4096;
/// Most operations committed together: bounds the latency one commit adds to the first.
const MAX_GROUP: usize = 512;

/// Numbered migrations; never edit one that has shipped, add the next.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    image_id TEXT,
    baseline_digest TEXT,
    state TEXT NOT NULL,
    state_since INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_heartbeat INTEGER,
    heartbeat_interval INTEGER NOT NULL DEFAULT 0,
    agent_version TEXT,
    mark_reason TEXT,
    marked_at INTEGER,
    hold TEXT,
    hold_reason TEXT,
    unmarked_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    credential TEXT,
    enrolled_at INTEGER
);
CREATE INDEX hosts_by_image ON hosts (image_id, state);
CREATE INDEX hosts_by_state ON hosts (state, state_since);
CREATE TABLE events (
    host_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received INTEGER NOT NULL,
    PRIMARY KEY (host_id, event_id)
) WITHOUT ROWID;
CREATE TABLE findings (
    host_id TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity INTEGER NOT NULL,
    subject TEXT NOT NULL,
    finding TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (host_id, key)
) WITHOUT ROWID;
CREATE TABLE images (
    image_id TEXT PRIMARY KEY,
    baseline_digest TEXT NOT NULL,
    signer TEXT,
    entries INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    registered INTEGER NOT NULL
);
CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    host_id TEXT,
    image_id TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX actions_by_host ON actions (host_id, id);
CREATE TABLE marks (
    host_id TEXT NOT NULL,
    image_id TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX marks_by_image ON marks (image_id, at);
"#,
    r#"
CREATE TABLE provisioning (
    host_id TEXT PRIMARY KEY,
    received INTEGER NOT NULL,
    delta TEXT NOT NULL
) WITHOUT ROWID;
"#,
];

type Finisher = Box<dyn FnOnce(StoreResult<()>) + Send>;
type Operation = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;

/// The SQLite store.
pub struct SqliteStore {
    operations: SyncSender<Operation>,
    /// Dropping it stops the checkpointer (file databases only).
    _checkpointer: Option<SyncSender<()>>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn db_error(err: rusqlite::Error) -> StoreError {
    StoreError::Database(err.to_string())
}

fn severity_code(severity: Severity) -> i64 {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

fn severity_of(code: i64) -> Severity {
    match code {
        0 => Severity::Low,
        1 => Severity::Medium,
        2 => Severity::High,
        _ => Severity::Critical,
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
        // fleet in memory.
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
        let mut store = SqliteStore::start(connection)?;
        store._checkpointer = Some(checkpointer(path)?);
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_memory() -> StoreResult<SqliteStore> {
        SqliteStore::start(Connection::open_in_memory().map_err(db_error)?)
    }

    fn start(mut connection: Connection) -> StoreResult<SqliteStore> {
        migrate(&mut connection)?;
        let (operations, queue) = sync_channel::<Operation>(QUEUE);
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || work(&connection, &queue))
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            operations,
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

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db_error)?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this collector knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, script) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction().map_err(db_error)?;
        transaction.execute_batch(script).map_err(db_error)?;
        transaction
            .execute_batch(&format!("PRAGMA user_version = {}", index + 1))
            .map_err(db_error)?;
        transaction.commit().map_err(db_error)?;
    }
    Ok(())
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
    marked_at, hold, hold_reason, unmarked_at, revoked,
    (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 3),
    (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 2),
    (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 1),
    (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 0)";

fn host_from_row(row: &Row<'_>) -> rusqlite::Result<HostRecord> {
    let state: String = row.get(4)?;
    let tally = |i: usize| row.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(HostRecord {
        host_id: row.get(0)?,
        hostname: row.get(1)?,
        image_id: row.get(2)?,
        baseline_digest: row.get(3)?,
        state: HostState::from_name(&state).unwrap_or(HostState::Drifted),
        state_since_ms: row.get(5)?,
        first_seen_ms: row.get(6)?,
        last_seen_ms: row.get(7)?,
        last_heartbeat_ms: row.get(8)?,
        heartbeat_interval_secs: row.get::<_, i64>(9)?.max(0) as u64,
        agent_version: row.get(10)?,
        mark_reason: row.get(11)?,
        marked_at_ms: row.get(12)?,
        hold: row.get(13)?,
        hold_reason: row.get(14)?,
        unmarked_at_ms: row.get(15)?,
        revoked: row.get::<_, i64>(16)? != 0,
        findings_by_severity: [tally(17)?, tally(18)?, tally(19)?, tally(20)?],
    })
}

fn load_host(connection: &Connection, host_id: &str) -> StoreResult<Option<HostRecord>> {
    connection
        .prepare_cached(&format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = ?1"
        ))
        .and_then(|mut statement| statement.query_row([host_id], host_from_row).optional())
        .map_err(db_error)
}

/// Whether a host is revoked; `None` when it is unknown.
fn revoked(connection: &Connection, host_id: &str) -> StoreResult<Option<bool>> {
    connection
        .prepare_cached("SELECT revoked FROM hosts WHERE host_id = ?1")
        .and_then(|mut s| {
            s.query_row([host_id], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map(|r| r.map(|v| v != 0))
        .map_err(db_error)
}

fn require_host(connection: &Connection, host_id: &str) -> StoreResult<HostRecord> {
    load_host(connection, host_id)?.ok_or_else(|| StoreError::NotFound {
        what: "host",
        id: host_id.to_string(),
    })
}

fn finding_from_row(row: &Row<'_>) -> rusqlite::Result<FindingRecord> {
    let json: String = row.get(5)?;
    Ok(FindingRecord {
        host_id: row.get(0)?,
        key: row.get(1)?,
        kind: row.get(2)?,
        severity: severity_of(row.get(3)?),
        subject: row.get(4)?,
        finding: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
        first_seen_ms: row.get(6)?,
        last_seen_ms: row.get(7)?,
    })
}

const FINDING_COLUMNS: &str =
    "host_id, key, kind, severity, subject, finding, first_seen, last_seen";

/// Inserts or refreshes one finding; returns it when it is new for the host.
#[allow(clippy::too_many_arguments)]
fn upsert_finding(
    connection: &Connection,
    host_id: &str,
    key: &str,
    kind: &str,
    severity: Severity,
    subject: &str,
    finding: &str,
    now: i64,
) -> StoreResult<Option<FindingRecord>> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO findings (host_id, key, kind, severity, subject, finding, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (host_id, key) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![host_id, key, kind, severity_code(severity), subject, finding, now])
        })
        .map_err(db_error)?;
    if inserted == 1 {
        return Ok(Some(FindingRecord {
            host_id: host_id.to_string(),
            key: key.to_string(),
            kind: kind.to_string(),
            severity,
            subject: subject.to_string(),
            finding: serde_json::from_str(finding).unwrap_or(serde_json::Value::Null),
            first_seen_ms: now,
            last_seen_ms: now,
        }));
    }
    connection
        .prepare_cached(
            "UPDATE findings SET severity = ?3, subject = ?4, finding = ?5, last_seen = ?6
             WHERE host_id = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.execute(params![
                host_id,
                key,
                severity_code(severity),
                subject,
                finding,
                now
            ])
        })
        .map_err(db_error)?;
    Ok(None)
}

fn ingest(connection: &Connection, record: IngestRecord) -> StoreResult<IngestOutcome> {
    let now = record.received_ms;
    // Only whether the host exists and is revoked: the full record (with its finding
    // counts) is read once, after the batch.
    let revoked = revoked(connection, &record.host_id)?;
    if revoked == Some(true) {
        return Err(StoreError::Conflict(format!(
            "host {} is revoked",
            record.host_id
        )));
    }
    let first_contact = revoked.is_none();
    connection
        .prepare_cached(
            "INSERT INTO hosts (host_id, hostname, image_id, baseline_digest, state,
                 state_since, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, 'clean', ?5, ?5, ?5)
             ON CONFLICT (host_id) DO UPDATE SET hostname = ?2, image_id = ?3,
                 baseline_digest = ?4, last_seen = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                record.host_id,
                record.hostname,
                record.image_id,
                record.baseline_digest,
                now
            ])
        })
        .map_err(db_error)?;
    let mut accepted = 0u32;
    let mut duplicates = 0u32;
    let mut new_findings = Vec::new();
    for event in record.events {
        match event.body {
            // Heartbeats are not kept as events: only the latest matters, and a
            // repeated one is harmless. Keeping them would grow the table by every
            // host every interval.
            IngestBody::Heartbeat {
                agent_version,
                interval_secs,
            } => {
                connection
                    .prepare_cached(
                        "UPDATE hosts SET last_heartbeat = ?2, heartbeat_interval = ?3,
                             agent_version = ?4 WHERE host_id = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            record.host_id,
                            now,
                            i64::try_from(interval_secs).unwrap_or(i64::MAX),
                            agent_version
                        ])
                    })
                    .map_err(db_error)?;
                accepted += 1;
            }
            IngestBody::Provisioned(delta) => {
                // The host's first-boot delta: kept as sent, the latest one wins.
                let json = serde_json::to_string(&delta)
                    .map_err(|e| StoreError::Database(format!("cannot encode a delta: {e}")))?;
                connection
                    .prepare_cached(
                        "INSERT INTO provisioning (host_id, received, delta) VALUES (?1, ?2, ?3)
                         ON CONFLICT (host_id) DO UPDATE SET received = ?2, delta = ?3",
                    )
                    .and_then(|mut s| s.execute(params![record.host_id, now, json]))
                    .map_err(db_error)?;
                accepted += 1;
            }
            IngestBody::Finding(finding) => {
                let inserted = connection
                    .prepare_cached(
                        "INSERT INTO events (host_id, event_id, received) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )
                    .and_then(|mut s| s.execute(params![record.host_id, event.id, now]))
                    .map_err(db_error)?;
                if inserted == 0 {
                    duplicates += 1;
                    continue;
                }
                accepted += 1;
                let json = serde_json::to_string(&finding)
                    .map_err(|e| StoreError::Database(format!("cannot encode a finding: {e}")))?;
                if let Some(new) = upsert_finding(
                    connection,
                    &record.host_id,
                    &finding.key(),
                    finding.kind_name(),
                    finding.severity(),
                    &finding.subject(),
                    &json,
                    now,
                )? {
                    new_findings.push(new);
                }
            }
        }
    }
    for finding in record.collector_findings {
        if let Some(new) = upsert_finding(
            connection,
            &record.host_id,
            &finding.key,
            finding.kind,
            finding.severity,
            &finding.subject,
            &finding.finding.to_string(),
            now,
        )? {
            new_findings.push(new);
        }
    }
    let host = require_host(connection, &record.host_id)?;
    Ok(IngestOutcome {
        accepted,
        duplicates,
        new_findings,
        host,
        first_contact,
    })
}

fn transition(
    connection: &Connection,
    host_id: &str,
    transition: Transition,
    now: i64,
) -> StoreResult<HostRecord> {
    let host = require_host(connection, host_id)?;
    let set_state = |state: HostState| -> StoreResult<()> {
        connection
            .prepare_cached(
                "UPDATE hosts SET state = ?2,
                     state_since = CASE WHEN state = ?2 THEN state_since ELSE ?3 END
                 WHERE host_id = ?1",
            )
            .and_then(|mut s| s.execute(params![host_id, state.name(), now]))
            .map(|_| ())
            .map_err(db_error)
    };
    match transition {
        Transition::Settle(state) => {
            set_state(state)?;
            connection
                .prepare_cached(
                    "UPDATE hosts SET hold = NULL, hold_reason = NULL WHERE host_id = ?1",
                )
                .and_then(|mut s| s.execute([host_id]))
                .map_err(db_error)?;
        }
        Transition::Mark { reason } => {
            set_state(HostState::Marked)?;
            connection
                .prepare_cached(
                    "UPDATE hosts SET mark_reason = ?2, marked_at = ?3, hold = NULL,
                         hold_reason = NULL WHERE host_id = ?1",
                )
                .and_then(|mut s| s.execute(params![host_id, reason, now]))
                .map_err(db_error)?;
            connection
                .prepare_cached("INSERT INTO marks (host_id, image_id, at) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![host_id, host.image_id, now]))
                .map_err(db_error)?;
        }
        Transition::Hold { hold, reason } => {
            set_state(HostState::Drifted)?;
            connection
                .prepare_cached("UPDATE hosts SET hold = ?2, hold_reason = ?3 WHERE host_id = ?1")
                .and_then(|mut s| s.execute(params![host_id, hold, reason]))
                .map_err(db_error)?;
        }
        Transition::Unmark => {
            set_state(HostState::Drifted)?;
            connection
                .prepare_cached(
                    "UPDATE hosts SET mark_reason = NULL, marked_at = NULL, hold = NULL,
                         hold_reason = NULL, unmarked_at = ?2 WHERE host_id = ?1",
                )
                .and_then(|mut s| s.execute(params![host_id, now]))
                .map_err(db_error)?;
            // A lifted mark replaced nothing: it gives its budget slot back.
            connection
                .prepare_cached("DELETE FROM marks WHERE host_id = ?1")
                .and_then(|mut s| s.execute([host_id]))
                .map_err(db_error)?;
        }
        Transition::Silence => set_state(HostState::Silent)?,
        Transition::Retire => set_state(HostState::Gone)?,
    }
    require_host(connection, host_id)
}

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
        .query_row(sql, params, |row| row.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
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
    Ok(ActionRecord {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        host_id: row.get(2)?,
        image_id: row.get(3)?,
        action: row.get(4)?,
        target: row.get(5)?,
        outcome: row.get(6)?,
        detail: row.get(7)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, record: IngestRecord) -> StoreResult<IngestOutcome> {
        self.run(move |c| ingest(c, record)).await
    }

    async fn host(&self, host_id: &str) -> StoreResult<Option<HostRecord>> {
        let host_id = host_id.to_string();
        self.run(move |c| load_host(c, &host_id)).await
    }

    async fn hosts(&self, filter: HostFilter) -> StoreResult<Vec<HostRecord>> {
        self.run(move |c| {
            collect(
                c,
                &format!(
                    "SELECT {HOST_COLUMNS} FROM hosts
                     WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR image_id = ?2)
                     ORDER BY last_seen DESC, host_id LIMIT ?3"
                ),
                params![
                    filter.state.map(HostState::name),
                    filter.image_id,
                    filter.limit.map_or(-1, i64::from)
                ],
                host_from_row,
            )
        })
        .await
    }

    async fn provisioning(&self, host_id: &str) -> StoreResult<Option<serde_json::Value>> {
        let host_id = host_id.to_string();
        self.run(move |c| {
            let delta: Option<String> = c
                .query_row(
                    "SELECT delta FROM provisioning WHERE host_id = ?1",
                    [host_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db_error)?;
            delta
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(|e| StoreError::Database(format!("a stored delta is corrupt: {e}")))
        })
        .await
    }

    async fn findings(&self, host_id: &str) -> StoreResult<Vec<FindingRecord>> {
        let host_id = host_id.to_string();
        self.run(move |c| {
            collect(
                c,
                &format!(
                    "SELECT {FINDING_COLUMNS} FROM findings WHERE host_id = ?1
                     ORDER BY severity DESC, key"
                ),
                [host_id],
                finding_from_row,
            )
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
        self.run(move |c| transition(c, &host_id, change, at_ms))
            .await
    }

    async fn marked_since(&self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64> {
        let image_id = image_id.map(str::to_string);
        self.run(move |c| {
            count(
                c,
                "SELECT count(DISTINCT host_id) FROM marks WHERE image_id IS ?1 AND at >= ?2",
                params![image_id, since_ms],
            )
        })
        .await
    }

    async fn live_hosts_on_image(&self, image_id: Option<&str>) -> StoreResult<u64> {
        let image_id = image_id.map(str::to_string);
        self.run(move |c| {
            count(
                c,
                "SELECT count(*) FROM hosts WHERE image_id IS ?1 AND state != 'gone'",
                params![image_id],
            )
        })
        .await
    }

    async fn overdue_hosts(&self, missed: u32, now_ms: i64) -> StoreResult<Vec<HostRecord>> {
        self.run(move |c| {
            collect(
                c,
                &format!(
                    "SELECT {HOST_COLUMNS} FROM hosts
                     WHERE state NOT IN ('silent', 'gone') AND heartbeat_interval > 0
                       AND coalesce(last_heartbeat, first_seen)
                           + heartbeat_interval * 1000 * ?1 < ?2"
                ),
                params![missed, now_ms],
                host_from_row,
            )
        })
        .await
    }

    async fn held_hosts(&self, hold: &str) -> StoreResult<Vec<String>> {
        let hold = hold.to_string();
        self.run(move |c| {
            collect(
                c,
                "SELECT host_id FROM hosts WHERE state = 'drifted' AND hold = ?1",
                [hold],
                |row| row.get(0),
            )
        })
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
            c.execute(
                "DELETE FROM hosts WHERE state IN ('silent', 'gone') AND state_since < ?1",
                [before_ms],
            )
            .map(|n| n as u64)
            .map_err(db_error)
        })
        .await
    }

    async fn enroll(&self, host_id: &str, fingerprint: &str, at_ms: i64) -> StoreResult<()> {
        let (host_id, fingerprint) = (host_id.to_string(), fingerprint.to_string());
        self.run(move |c| {
            let known: Option<(Option<String>, i64)> = c
                .query_row(
                    "SELECT credential, revoked FROM hosts WHERE host_id = ?1",
                    [&host_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(db_error)?;
            match known {
                Some((_, revoked)) if revoked != 0 => {
                    Err(StoreError::Conflict(format!("host {host_id} is revoked")))
                }
                Some((Some(_), _)) => Err(StoreError::Conflict(format!(
                    "host {host_id} is already enrolled"
                ))),
                Some((None, _)) => c
                    .execute(
                        "UPDATE hosts SET credential = ?2, enrolled_at = ?3 WHERE host_id = ?1",
                        params![host_id, fingerprint, at_ms],
                    )
                    .map(|_| ())
                    .map_err(db_error),
                None => c
                    .execute(
                        "INSERT INTO hosts (host_id, hostname, state, state_since, first_seen,
                             last_seen, credential, enrolled_at)
                         VALUES (?1, ?1, 'clean', ?3, ?3, ?3, ?2, ?3)",
                        params![host_id, fingerprint, at_ms],
                    )
                    .map(|_| ())
                    .map_err(db_error),
            }
        })
        .await
    }

    async fn revoke(&self, host_id: &str, at_ms: i64) -> StoreResult<bool> {
        let host_id = host_id.to_string();
        self.run(move |c| {
            c.execute(
                "UPDATE hosts SET revoked = 1, state = 'gone', state_since = ?2
                 WHERE host_id = ?1",
                params![host_id, at_ms],
            )
            .map(|n| n > 0)
            .map_err(db_error)
        })
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
        self.run(move |c| {
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

    async fn images(&self) -> StoreResult<Vec<ImageRecord>> {
        self.run(|c| {
            collect(
                c,
                &format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY registered DESC"),
                [],
                image_from_row,
            )
        })
        .await
    }

    async fn record_action(&self, action: ActionRecord) -> StoreResult<i64> {
        self.run(move |c| {
            c.prepare_cached(
                "INSERT INTO actions (at, host_id, image_id, action, target, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    if action.at_ms == 0 {
                        now_ms()
                    } else {
                        action.at_ms
                    },
                    action.host_id,
                    action.image_id,
                    action.action,
                    action.target,
                    action.outcome,
                    action.detail
                ])
            })
            .map_err(db_error)?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn actions(&self, host_id: Option<&str>, limit: u32) -> StoreResult<Vec<ActionRecord>> {
        let host_id = host_id.map(str::to_string);
        self.run(move |c| {
            collect(
                c,
                "SELECT id, at, host_id, image_id, action, target, outcome, detail FROM actions
                 WHERE (?1 IS NULL OR host_id = ?1) ORDER BY id DESC LIMIT ?2",
                params![host_id, limit],
                action_from_row,
            )
        })
        .await
    }

    async fn counts(&self) -> StoreResult<FleetCounts> {
        self.run(|c| {
            let mut counts = FleetCounts::default();
            for (state, count) in collect(
                c,
                "SELECT state, count(*) FROM hosts GROUP BY state",
                [],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
            )? {
                if let Some(index) = HostState::ALL.iter().position(|s| s.name() == state) {
                    counts.hosts_by_state[index] = count.max(0) as u64;
                }
            }
            for (code, count) in collect(
                c,
                "SELECT severity, count(*) FROM findings GROUP BY severity",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )? {
                counts.findings_by_severity[super::severity_index(severity_of(code))] =
                    count.max(0) as u64;
            }
            counts.images = count(c, "SELECT count(*) FROM images", [])?;
            Ok(counts)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IngestEvent;
    use driftwatch_protocol::report::{Finding, KernelModuleFinding, KernelModuleReason};

    fn module(name: &str) -> Finding {
        Finding::KernelModule(KernelModuleFinding {
            name: name.into(),
            reason: KernelModuleReason::NotInImage,
            taint: None,
            severity: Severity::Critical,
        })
    }

    fn batch(host: &str, events: Vec<(&str, IngestBody)>) -> IngestRecord {
        IngestRecord {
            host_id: host.into(),
            hostname: host.into(),
            image_id: Some("img".into()),
            baseline_digest: Some("blake3:00".into()),
            events: events
                .into_iter()
                .map(|(id, body)| IngestEvent {
                    id: id.into(),
                    body,
                })
                .collect(),
            collector_findings: Vec::new(),
            received_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn a_retried_batch_stores_nothing_twice() {
        let store = SqliteStore::open_memory().unwrap();
        let events = || {
            vec![
                ("e1", IngestBody::Finding(Box::new(module("evil")))),
                ("e2", IngestBody::Finding(Box::new(module("worse")))),
            ]
        };
        let first = store.ingest(batch("h1", events())).await.unwrap();
        assert!(first.first_contact);
        assert_eq!(
            (first.accepted, first.duplicates, first.new_findings.len()),
            (2, 0, 2)
        );
        let again = store.ingest(batch("h1", events())).await.unwrap();
        assert_eq!(
            (again.accepted, again.duplicates, again.new_findings.len()),
            (0, 2, 0)
        );
        assert_eq!(store.findings("h1").await.unwrap().len(), 2);
        // The same ids from another host are that host's own events.
        let other = store.ingest(batch("h2", events())).await.unwrap();
        assert_eq!(other.accepted, 2);
    }

    #[tokio::test]
    async fn budgets_count_marks_per_image_and_window() {
        let store = SqliteStore::open_memory().unwrap();
        for host in ["a", "b", "c"] {
            store.ingest(batch(host, vec![])).await.unwrap();
        }
        let t0 = now_ms();
        for host in ["a", "b"] {
            let marked = store
                .transition(host, Transition::Mark { reason: "r".into() }, t0)
                .await
                .unwrap();
            assert_eq!(marked.state, HostState::Marked);
        }
        assert_eq!(store.marked_since(Some("img"), t0).await.unwrap(), 2);
        assert_eq!(store.marked_since(Some("img"), t0 + 1).await.unwrap(), 0);
        assert_eq!(store.marked_since(Some("other"), 0).await.unwrap(), 0);
        assert_eq!(store.live_hosts_on_image(Some("img")).await.unwrap(), 3);
        store.transition("c", Transition::Retire, t0).await.unwrap();
        assert_eq!(store.live_hosts_on_image(Some("img")).await.unwrap(), 2);
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.hosts_by_state, [0, 0, 2, 0, 1]);
    }

    #[tokio::test]
    async fn enrollment_is_once_per_host_and_revocation_sticks() {
        let store = SqliteStore::open_memory().unwrap();
        store.enroll("h1", "fp1", 1).await.unwrap();
        assert!(matches!(
            store.enroll("h1", "fp2", 2).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(store.revoke("h1", 3).await.unwrap());
        assert!(store.host("h1").await.unwrap().unwrap().revoked);
        assert!(matches!(
            store.ingest(batch("h1", vec![])).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(!store.revoke("nobody", 3).await.unwrap());
    }

    #[tokio::test]
    async fn silent_and_gone_hosts_expire_with_their_findings() {
        let store = SqliteStore::open_memory().unwrap();
        let heartbeat = IngestBody::Heartbeat {
            agent_version: "1".into(),
            interval_secs: 1,
        };
        let mut record = batch(
            "h1",
            vec![("e1", IngestBody::Finding(Box::new(module("m"))))],
        );
        record.events.push(IngestEvent {
            id: "hb".into(),
            body: heartbeat,
        });
        record.received_ms = 1_000;
        store.ingest(record).await.unwrap();
        assert!(store.overdue_hosts(3, 3_500).await.unwrap().is_empty());
        let overdue = store.overdue_hosts(3, 4_001).await.unwrap();
        assert_eq!(overdue.len(), 1);
        store
            .transition("h1", Transition::Silence, 4_001)
            .await
            .unwrap();
        assert!(store.overdue_hosts(3, 10_000).await.unwrap().is_empty());
        assert_eq!(store.expire_hosts(4_000).await.unwrap(), 0);
        assert_eq!(store.expire_hosts(5_000).await.unwrap(), 1);
        assert!(store.findings("h1").await.unwrap().is_empty());
        assert!(store.host("h1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_file_database_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store
                .ingest(batch(
                    "h1",
                    vec![("e1", IngestBody::Finding(Box::new(module("m"))))],
                ))
                .await
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.findings("h1").await.unwrap().len(), 1);
        let again = store
            .ingest(batch(
                "h1",
                vec![("e1", IngestBody::Finding(Box::new(module("m"))))],
            ))
            .await
            .unwrap();
        assert_eq!(again.duplicates, 1);
    }
}
