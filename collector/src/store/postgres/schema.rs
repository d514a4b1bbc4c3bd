//! The PostgreSQL schema: numbered migrations, applied in order inside one
//! transaction each, recorded in `driftwatch_migrations`. Replicas starting at once
//! take turns: the first takes a transaction-scoped advisory lock and migrates, the
//! others wait for it and find nothing left to do.

use super::pg_error;
use crate::store::{StoreError, StoreResult};

/// Numbered migrations; never edit one that has shipped, add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the first release.
    r#"
CREATE TABLE hosts (
    host_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    image_id TEXT,
    baseline_digest TEXT,
    state TEXT NOT NULL,
    state_since BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    last_heartbeat BIGINT,
    heartbeat_interval BIGINT NOT NULL DEFAULT 0,
    agent_version TEXT,
    mark_reason TEXT,
    marked_at BIGINT,
    hold TEXT,
    hold_reason TEXT,
    unmarked_at BIGINT,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    credential TEXT,
    enrolled_at BIGINT,
    n_critical BIGINT NOT NULL DEFAULT 0,
    n_high BIGINT NOT NULL DEFAULT 0,
    n_medium BIGINT NOT NULL DEFAULT 0,
    n_low BIGINT NOT NULL DEFAULT 0,
    findings_dropped BIGINT NOT NULL DEFAULT 0,
    told_at BIGINT
);
CREATE INDEX hosts_by_image ON hosts (image_id, state);
CREATE INDEX hosts_by_state ON hosts (state, state_since);
CREATE INDEX hosts_by_last_seen ON hosts (last_seen DESC, host_id);
CREATE TABLE events (
    host_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received BIGINT NOT NULL,
    PRIMARY KEY (host_id, event_id)
);
CREATE TABLE findings (
    host_id TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity BIGINT NOT NULL,
    subject TEXT NOT NULL,
    finding TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (host_id, key)
);
CREATE INDEX findings_by_severity ON findings (host_id, severity DESC, key);
CREATE TABLE images (
    image_id TEXT PRIMARY KEY,
    baseline_digest TEXT NOT NULL,
    signer TEXT,
    entries BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    registered BIGINT NOT NULL
);
CREATE INDEX images_by_registered ON images (registered DESC, image_id);
CREATE TABLE actions (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
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
    at BIGINT NOT NULL
);
CREATE INDEX marks_by_image ON marks (image_id, at);
CREATE TABLE budgets (
    image_key TEXT PRIMARY KEY
);
CREATE TABLE alert_groups (
    kind TEXT NOT NULL,
    image_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    title TEXT NOT NULL,
    severity BIGINT NOT NULL,
    detail TEXT NOT NULL,
    first_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    PRIMARY KEY (kind, image_id, grp)
);
CREATE INDEX alert_groups_due ON alert_groups (due_at);
CREATE TABLE alert_hosts (
    kind TEXT NOT NULL,
    image_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    host_id TEXT NOT NULL,
    pending BOOLEAN NOT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (kind, image_id, grp, host_id)
);
CREATE INDEX alert_hosts_seen ON alert_hosts (seen_at);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    give_up_at BIGINT NOT NULL,
    claimed_by TEXT,
    claim_expires_at BIGINT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (state, kind, next_attempt_at);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE provisioning (
    host_id TEXT PRIMARY KEY,
    received BIGINT NOT NULL,
    delta TEXT NOT NULL
);
"#,
    // 2: trust: named tokens (hashes only), key bindings, lasting revocations.
    r#"
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    uses_left BIGINT,
    host_ids TEXT,
    images TEXT,
    revoked_at BIGINT
);
CREATE TABLE credentials (
    host_id TEXT PRIMARY KEY,
    key_fingerprint TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    source TEXT NOT NULL,
    token TEXT,
    images TEXT,
    daemon BOOLEAN NOT NULL DEFAULT TRUE,
    bound_at BIGINT NOT NULL
);
CREATE TABLE revocations (
    key_fingerprint TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    host_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revocations_by_serial ON revocations (serial);
"#,
    // 3: alert groups of a change inside containers: their members are containers,
    // and the group knows the containers' image.
    r#"
ALTER TABLE alert_groups ADD COLUMN container_image TEXT;
ALTER TABLE alert_hosts ADD COLUMN container_id TEXT NOT NULL DEFAULT '';
ALTER TABLE alert_hosts DROP CONSTRAINT alert_hosts_pkey;
ALTER TABLE alert_hosts ADD PRIMARY KEY (kind, image_id, grp, host_id, container_id);
"#,
    // 4: the dashboard: hosts of a state, held hosts and marks in the window
    // found by index, the baselines it compares, its sessions (shared by
    // every replica).
    r#"
CREATE INDEX hosts_held ON hosts (hold, state, host_id) WHERE hold IS NOT NULL;
CREATE INDEX hosts_by_state_seen ON hosts (state, last_seen DESC, host_id);
CREATE INDEX marks_by_time ON marks (at, image_id, host_id);
CREATE TABLE baselines (
    image_id TEXT PRIMARY KEY,
    baseline BYTEA NOT NULL
);
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);
"#,
    // 5: enroll tokens of hosts without a daemon.
    r#"
ALTER TABLE tokens ADD COLUMN daemon BOOLEAN NOT NULL DEFAULT TRUE;
"#,
    // 6: the hosts page: most severe first and "at least this severe" by one
    // index on the findings' counts (crate::store::severity_rank, the same
    // formula), by id, each also within a state.
    r#"
ALTER TABLE hosts ADD COLUMN severity_rank BIGINT GENERATED ALWAYS AS (
        (CASE WHEN n_critical < 0 THEN 0 WHEN n_critical > 32767 THEN 32767 ELSE n_critical END) * 35184372088832
        + (CASE WHEN n_high < 0 THEN 0 WHEN n_high > 32767 THEN 32767 ELSE n_high END) * 1073741824
        + (CASE WHEN n_medium < 0 THEN 0 WHEN n_medium > 32767 THEN 32767 ELSE n_medium END) * 32768
        + (CASE WHEN n_low < 0 THEN 0 WHEN n_low > 32767 THEN 32767 ELSE n_low END)) STORED;
CREATE INDEX hosts_by_severity ON hosts (severity_rank DESC, host_id);
CREATE INDEX hosts_by_state_severity ON hosts (state, severity_rank DESC, host_id);
CREATE INDEX hosts_by_state_id ON hosts (state, host_id);
"#,
];

/// The advisory lock key the migrating replica holds ("driftwatch" in ASCII, cut).
const MIGRATION_LOCK: i64 = 0x6472_6966_7477_6174;

/// Brings the database up to [`MIGRATIONS`]; refuses one from a newer collector.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS driftwatch_migrations (
             version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(pg_error)?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM driftwatch_migrations",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::Database(format!(
            "the database is at schema version {version}, newer than this collector knows ({known})"
        )));
    }
    for (index, script) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(script).await.map_err(pg_error)?;
        let number = i64::try_from(index + 1).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO driftwatch_migrations (version) VALUES ($1)",
            &[&number],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::store::postgres::tests::PgTestDb;

    /// Alert memory made before containers were counted (schema 2) is kept: a host
    /// alerted for a change is still not alerted again, and a group waiting when the
    /// collector was upgraded goes out with its host.
    #[tokio::test]
    async fn migrating_alert_memory_keeps_who_was_alerted() {
        let Some(db) = PgTestDb::create().await else {
            return;
        };
        db.execute(&format!(
            "{}{}
             CREATE TABLE driftwatch_migrations (
                 version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO driftwatch_migrations (version) VALUES (1), (2);
             {}",
            MIGRATIONS[0],
            MIGRATIONS[1],
            crate::store::tests::ALERT_MEMORY
        ))
        .await;
        let store: crate::store::DynStore = std::sync::Arc::new(db.open().await);
        crate::store::tests::migrated_alert_memory_holds(store).await;
    }
}
