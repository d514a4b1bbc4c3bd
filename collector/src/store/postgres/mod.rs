//! The shared store: PostgreSQL, for several collector replicas on one database.
//!
//! Every operation takes a connection from a pool (tokio-postgres with deadpool) and
//! runs in its own transaction (READ COMMITTED), and the replicas share nothing but
//! the database. Reads that write nothing (the operator's pages, lookups and counts)
//! take theirs from a small pool of their own, so they never queue behind ingest
//! transactions holding every connection of the write pool (as SQLite's readers
//! never wait for its one writer). What must not happen twice is
//! made exclusive by row locks, which live and die with their transaction (no session
//! state, so they work through any connection pooler):
//! - a batch's host row is locked by the upsert that opens its transaction, so two
//!   batches of one host (on two replicas) are decided one after the other;
//! - the budget of an image is its row in `budgets`, locked before the marks of the
//!   window are counted (see [`PgTx::lock_budget`]);
//! - outbox rows and due alert groups are claimed `FOR UPDATE SKIP LOCKED`, so
//!   replicas draining them at once never take the same row.
//!
//! TLS (rustls, ring provider): `sslmode=disable` connects in clear; `prefer`,
//! `require` and `verify-full` verify the server's certificate and name against
//! `sslrootcert` (a PEM file) or the system's CA bundle. `require` verifies too:
//! this collector never sends its password to a server it has not authenticated.

mod dashboard;
mod schema;
mod trust;

use super::decide::{flush_alerts, Decider, DecisionTx, DueGroup, Taken};
use super::outbox::{random_token, AlertContainer, AlertKind, Claim, Occurrence, OutboxItem};
use super::{
    changed, cursor_params, fetch_limit, parse_delta, parse_state, severity_code, severity_of,
    too_many_findings, ActionFilter, ActionRecord, BatchFindings, Cursor, Decided, FindingInput,
    FindingRecord, Finish, FleetCounts, Hold, HostFilter, HostRecord, HostSort, ImageRecord,
    IngestOutcome, IngestRecord, Outcome, Page, PageRequest, Policy, Request, Store, StoreError,
    StoreResult, TokenRecord, Transition, TOO_MANY_FINDINGS_KEY,
};
use super::{Admission, Binding, Enrolled};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use driftwatch_protocol::wire::HostState;
use std::sync::Arc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Connections per replica: enough for ingest, reads and the outbox at once, few
/// enough that a dozen replicas stay under PostgreSQL's default 100 connections.
const POOL_SIZE: usize = 8;

/// Connections per replica for reads that write nothing, beside [`POOL_SIZE`]: an
/// operator's page or two at once, which a loaded write pool would make wait. Agents'
/// admission checks stay on the write pool: they come with every agent request and
/// would crowd the operator out of this one.
const READ_POOL_SIZE: usize = 2;

/// How long a caller waits for a pooled connection before the request fails (503).
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Query parameters.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How often one transaction is run before a conflict with concurrent ones is given up
/// on: PostgreSQL aborts one side of a deadlock or a serialization failure, and the
/// same flow run again (after the other side committed) succeeds.
const TX_ATTEMPTS: u32 = 5;

/// The wait before the first re-run of a conflicted transaction, doubling from there.
const TX_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(10);

/// The longest wait between two runs of a conflicted transaction.
const TX_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Maps an error, keeping apart those that a re-run of the transaction can cure.
fn pg_error(err: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let message = driftwatch_protocol::errors::error_chain(&err);
    match err.code() {
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED) => {
            StoreError::Contended(message)
        }
        _ => StoreError::Database(message),
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    /// Transactions and every write.
    pool: Pool,
    /// Reads that write nothing (see [`PostgresStore::reader`]).
    reads: Pool,
}

/// The TLS settings of a URL, removed from it: tokio-postgres knows neither
/// `verify-full` nor `sslrootcert`.
fn split_tls(url: &str) -> (String, String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), "prefer".into(), None);
    };
    let (mut mode, mut root, mut kept) = ("prefer".to_string(), None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = value.to_string(),
            Some(("sslrootcert", value)) => root = Some(value.to_string()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, mode, root)
}

fn tls_config(root: Option<&str>) -> StoreResult<rustls::ClientConfig> {
    let roots = match root {
        Some(path) => crate::alerts::roots::read_roots(std::path::Path::new(path))
            .map_err(|e| StoreError::Database(format!("sslrootcert {path}: {e}")))?,
        None => crate::alerts::roots::read_system_roots().ok_or_else(|| {
            StoreError::Database("TLS to PostgreSQL needs sslrootcert or a system CA bundle".into())
        })?,
    };
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| StoreError::Database(format!("TLS to PostgreSQL: {e}")))
}

impl PostgresStore {
    /// Connects (creating and migrating the schema) to the database at `url`, with
    /// `password` when the URL has none.
    pub async fn connect(url: &str, password: Option<&str>) -> StoreResult<PostgresStore> {
        let (url, mode, root) = split_tls(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
        if let Some(password) = password {
            config.password(password);
        }
        // `prefer` without any CA to verify against connects in clear, as libpq would
        // when the server offers no TLS.
        let no_roots = root.is_none() && crate::alerts::roots::read_system_roots().is_none();
        let tls = match mode.as_str() {
            "disable" => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            "prefer" if no_roots => None,
            "prefer" | "require" | "verify-full" | "verify-ca" => {
                let ssl = if mode == "prefer" {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                };
                config.ssl_mode(ssl);
                Some(tls_config(root.as_deref())?)
            }
            other => {
                return Err(StoreError::Database(format!(
                    "unknown sslmode {other:?} (disable, prefer, require, verify-full)"
                )))
            }
        };
        let pool = |size: usize| {
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                None => Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config),
                Some(tls) => Manager::from_config(
                    config.clone(),
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()),
                    manager_config,
                ),
            };
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(POOL_WAIT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Database(format!("cannot build the pool: {e}")))
        };
        let store = PostgresStore {
            pool: pool(POOL_SIZE)?,
            reads: pool(READ_POOL_SIZE)?,
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    /// A connection of the write pool: for transactions and anything that writes.
    async fn client(&self) -> StoreResult<deadpool_postgres::Client> {
        connection(&self.pool).await
    }

    /// A connection of the read pool: only for statements that write nothing.
    async fn reader(&self) -> StoreResult<deadpool_postgres::Client> {
        connection(&self.reads).await
    }
}

async fn connection(pool: &Pool) -> StoreResult<deadpool_postgres::Client> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Database(format!("no database connection: {other}")),
    })
}

async fn rows<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> StoreResult<Vec<Row>> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.query(&statement, params).await.map_err(pg_error)
}

async fn exec<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> StoreResult<u64> {
    let statement = c.prepare_cached(sql).await.map_err(pg_error)?;
    c.execute(&statement, params).await.map_err(pg_error)
}

async fn number<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> StoreResult<u64> {
    let rows = rows(c, sql, params).await?;
    let value: Option<i64> = rows
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error)?
        .flatten();
    Ok(value.unwrap_or(0).max(0) as u64)
}

/// The first column of every row, as text.
async fn texts<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<std::collections::HashSet<String>> {
    let rows = rows(c, sql, params).await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(pg_error))
        .collect()
}

const HOST_COLUMNS: &str = "host_id, hostname, image_id, baseline_digest, state, state_since,
    first_seen, last_seen, last_heartbeat, heartbeat_interval, agent_version, mark_reason,
    marked_at, hold, hold_reason, unmarked_at, revoked, n_critical, n_high, n_medium, n_low,
    findings_dropped";

fn host_from_row(row: &Row) -> StoreResult<HostRecord> {
    let get = |e: tokio_postgres::Error| {
        StoreError::Corrupt(driftwatch_protocol::errors::error_chain(&e))
    };
    let tally = |i: usize| {
        row.try_get::<_, i64>(i)
            .map(|n| n.max(0) as u64)
            .map_err(get)
    };
    let hold: Option<String> = row.try_get(13).map_err(get)?;
    Ok(HostRecord {
        host_id: row.try_get(0).map_err(get)?,
        hostname: row.try_get(1).map_err(get)?,
        image_id: row.try_get(2).map_err(get)?,
        baseline_digest: row.try_get(3).map_err(get)?,
        state: parse_state(row.try_get(4).map_err(get)?)?,
        state_since_ms: row.try_get(5).map_err(get)?,
        first_seen_ms: row.try_get(6).map_err(get)?,
        last_seen_ms: row.try_get(7).map_err(get)?,
        last_heartbeat_ms: row.try_get(8).map_err(get)?,
        heartbeat_interval_secs: tally(9)?,
        agent_version: row.try_get(10).map_err(get)?,
        mark_reason: row.try_get(11).map_err(get)?,
        marked_at_ms: row.try_get(12).map_err(get)?,
        hold: hold.map(|h| Hold::parse(&h)).transpose()?,
        hold_reason: row.try_get(14).map_err(get)?,
        unmarked_at_ms: row.try_get(15).map_err(get)?,
        revoked: row.try_get(16).map_err(get)?,
        findings_by_severity: [tally(17)?, tally(18)?, tally(19)?, tally(20)?],
        findings_dropped: tally(21)?,
    })
}

const FINDING_COLUMNS: &str =
    "host_id, key, kind, severity, subject, finding, first_seen, last_seen";

fn finding_from_row(row: &Row) -> StoreResult<FindingRecord> {
    let get = |e: tokio_postgres::Error| {
        StoreError::Corrupt(driftwatch_protocol::errors::error_chain(&e))
    };
    let json: String = row.try_get(5).map_err(get)?;
    Ok(FindingRecord {
        host_id: row.try_get(0).map_err(get)?,
        key: row.try_get(1).map_err(get)?,
        kind: row.try_get(2).map_err(get)?,
        severity: severity_of(row.try_get(3).map_err(get)?)?,
        subject: row.try_get(4).map_err(get)?,
        finding: serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("a stored finding: {e}")))?,
        first_seen_ms: row.try_get(6).map_err(get)?,
        last_seen_ms: row.try_get(7).map_err(get)?,
    })
}

const IMAGE_COLUMNS: &str = "image_id, baseline_digest, signer, entries, created_at, registered";

fn image_from_row(row: &Row) -> StoreResult<ImageRecord> {
    let get = |e: tokio_postgres::Error| {
        StoreError::Corrupt(driftwatch_protocol::errors::error_chain(&e))
    };
    Ok(ImageRecord {
        image_id: row.try_get(0).map_err(get)?,
        baseline_digest: row.try_get(1).map_err(get)?,
        signer: row.try_get(2).map_err(get)?,
        entries: row.try_get::<_, i64>(3).map_err(get)?.max(0) as u64,
        created_at: row.try_get(4).map_err(get)?,
        registered_ms: row.try_get(5).map_err(get)?,
    })
}

fn action_from_row(row: &Row) -> StoreResult<ActionRecord> {
    let get = |e: tokio_postgres::Error| {
        StoreError::Corrupt(driftwatch_protocol::errors::error_chain(&e))
    };
    Ok(ActionRecord {
        id: row.try_get(0).map_err(get)?,
        at_ms: row.try_get(1).map_err(get)?,
        host_id: row.try_get(2).map_err(get)?,
        image_id: row.try_get(3).map_err(get)?,
        action: row.try_get(4).map_err(get)?,
        target: row.try_get(5).map_err(get)?,
        outcome: Outcome::parse(row.try_get(6).map_err(get)?)?,
        detail: row.try_get(7).map_err(get)?,
    })
}

fn map_rows<T>(rows: Vec<Row>, map: impl Fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(map).collect()
}

/// A SQL `LIMIT` (NULL: all).
fn limit_of(page: &PageRequest) -> Option<i64> {
    Some(fetch_limit(page.limit)).filter(|l| *l >= 0)
}

async fn load_host<C: GenericClient>(
    c: &C,
    host_id: &str,
    lock: bool,
) -> StoreResult<Option<HostRecord>> {
    let sql = if lock {
        format!("SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = $1 FOR UPDATE")
    } else {
        format!("SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = $1")
    };
    rows(c, &sql, &[&host_id])
        .await?
        .first()
        .map(host_from_row)
        .transpose()
}

async fn require_host<C: GenericClient>(c: &C, host_id: &str) -> StoreResult<HostRecord> {
    load_host(c, host_id, false)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "host",
            id: host_id.to_string(),
        })
}

async fn record_action<C: GenericClient>(c: &C, action: &ActionRecord) -> StoreResult<i64> {
    let at = if action.at_ms == 0 {
        super::now_ms()
    } else {
        action.at_ms
    };
    let rows = rows(
        c,
        "INSERT INTO actions (at, host_id, image_id, action, target, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &at,
            &action.host_id,
            &action.image_id,
            &action.action,
            &action.target,
            &action.outcome.name(),
            &action.detail,
        ],
    )
    .await?;
    rows.first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error)?
        .ok_or_else(|| StoreError::Database("no id for the action".into()))
}

async fn live_hosts<C: GenericClient>(c: &C, image_id: Option<&str>) -> StoreResult<u64> {
    number(
        c,
        "SELECT count(*) FROM hosts WHERE image_id IS NOT DISTINCT FROM $1 AND state != 'gone'",
        &[&image_id],
    )
    .await
}

async fn marked_since<C: GenericClient>(
    c: &C,
    image_id: Option<&str>,
    since: i64,
) -> StoreResult<u64> {
    number(
        c,
        "SELECT count(DISTINCT host_id) FROM marks
         WHERE image_id IS NOT DISTINCT FROM $1 AND at >= $2",
        &[&image_id, &since],
    )
    .await
}

async fn transition<C: GenericClient>(
    c: &C,
    host_id: &str,
    change: Transition,
    now: i64,
) -> StoreResult<HostRecord> {
    let host = require_host(c, host_id).await?;
    let set_state = |state: HostState| async move {
        exec(
            c,
            "UPDATE hosts SET state = $2,
                 state_since = CASE WHEN state = $2 THEN state_since ELSE $3 END
             WHERE host_id = $1",
            &[&host_id, &state.name(), &now],
        )
        .await
    };
    match change {
        Transition::Settle(state) => {
            set_state(state).await?;
            exec(
                c,
                "UPDATE hosts SET hold = NULL, hold_reason = NULL WHERE host_id = $1",
                &[&host_id],
            )
            .await?;
        }
        Transition::Mark { reason } => {
            set_state(HostState::Marked).await?;
            exec(
                c,
                "UPDATE hosts SET mark_reason = $2, marked_at = $3, hold = NULL, hold_reason = NULL
                 WHERE host_id = $1",
                &[&host_id, &reason, &now],
            )
            .await?;
            exec(
                c,
                "INSERT INTO marks (host_id, image_id, at) VALUES ($1, $2, $3)",
                &[&host_id, &host.image_id, &now],
            )
            .await?;
        }
        Transition::Hold { hold, reason } => {
            set_state(HostState::Drifted).await?;
            exec(
                c,
                "UPDATE hosts SET hold = $2, hold_reason = $3 WHERE host_id = $1",
                &[&host_id, &hold.name(), &reason],
            )
            .await?;
        }
        Transition::Unmark => {
            set_state(HostState::Drifted).await?;
            exec(
                c,
                "UPDATE hosts SET mark_reason = NULL, marked_at = NULL, hold = NULL,
                     hold_reason = NULL, unmarked_at = $2, told_at = NULL WHERE host_id = $1",
                &[&host_id, &now],
            )
            .await?;
            // A lifted mark replaced nothing: it gives its budget slot back.
            exec(c, "DELETE FROM marks WHERE host_id = $1", &[&host_id]).await?;
        }
        Transition::Silence => set_state(HostState::Silent).await.map(|_| ())?,
        Transition::Retire => set_state(HostState::Gone).await.map(|_| ())?,
    }
    require_host(c, host_id).await
}

/// Adds `delta` to the host's count of findings of a severity code.
async fn bump<C: GenericClient>(c: &C, host_id: &str, code: i64, delta: i64) -> StoreResult<()> {
    let sql = match code {
        3 => "UPDATE hosts SET n_critical = n_critical + $2 WHERE host_id = $1",
        2 => "UPDATE hosts SET n_high = n_high + $2 WHERE host_id = $1",
        1 => "UPDATE hosts SET n_medium = n_medium + $2 WHERE host_id = $1",
        _ => "UPDATE hosts SET n_low = n_low + $2 WHERE host_id = $1",
    };
    exec(c, sql, &[&host_id, &delta]).await.map(|_| ())
}

/// Inserts or refreshes one finding; `Some` when it is news (new, or changed).
/// `None` in `room` terms: `Err(())`-like dropped is reported through `dropped`.
async fn upsert_finding<C: GenericClient>(
    c: &C,
    host_id: &str,
    input: &FindingInput,
    now: i64,
    room: &mut u64,
    dropped: &mut u64,
) -> StoreResult<Option<FindingRecord>> {
    let existing = rows(
        c,
        "SELECT severity, finding, first_seen FROM findings WHERE host_id = $1 AND key = $2",
        &[&host_id, &input.key],
    )
    .await?;
    let code = severity_code(input.severity);
    let json = input.finding.to_string();
    let Some(row) = existing.first() else {
        if *room == 0 && input.key != TOO_MANY_FINDINGS_KEY {
            *dropped += 1;
            return Ok(None);
        }
        *room = room.saturating_sub(1);
        exec(
            c,
            "INSERT INTO findings (host_id, key, kind, severity, subject, finding, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            &[&host_id, &input.key, &input.kind, &code, &input.subject, &json, &now],
        )
        .await?;
        bump(c, host_id, code, 1).await?;
        return Ok(Some(input.record(host_id, now, now)));
    };
    let (old_code, old_json, first_seen): (i64, String, i64) = (
        row.try_get(0).map_err(pg_error)?,
        row.try_get(1).map_err(pg_error)?,
        row.try_get(2).map_err(pg_error)?,
    );
    exec(
        c,
        "UPDATE findings SET severity = $3, subject = $4, finding = $5, last_seen = $6
         WHERE host_id = $1 AND key = $2",
        &[&host_id, &input.key, &code, &input.subject, &json, &now],
    )
    .await?;
    if old_code != code {
        bump(c, host_id, old_code, -1).await?;
        bump(c, host_id, code, 1).await?;
    }
    let old: serde_json::Value = serde_json::from_str(&old_json).unwrap_or_default();
    Ok((old_code != code || changed(&old, &input.finding))
        .then(|| input.record(host_id, first_seen, now)))
}

/// Stores a batch (see the SQLite store's `store_batch`, which this mirrors).
async fn store_batch<C: GenericClient>(
    c: &C,
    record: &IngestRecord,
    max_findings: u64,
) -> StoreResult<(u32, u32, Vec<FindingRecord>, bool)> {
    let now = record.received_ms;
    let host_id = record.host_id.as_str();
    // The upsert locks the host's row until commit: batches of one host are decided
    // one after the other, whichever replicas receive them.
    let known = rows(
        c,
        "INSERT INTO hosts (host_id, hostname, image_id, baseline_digest, state,
             state_since, first_seen, last_seen)
         VALUES ($1, $2, $3, $4, 'clean', $5, $5, $5)
         ON CONFLICT (host_id) DO UPDATE SET hostname = $2, image_id = $3,
             baseline_digest = $4, last_seen = $5
         RETURNING revoked, xmax = 0",
        &[
            &host_id,
            &record.hostname,
            &record.image_id,
            &record.baseline_digest,
            &now,
        ],
    )
    .await?;
    let (revoked, first_contact): (bool, bool) = match known.first() {
        Some(row) => (
            row.try_get(0).map_err(pg_error)?,
            row.try_get(1).map_err(pg_error)?,
        ),
        None => (false, true),
    };
    if revoked {
        return Err(StoreError::Conflict(format!("host {host_id} is revoked")));
    }
    let batch = BatchFindings::of(record)?;
    if let Some((agent_version, interval_secs)) = &batch.heartbeat {
        let interval = i64::try_from(*interval_secs).unwrap_or(i64::MAX);
        exec(
            c,
            "UPDATE hosts SET last_heartbeat = $2, heartbeat_interval = $3, agent_version = $4
             WHERE host_id = $1",
            &[&host_id, &now, &interval, agent_version],
        )
        .await?;
    }
    if let Some(delta) = &batch.provisioned {
        exec(
            c,
            "INSERT INTO provisioning (host_id, received, delta) VALUES ($1, $2, $3)
             ON CONFLICT (host_id) DO UPDATE SET received = $2, delta = $3",
            &[&host_id, &now, delta],
        )
        .await?;
    }
    let stored = number(
        c,
        "SELECT n_critical + n_high + n_medium + n_low FROM hosts WHERE host_id = $1",
        &[&host_id],
    )
    .await?;
    let mut room = max_findings.saturating_sub(stored);
    let (mut accepted, mut duplicates, mut dropped) = (batch.heartbeats, 0u32, 0u64);
    let mut news = Vec::new();
    // As on SQLite: one statement records the events, one looks up the keys a host at
    // its bound has stored, and its new findings are only counted as dropped.
    let ids: Vec<&str> = batch.events.iter().map(|(id, _)| id.as_str()).collect();
    let mut fresh = texts(
        c,
        "INSERT INTO events (host_id, event_id, received)
         SELECT $1, id, $2 FROM unnest($3::TEXT[]) AS id
         ON CONFLICT DO NOTHING RETURNING event_id",
        &[&host_id, &now, &ids],
    )
    .await?;
    let stored_before = if room == 0 {
        let keys: Vec<&str> = (batch.events.iter())
            .filter(|(id, _)| fresh.contains(id))
            .map(|(_, input)| input.key.as_str())
            .collect();
        let sql = "SELECT key FROM findings WHERE host_id = $1 AND key = ANY($2::TEXT[])";
        Some(texts(c, sql, &[&host_id, &keys]).await?)
    } else {
        None
    };
    for (event_id, input) in &batch.events {
        if !fresh.remove(event_id) {
            duplicates += 1;
            continue;
        }
        accepted += 1;
        if stored_before
            .as_ref()
            .is_some_and(|keys| !keys.contains(&input.key) && input.key != TOO_MANY_FINDINGS_KEY)
        {
            dropped += 1;
            continue;
        }
        news.extend(upsert_finding(c, host_id, input, now, &mut room, &mut dropped).await?);
    }
    for input in &batch.collector {
        news.extend(upsert_finding(c, host_id, input, now, &mut room, &mut dropped).await?);
    }
    if dropped > 0 {
        let delta = i64::try_from(dropped).unwrap_or(i64::MAX);
        let total = number(
            c,
            "UPDATE hosts SET findings_dropped = findings_dropped + $2 WHERE host_id = $1
             RETURNING findings_dropped",
            &[&host_id, &delta],
        )
        .await?;
        let marker = too_many_findings(max_findings, total);
        news.extend(upsert_finding(c, host_id, &marker, now, &mut room, &mut dropped).await?);
    }
    Ok((accepted, duplicates, news, first_contact))
}

async fn enqueue<C: GenericClient>(
    c: &C,
    item: &OutboxItem,
    give_up: i64,
    now: i64,
) -> StoreResult<()> {
    let payload = serde_json::to_string(item)
        .map_err(|e| StoreError::Database(format!("cannot encode an outbox item: {e}")))?;
    exec(
        c,
        "INSERT INTO outbox (kind, payload, idempotency_key, state, created_at,
             next_attempt_at, give_up_at)
         VALUES ($1, $2, $3, 'pending', $4, $4, $5)",
        &[&item.kind(), &payload, &random_token(), &now, &give_up],
    )
    .await
    .map(|_| ())
}

async fn raise<C: GenericClient>(c: &C, o: &Occurrence, due: i64, now: i64) -> StoreResult<()> {
    let image = o.image_id.as_deref().unwrap_or("");
    let container = o.container.as_ref().map_or("", |c| c.id.as_str());
    let kind = o.kind.name();
    let new_member = exec(
        c,
        "INSERT INTO alert_hosts (kind, image_id, grp, host_id, container_id, pending, seen_at)
         VALUES ($1, $2, $3, $4, $5, TRUE, $6) ON CONFLICT DO NOTHING",
        &[&kind, &image, &o.group, &o.host_id, &container, &now],
    )
    .await?;
    if new_member == 0 {
        exec(
            c,
            "UPDATE alert_hosts SET seen_at = $6
             WHERE kind = $1 AND image_id = $2 AND grp = $3 AND host_id = $4
               AND container_id = $5 AND seen_at < $6::BIGINT - 3600000",
            &[&kind, &image, &o.group, &o.host_id, &container, &now],
        )
        .await?;
        return Ok(());
    }
    let severity = severity_code(o.severity);
    let container_image = o.container.as_ref().map(|c| c.image.as_str());
    // DO NOTHING takes no lock on an existing group: hosts of one change stored at
    // once do not wait for each other; the severity is raised only when higher.
    let created = exec(
        c,
        "INSERT INTO alert_groups (kind, image_id, grp, title, severity, detail, first_at, due_at,
             container_image)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        &[
            &kind,
            &image,
            &o.group,
            &o.title,
            &severity,
            &o.detail,
            &now,
            &due,
            &container_image,
        ],
    )
    .await?;
    if created == 0 {
        exec(
            c,
            "UPDATE alert_groups SET severity = $4
             WHERE kind = $1 AND image_id = $2 AND grp = $3 AND severity < $4",
            &[&kind, &image, &o.group, &severity],
        )
        .await?;
    }
    Ok(())
}

/// A PostgreSQL transaction, as the decisions use it.
pub(super) struct PgTx<'a>(&'a deadpool_postgres::Transaction<'a>);

impl DecisionTx for PgTx<'_> {
    async fn host(&mut self, host_id: &str) -> StoreResult<Option<HostRecord>> {
        load_host(self.0, host_id, true).await
    }

    async fn findings(&mut self, host_id: &str) -> StoreResult<Vec<FindingRecord>> {
        let sql = format!(
            "SELECT {FINDING_COLUMNS} FROM findings WHERE host_id = $1 ORDER BY severity DESC, key"
        );
        map_rows(rows(self.0, &sql, &[&host_id]).await?, finding_from_row)
    }

    /// The image's row in `budgets`, locked until commit: every replica's decision for
    /// the image waits here, and counts the window's marks only once the previous
    /// decision committed (READ COMMITTED gives each statement a fresh snapshot). A
    /// row lock rather than an advisory lock: it needs no session state (poolers),
    /// cannot leak past the transaction, and shows in `pg_locks` as what it is.
    ///
    /// Hosts with no registered image share the row keyed by the empty string, which no
    /// image id can be (PostgreSQL text cannot hold the NUL an earlier key used).
    async fn lock_budget(&mut self, image_id: Option<&str>) -> StoreResult<()> {
        let key = image_id.unwrap_or("");
        exec(
            self.0,
            "INSERT INTO budgets (image_key) VALUES ($1)
             ON CONFLICT (image_key) DO UPDATE SET image_key = excluded.image_key",
            &[&key],
        )
        .await
        .map(|_| ())
    }

    async fn live_hosts(&mut self, image_id: Option<&str>) -> StoreResult<u64> {
        live_hosts(self.0, image_id).await
    }

    async fn marked_since(&mut self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64> {
        marked_since(self.0, image_id, since_ms).await
    }

    async fn transition(
        &mut self,
        host_id: &str,
        change: Transition,
        now: i64,
    ) -> StoreResult<HostRecord> {
        transition(self.0, host_id, change, now).await
    }

    async fn record_action(&mut self, action: ActionRecord) -> StoreResult<()> {
        record_action(self.0, &action).await.map(|_| ())
    }

    async fn raise(&mut self, occurrence: &Occurrence, due_ms: i64, now: i64) -> StoreResult<()> {
        raise(self.0, occurrence, due_ms, now).await
    }

    async fn enqueue(&mut self, item: &OutboxItem, give_up_ms: i64, now: i64) -> StoreResult<()> {
        enqueue(self.0, item, give_up_ms, now).await
    }

    async fn set_told(&mut self, host_id: &str) -> StoreResult<bool> {
        exec(
            self.0,
            "UPDATE hosts SET told_at = last_seen WHERE host_id = $1 AND told_at IS NULL",
            &[&host_id],
        )
        .await
        .map(|n| n == 1)
    }

    async fn due_groups(&mut self, now: i64, limit: u32) -> StoreResult<Vec<DueGroup>> {
        let limit = i64::from(limit);
        let found = rows(
            self.0,
            "SELECT kind, image_id, grp, title, severity, detail, first_at, container_image
             FROM alert_groups
             WHERE due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &limit],
        )
        .await?;
        found
            .iter()
            .map(|r| {
                let kind: String = r.try_get(0).map_err(pg_error)?;
                let image: String = r.try_get(1).map_err(pg_error)?;
                Ok(DueGroup {
                    kind: AlertKind::from_name(&kind).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown alert kind {kind:?}"))
                    })?,
                    image_id: Some(image).filter(|i| !i.is_empty()),
                    group: r.try_get(2).map_err(pg_error)?,
                    title: r.try_get(3).map_err(pg_error)?,
                    severity: severity_of(r.try_get(4).map_err(pg_error)?)?,
                    detail: r.try_get(5).map_err(pg_error)?,
                    first_at_ms: r.try_get(6).map_err(pg_error)?,
                    container_image: r.try_get(7).map_err(pg_error)?,
                })
            })
            .collect()
    }

    async fn take_group(&mut self, due: &DueGroup) -> StoreResult<Taken> {
        let (kind, image) = (due.kind.name(), due.image_id.as_deref().unwrap_or(""));
        let key: [&(dyn ToSql + Sync); 3] = [&kind, &image, &due.group];
        let taken = rows(
            self.0,
            "UPDATE alert_hosts SET pending = FALSE
             WHERE kind = $1 AND image_id = $2 AND grp = $3 AND pending
             RETURNING host_id, container_id",
            &key,
        )
        .await?;
        let mut members: Vec<AlertContainer> = taken
            .iter()
            .map(|r| {
                Ok(AlertContainer {
                    host_id: r.try_get(0)?,
                    id: r.try_get(1)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        members.sort();
        let earlier = number(
            self.0,
            "SELECT count(*) FROM alert_hosts
             WHERE kind = $1 AND image_id = $2 AND grp = $3 AND NOT pending",
            &key,
        )
        .await?
        .saturating_sub(members.len() as u64);
        let all_hosts = number(
            self.0,
            "SELECT count(DISTINCT host_id) FROM alert_hosts
             WHERE kind = $1 AND image_id = $2 AND grp = $3",
            &key,
        )
        .await?;
        exec(
            self.0,
            "DELETE FROM alert_groups WHERE kind = $1 AND image_id = $2 AND grp = $3",
            &key,
        )
        .await?;
        Ok(Taken {
            members,
            earlier,
            all_hosts,
        })
    }
}

impl PostgresStore {
    /// Runs `flow` in a transaction on a pooled connection, committed when it succeeds;
    /// run again, with backoff, when PostgreSQL aborted it for a conflict with a
    /// concurrent transaction (up to [`TX_ATTEMPTS`] runs). `flow` must therefore be
    /// repeatable: it works on clones of its inputs, and what it wrote in an aborted
    /// run is rolled back with it.
    async fn in_tx<T, F>(&self, mut flow: F) -> StoreResult<T>
    where
        F: for<'t> FnMut(&'t deadpool_postgres::Transaction<'t>) -> TxFuture<'t, T>,
    {
        let mut backoff = driftwatch_protocol::backoff::Backoff::new(TX_RETRY_FIRST, TX_RETRY_MAX);
        let mut run = 1;
        loop {
            match self.run_tx(&mut flow).await {
                Err(StoreError::Contended(message)) if run < TX_ATTEMPTS => {
                    tracing::debug!(run, "transaction conflict, running it again: {message}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    run += 1;
                }
                result => return result,
            }
        }
    }

    /// One run of `flow` in a transaction (rolled back when it fails).
    async fn run_tx<T, F>(&self, flow: &mut F) -> StoreResult<T>
    where
        F: for<'t> FnMut(&'t deadpool_postgres::Transaction<'t>) -> TxFuture<'t, T>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let result = flow(&tx).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(result)
    }
}

/// The future of a flow inside a transaction.
type TxFuture<'t, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<T>> + Send + 't>>;

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(
        &self,
        record: IngestRecord,
        policy: Arc<Policy>,
    ) -> StoreResult<IngestOutcome> {
        self.in_tx(move |tx| {
            let (record, policy) = (record.clone(), policy.clone());
            Box::pin(async move {
                let (accepted, duplicates, new_findings, first_contact) =
                    store_batch(tx, &record, policy.max_findings_per_host).await?;
                let host = require_host(tx, &record.host_id).await?;
                let mut pg = PgTx(tx);
                let decided = Decider::new(&mut pg, &policy, record.received_ms)
                    .after_ingest(host, &new_findings)
                    .await?;
                Ok(IngestOutcome {
                    accepted,
                    duplicates,
                    new_findings,
                    host: decided.host,
                    first_contact,
                    budget_stopped: decided.budget_stopped,
                })
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
        self.in_tx(move |tx| {
            let (host_id, request, policy) = (host_id.clone(), request.clone(), policy.clone());
            Box::pin(async move {
                let mut pg = PgTx(tx);
                Decider::new(&mut pg, &policy, super::now_ms())
                    .request(&host_id, request)
                    .await
            })
        })
        .await
    }

    async fn host(&self, host_id: &str) -> StoreResult<Option<HostRecord>> {
        load_host(&self.reader().await?, host_id, false).await
    }

    async fn hosts(&self, filter: HostFilter) -> StoreResult<Page<HostRecord>> {
        let (has, number, text) = cursor_params(&filter.page);
        let state = filter.state.map(HostState::name);
        // A plain `state = $1` when filtering by state, so that the planner walks
        // the index of the state and the order instead of every host.
        let by_state = match state {
            Some(_) => "state = $1",
            None => "$1::TEXT IS NULL",
        };
        let severe = match filter.min_severity {
            Some(_) => "severity_rank >= $7",
            None => "$7::BIGINT IS NULL",
        };
        // A page after the first starts with a range on the order's key, so that the
        // index is entered at the cursor instead of walked from the top.
        let after = match (&filter.page.after, filter.sort) {
            (None, _) => "(NOT $4 OR $5::BIGINT IS NULL OR $6::TEXT IS NULL)",
            (Some(_), HostSort::LastSeen) => {
                "($4 AND last_seen <= $5 AND (last_seen < $5 OR host_id > $6))"
            }
            (Some(_), HostSort::Id) => "($4 AND $5::BIGINT IS NOT NULL AND host_id > $6)",
            (Some(_), HostSort::Severity) => {
                "($4 AND severity_rank <= $5 AND (severity_rank < $5 OR host_id > $6))"
            }
        };
        let min_rank = filter.min_severity.map(super::severity_rank_at_least);
        let found = rows(
            &self.reader().await?,
            &format!(
                "SELECT {HOST_COLUMNS} FROM hosts
                 WHERE {by_state} AND ($2::TEXT IS NULL OR image_id = $2) AND {severe}
                   AND {after}
                 ORDER BY {} LIMIT $3",
                filter.sort.order_by()
            ),
            &[
                &state,
                &filter.image_id,
                &limit_of(&filter.page),
                &has,
                &number,
                &text,
                &min_rank,
            ],
        )
        .await?;
        let hosts = map_rows(found, host_from_row)?;
        Ok(Page::of(hosts, filter.page.limit, |h| {
            filter.sort.cursor_of(h)
        }))
    }

    async fn findings(&self, host_id: &str, page: PageRequest) -> StoreResult<Page<FindingRecord>> {
        let (has, number, text) = cursor_params(&page);
        let found = rows(
            &self.reader().await?,
            &format!(
                "SELECT {FINDING_COLUMNS} FROM findings WHERE host_id = $1
                   AND (NOT $3 OR severity < $4 OR (severity = $4 AND key > $5))
                 ORDER BY severity DESC, key LIMIT $2"
            ),
            &[&host_id, &limit_of(&page), &has, &number, &text],
        )
        .await?;
        let findings = map_rows(found, finding_from_row)?;
        Ok(Page::of(findings, page.limit, |f| Cursor {
            number: severity_code(f.severity),
            text: f.key.clone(),
        }))
    }

    async fn provisioning(&self, host_id: &str) -> StoreResult<Option<serde_json::Value>> {
        let found = rows(
            &self.reader().await?,
            "SELECT delta FROM provisioning WHERE host_id = $1",
            &[&host_id],
        )
        .await?;
        let delta: Option<String> = found
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(pg_error)?;
        parse_delta(delta)
    }

    async fn transition(
        &self,
        host_id: &str,
        change: Transition,
        at_ms: i64,
    ) -> StoreResult<HostRecord> {
        let host_id = host_id.to_string();
        self.in_tx(move |tx| {
            let (host_id, change) = (host_id.clone(), change.clone());
            Box::pin(async move { transition(tx, &host_id, change, at_ms).await })
        })
        .await
    }

    async fn marked_since(&self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64> {
        marked_since(&self.reader().await?, image_id, since_ms).await
    }

    async fn live_hosts_on_image(&self, image_id: Option<&str>) -> StoreResult<u64> {
        live_hosts(&self.reader().await?, image_id).await
    }

    async fn overdue_hosts(&self, missed: u32, now_ms: i64) -> StoreResult<Vec<String>> {
        let missed = i64::from(missed);
        let found = rows(
            &self.reader().await?,
            "SELECT host_id FROM hosts
             WHERE state NOT IN ('silent', 'gone') AND heartbeat_interval > 0
               AND coalesce(last_heartbeat, first_seen) + heartbeat_interval * 1000 * $1 < $2",
            &[&missed, &now_ms],
        )
        .await?;
        found
            .iter()
            .map(|r| r.try_get(0).map_err(pg_error))
            .collect()
    }

    async fn held_hosts(&self, hold: Hold) -> StoreResult<Vec<String>> {
        let found = rows(
            &self.reader().await?,
            "SELECT host_id FROM hosts WHERE state = 'drifted' AND hold = $1",
            &[&hold.name()],
        )
        .await?;
        found
            .iter()
            .map(|r| r.try_get(0).map_err(pg_error))
            .collect()
    }

    async fn held(&self, hold: Hold, limit: u32) -> StoreResult<super::HeldHosts> {
        dashboard::held(&self.client().await?, hold, limit).await
    }

    async fn findings_of(
        &self,
        host_ids: Vec<String>,
        per_host: u32,
    ) -> StoreResult<Vec<FindingRecord>> {
        dashboard::findings_of(&self.client().await?, &host_ids, per_host).await
    }

    async fn hosts_by_image_state(&self) -> StoreResult<Vec<super::ImageStates>> {
        dashboard::hosts_by_image_state(&self.client().await?).await
    }

    async fn marked_by_image(&self, since_ms: i64) -> StoreResult<Vec<(Option<String>, u64)>> {
        dashboard::marked_by_image(&self.client().await?, since_ms).await
    }

    async fn keep_baseline(&self, image_id: &str, baseline: Option<Vec<u8>>) -> StoreResult<()> {
        dashboard::keep_baseline(&self.client().await?, image_id, baseline.as_deref()).await
    }

    async fn kept_baseline(&self, image_id: &str) -> StoreResult<Option<Vec<u8>>> {
        dashboard::kept_baseline(&self.client().await?, image_id).await
    }

    async fn open_session(&self, session: super::SessionRecord, max: u64) -> StoreResult<()> {
        self.in_tx(move |tx| {
            let session = session.clone();
            Box::pin(
                async move { dashboard::open_session(tx, &session, max, super::now_ms()).await },
            )
        })
        .await
    }

    async fn session(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> StoreResult<Option<super::SessionRecord>> {
        dashboard::session(&self.client().await?, id_hash, now_ms).await
    }

    async fn close_session(&self, id_hash: &str) -> StoreResult<()> {
        dashboard::close_session(&self.client().await?, id_hash).await
    }

    async fn expire_hosts(&self, before_ms: i64) -> StoreResult<u64> {
        self.in_tx(move |tx| {
            Box::pin(async move {
                let doomed = "SELECT host_id FROM hosts
                              WHERE state IN ('silent', 'gone') AND state_since < $1";
                for table in ["events", "findings"] {
                    let sql = format!("DELETE FROM {table} WHERE host_id IN ({doomed})");
                    exec(tx, &sql, &[&before_ms]).await?;
                }
                trust::expire(tx, before_ms).await?;
                exec(
                    tx,
                    "DELETE FROM hosts WHERE state IN ('silent', 'gone') AND state_since < $1",
                    &[&before_ms],
                )
                .await
            })
        })
        .await
    }

    async fn bind(&self, binding: Binding) -> StoreResult<Enrolled> {
        self.in_tx(move |tx| {
            let binding = binding.clone();
            Box::pin(async move { trust::bind(tx, &binding).await })
        })
        .await
    }

    async fn admission(&self, host_id: &str, key_fingerprint: &str) -> StoreResult<Admission> {
        trust::admission(&self.client().await?, host_id, key_fingerprint).await
    }

    async fn revoke(&self, host_id: &str, at_ms: i64) -> StoreResult<bool> {
        let host_id = host_id.to_string();
        self.in_tx(move |tx| {
            let host_id = host_id.clone();
            Box::pin(async move { trust::revoke(tx, &host_id, at_ms).await })
        })
        .await
    }

    async fn create_token(&self, token: TokenRecord, hash: String) -> StoreResult<()> {
        trust::create_token(&self.client().await?, &token, &hash).await
    }

    async fn token(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        trust::token(&self.reader().await?, hash).await
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        trust::tokens(&self.reader().await?).await
    }

    async fn revoke_token(&self, name: &str, at_ms: i64) -> StoreResult<bool> {
        trust::revoke_token(&self.client().await?, name, at_ms).await
    }

    async fn register_image(&self, image: ImageRecord) -> StoreResult<()> {
        let entries = i64::try_from(image.entries).unwrap_or(i64::MAX);
        exec(
            &self.client().await?,
            "INSERT INTO images (image_id, baseline_digest, signer, entries, created_at, registered)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (image_id) DO UPDATE SET baseline_digest = $2, signer = $3,
                 entries = $4, created_at = $5, registered = $6",
            &[
                &image.image_id,
                &image.baseline_digest,
                &image.signer,
                &entries,
                &image.created_at,
                &image.registered_ms,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn image(&self, image_id: &str) -> StoreResult<Option<ImageRecord>> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = $1");
        rows(&self.reader().await?, &sql, &[&image_id])
            .await?
            .first()
            .map(image_from_row)
            .transpose()
    }

    async fn images(&self, page: PageRequest) -> StoreResult<Page<ImageRecord>> {
        let (has, number, text) = cursor_params(&page);
        let found = rows(
            &self.reader().await?,
            &format!(
                "SELECT {IMAGE_COLUMNS} FROM images
                 WHERE NOT $2 OR registered < $3 OR (registered = $3 AND image_id > $4)
                 ORDER BY registered DESC, image_id LIMIT $1"
            ),
            &[&limit_of(&page), &has, &number, &text],
        )
        .await?;
        let images = map_rows(found, image_from_row)?;
        Ok(Page::of(images, page.limit, |i| Cursor {
            number: i.registered_ms,
            text: i.image_id.clone(),
        }))
    }

    async fn record_action(&self, action: ActionRecord) -> StoreResult<i64> {
        record_action(&self.client().await?, &action).await
    }

    async fn actions(&self, filter: ActionFilter) -> StoreResult<Page<ActionRecord>> {
        let (has, number, _) = cursor_params(&filter.page);
        let found = rows(
            &self.reader().await?,
            "SELECT id, at, host_id, image_id, action, target, outcome, detail FROM actions
             WHERE ($1::TEXT IS NULL OR host_id = $1) AND (NOT $3 OR id < $4)
             ORDER BY id DESC LIMIT $2",
            &[&filter.host_id, &limit_of(&filter.page), &has, &number],
        )
        .await?;
        let actions = map_rows(found, action_from_row)?;
        Ok(Page::of(actions, filter.page.limit, |a| Cursor {
            number: a.id,
            text: String::new(),
        }))
    }

    async fn counts(&self) -> StoreResult<FleetCounts> {
        let client = self.reader().await?;
        let mut counts = FleetCounts::default();
        for row in rows(
            &client,
            "SELECT state, count(*) FROM hosts GROUP BY state",
            &[],
        )
        .await?
        {
            let state: String = row.try_get(0).map_err(pg_error)?;
            let count: i64 = row.try_get(1).map_err(pg_error)?;
            let index = HostState::ALL
                .iter()
                .position(|s| s.name() == state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown host state {state:?}")))?;
            counts.hosts_by_state[index] = count.max(0) as u64;
        }
        let sums = rows(
            &client,
            "SELECT coalesce(sum(n_critical), 0)::BIGINT, coalesce(sum(n_high), 0)::BIGINT,
                    coalesce(sum(n_medium), 0)::BIGINT, coalesce(sum(n_low), 0)::BIGINT
             FROM hosts",
            &[],
        )
        .await?;
        if let Some(row) = sums.first() {
            for (i, slot) in counts.findings_by_severity.iter_mut().enumerate() {
                *slot = row.try_get::<_, i64>(i).map_err(pg_error)?.max(0) as u64;
            }
        }
        counts.images = number(&client, "SELECT count(*) FROM images", &[]).await?;
        counts.pending_alerts = number(&client, "SELECT count(*) FROM alert_groups", &[]).await?
            + number(
                &client,
                "SELECT count(*) FROM outbox WHERE state = 'pending' AND kind = 'webhook'",
                &[],
            )
            .await?;
        counts.pending_commands = number(
            &client,
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND kind = 'command'",
            &[],
        )
        .await?;
        Ok(counts)
    }

    async fn announce_mark(
        &self,
        host: HostRecord,
        reason: String,
        policy: Arc<Policy>,
    ) -> StoreResult<()> {
        self.in_tx(move |tx| {
            let (host, reason, policy) = (host.clone(), reason.clone(), policy.clone());
            Box::pin(async move {
                let mut pg = PgTx(tx);
                Decider::new(&mut pg, &policy, super::now_ms())
                    .announce_mark(&host, reason)
                    .await
            })
        })
        .await
    }

    async fn raise(&self, occurrences: Vec<Occurrence>, policy: Arc<Policy>) -> StoreResult<()> {
        self.in_tx(move |tx| {
            let (occurrences, policy) = (occurrences.clone(), policy.clone());
            Box::pin(async move {
                let now = super::now_ms();
                for occurrence in &occurrences {
                    raise(tx, occurrence, now + policy.group_wait_ms, now).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn flush_alerts(&self, now_ms: i64, policy: Arc<Policy>) -> StoreResult<Vec<AlertKind>> {
        self.in_tx(move |tx| {
            let policy = policy.clone();
            Box::pin(async move { flush_alerts(&mut PgTx(tx), &policy, now_ms).await })
        })
        .await
    }

    async fn forget_alerted(&self, before_ms: i64) -> StoreResult<u64> {
        let client = self.client().await?;
        exec(
            &client,
            "DELETE FROM outbox WHERE state != 'pending' AND created_at < $1",
            &[&before_ms],
        )
        .await?;
        exec(
            &client,
            "DELETE FROM alert_hosts WHERE NOT pending AND seen_at < $1",
            &[&before_ms],
        )
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
        let (limit, until) = (i64::from(limit), now_ms.saturating_add(lease_ms));
        let found = rows(
            &self.client().await?,
            "UPDATE outbox SET claimed_by = $1, claim_expires_at = $3, attempts = attempts + 1
             WHERE id IN (SELECT id FROM outbox
                 WHERE state = 'pending' AND kind = $5 AND next_attempt_at <= $2
                   AND (claimed_by IS NULL OR claim_expires_at < $2)
                 ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
             RETURNING id, payload, idempotency_key, attempts, give_up_at",
            &[&replica, &now_ms, &until, &limit, &kind],
        )
        .await?;
        found
            .iter()
            .map(|r| {
                let id: i64 = r.try_get(0).map_err(pg_error)?;
                let payload: String = r.try_get(1).map_err(pg_error)?;
                Claim::from_stored(
                    id,
                    &payload,
                    r.try_get(2).map_err(pg_error)?,
                    r.try_get(3).map_err(pg_error)?,
                    r.try_get(4).map_err(pg_error)?,
                )
            })
            .collect()
    }

    async fn finish(&self, id: i64, replica: &str, finish: Finish) -> StoreResult<bool> {
        let replica = replica.to_string();
        self.in_tx(move |tx| {
            let (replica, finish) = (replica.clone(), finish.clone());
            Box::pin(async move {
                let ours = match &finish {
                    Finish::Done(action) => {
                        let state = if action.outcome == Outcome::Ok { "done" } else { "failed" };
                        exec(
                            tx,
                            "UPDATE outbox SET state = $3, claimed_by = NULL, claim_expires_at = NULL
                             WHERE id = $1 AND claimed_by = $2",
                            &[&id, &replica, &state],
                        )
                        .await?
                    }
                    Finish::Retry { at_ms, error } => {
                        exec(
                            tx,
                            "UPDATE outbox SET claimed_by = NULL, claim_expires_at = NULL,
                                 next_attempt_at = $3, last_error = $4
                             WHERE id = $1 AND claimed_by = $2",
                            &[&id, &replica, at_ms, error],
                        )
                        .await?
                    }
                } == 1;
                if let (true, Finish::Done(action)) = (ours, &finish) {
                    record_action(tx, action).await?;
                }
                Ok(ours)
            })
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
        let until = now_ms.saturating_add(ttl_ms);
        exec(
            &self.client().await?,
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                 expires_at = excluded.expires_at
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            &[&name, &replica, &until, &now_ms],
        )
        .await
        .map(|n| n == 1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! A fresh database per test, under the admin URL in `DRIFTWATCH_TEST_POSTGRES`.

    use super::*;

    /// The variable naming the PostgreSQL server tests may create databases on.
    const ADMIN_URL: &str = "DRIFTWATCH_TEST_POSTGRES";

    /// A database of one test; dropped (with its connections) at the end.
    pub(crate) struct PgTestDb {
        admin: String,
        name: String,
        url: String,
    }

    async fn admin(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ADMIN_URL}: {e}"));
        tokio::spawn(connection);
        client
    }

    /// The URL of database `name` on the server of `admin`.
    fn database_url(admin: &str, name: &str) -> String {
        let (base, query) = admin
            .split_once('?')
            .map_or((admin, None), |(b, q)| (b, Some(q)));
        let server = match base.find("://").map(|i| i + 3) {
            Some(start) => match base[start..].find('/') {
                Some(slash) => &base[..start + slash],
                None => base,
            },
            None => base,
        };
        match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}?sslmode=disable"),
        }
    }

    impl PgTestDb {
        /// A new database, or `None` (said why) when no server is configured; with
        /// `CI=true` a missing server is a failure.
        pub(crate) async fn create() -> Option<PgTestDb> {
            let Ok(admin_url) = std::env::var(ADMIN_URL) else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{ADMIN_URL} is not set: CI must run the PostgreSQL half of the store tests"
                );
                eprintln!("skipping the PostgreSQL half: {ADMIN_URL} is not set");
                return None;
            };
            let name = format!("driftwatch_test_{}", &random_token()[..16]);
            let client = admin(&admin_url).await;
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            // Commits need not wait for the disk in a database dropped after the
            // test: locking and visibility are the same.
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {name} SET synchronous_commit = off"
                ))
                .await
                .unwrap();
            Some(PgTestDb {
                url: database_url(&admin_url, &name),
                admin: admin_url,
                name,
            })
        }

        /// A new store handle (a replica) on the database.
        pub(crate) async fn open(&self) -> PostgresStore {
            PostgresStore::connect(&self.url, None).await.unwrap()
        }

        /// Runs SQL beside the store.
        pub(crate) async fn execute(&self, sql: &str) {
            admin(&self.url).await.batch_execute(sql).await.unwrap();
        }
    }

    impl Drop for PgTestDb {
        fn drop(&mut self) {
            let (admin_url, name) = (self.admin.clone(), self.name.clone());
            // Drop runs inside the test's runtime, which cannot be blocked on: a thread
            // with a runtime of its own drops the database.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    let (client, connection) =
                        tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                            .await
                            .ok()?;
                    tokio::spawn(connection);
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok()
                })
            })
            .join();
            if !matches!(dropped, Ok(Some(()))) {
                eprintln!("could not drop test database {}", self.name);
            }
        }
    }

    /// What one side of a race does, in its transaction: its isolation level, then
    /// its first statement, then (once both sides did their first) its second.
    type Side = (&'static str, &'static str, &'static str);

    /// Runs two sides at once on a table `pair` of two rows, the first run of each
    /// waiting for the other's first statement; the runs each side took and the sum
    /// of the table afterwards.
    async fn race(sides: [Side; 2]) -> Option<(Vec<u32>, u64)> {
        let db = PgTestDb::create().await?;
        db.execute(
            "CREATE TABLE pair (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO pair VALUES (1, 0), (2, 0);",
        )
        .await;
        let store = Arc::new(db.open().await);
        let both_did_one = Arc::new(tokio::sync::Barrier::new(2));
        let spawned = sides.map(|(isolation, first, second)| {
            let (store, both_did_one) = (store.clone(), both_did_one.clone());
            tokio::spawn(async move {
                let mut runs = 0u32;
                store
                    .in_tx(move |tx| {
                        runs += 1;
                        let (run, both_did_one) = (runs, both_did_one.clone());
                        Box::pin(async move {
                            let level = format!("SET TRANSACTION ISOLATION LEVEL {isolation}");
                            tx.batch_execute(&level).await.map_err(pg_error)?;
                            exec(tx, first, &[]).await?;
                            if run == 1 {
                                both_did_one.wait().await;
                            }
                            exec(tx, second, &[]).await?;
                            Ok(run)
                        })
                    })
                    .await
            })
        });
        let mut runs = Vec::new();
        for side in spawned {
            runs.push(
                side.await
                    .unwrap()
                    .expect("the conflicted side succeeds when re-run"),
            );
        }
        runs.sort();
        let client = store.client().await.unwrap();
        let sum = number(&client, "SELECT sum(n) FROM pair", &[])
            .await
            .unwrap();
        Some((runs, sum))
    }

    /// Two transactions locking two rows in opposite orders deadlock for real:
    /// PostgreSQL aborts one side (40P01) and `in_tx` runs it again after the other
    /// committed, so both succeed, each write once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlocked_transaction_is_run_again_and_succeeds() {
        let one = "UPDATE pair SET n = n + 1 WHERE id = 1";
        let two = "UPDATE pair SET n = n + 1 WHERE id = 2";
        let level = "READ COMMITTED";
        if let Some((runs, sum)) = race([(level, one, two), (level, two, one)]).await {
            assert_eq!(runs, [1, 2], "one side deadlocked and ran a second time");
            assert_eq!(sum, 4, "both rows bumped by both transactions, once each");
        }
    }

    /// Two serializable transactions each reading the row the other writes (write
    /// skew): one fails to serialize (40001) and is run again, then succeeds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_serialization_failure_is_run_again_and_succeeds() {
        let level = "SERIALIZABLE";
        let sides = [
            (
                level,
                "SELECT n FROM pair WHERE id = 1",
                "UPDATE pair SET n = n + 1 WHERE id = 2",
            ),
            (
                level,
                "SELECT n FROM pair WHERE id = 2",
                "UPDATE pair SET n = n + 1 WHERE id = 1",
            ),
        ];
        if let Some((runs, sum)) = race(sides).await {
            assert_eq!(
                runs,
                [1, 2],
                "one side failed to serialize and ran a second time"
            );
            assert_eq!(sum, 2, "each row bumped once");
        }
    }

    /// Every connection of the write pool held in an open transaction that wrote a
    /// host (as ingest under load holds them): the operator's reads are still served
    /// at once, from the read pool, and see the last committed rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_served_while_every_write_connection_is_busy() {
        let Some(db) = PgTestDb::create().await else {
            return;
        };
        let store = db.open().await;
        db.execute(
            "INSERT INTO hosts (host_id, hostname, state, state_since, first_seen, last_seen)
             VALUES ('h1', 'h1', 'clean', 1, 1, 1)",
        )
        .await;
        let mut held = Vec::new();
        for i in 0..POOL_SIZE {
            // One writes the host (the others would wait for its row lock), the rest
            // only hold a transaction open.
            let sql = if i == 0 {
                "BEGIN; UPDATE hosts SET last_seen = last_seen + 1"
            } else {
                "BEGIN; SELECT 1"
            };
            let client = store.client().await.unwrap();
            client.batch_execute(sql).await.unwrap();
            held.push(client);
        }
        let status = store.pool.status();
        assert_eq!((status.size, status.available), (POOL_SIZE, 0));
        let prompt = std::time::Duration::from_secs(2);
        assert!(
            prompt < POOL_WAIT,
            "a read on the write pool would time out"
        );
        let hosts = tokio::time::timeout(prompt, store.hosts(HostFilter::default()))
            .await
            .expect("the hosts page answers while the write pool is exhausted")
            .unwrap();
        let seen: Vec<_> = hosts
            .items
            .iter()
            .map(|h| (h.host_id.as_str(), h.last_seen_ms))
            .collect();
        assert_eq!(seen, [("h1", 1)], "the uncommitted write is not seen");
        let counts = tokio::time::timeout(prompt, store.counts())
            .await
            .expect("the counts answer while the write pool is exhausted")
            .unwrap();
        assert_eq!(counts.hosts_by_state.iter().sum::<u64>(), 1);
        drop(held);
    }

    #[test]
    fn tls_settings_leave_the_url() {
        assert_eq!(
            split_tls(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x"
            ),
            (
                "postgres://u@h/db?application_name=x".to_string(),
                "verify-full".to_string(),
                Some("/ca.pem".to_string())
            )
        );
        assert_eq!(split_tls("postgres://u@h/db").1, "prefer");
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1?sslmode=disable"
        );
    }
}
