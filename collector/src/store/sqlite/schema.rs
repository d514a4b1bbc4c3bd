//! The SQLite schema: numbered migrations applied in order, each in a transaction;
//! `PRAGMA user_version` records how far a database has come.

use super::db_error;
use crate::store::{StoreError, StoreResult};
use rusqlite::Connection;

/// Numbered migrations; never edit one that has shipped, add the next.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first release.
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
    // 2: the hosts' first-boot provisioning deltas.
    r#"
CREATE TABLE provisioning (
    host_id TEXT PRIMARY KEY,
    received INTEGER NOT NULL,
    delta TEXT NOT NULL
) WITHOUT ROWID;
"#,
    // 3: decisions durable, counts incremental, the outbox and the leases.
    r#"
ALTER TABLE hosts ADD COLUMN n_critical INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN n_high INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN n_medium INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN n_low INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN findings_dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN told_at INTEGER;
UPDATE hosts SET
    n_critical = (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 3),
    n_high = (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 2),
    n_medium = (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 1),
    n_low = (SELECT count(*) FROM findings f WHERE f.host_id = hosts.host_id AND severity = 0),
    told_at = CASE WHEN state = 'marked' THEN marked_at END;
CREATE INDEX hosts_by_last_seen ON hosts (last_seen DESC, host_id);
CREATE INDEX images_by_registered ON images (registered DESC, image_id);
CREATE TABLE alert_groups (
    kind TEXT NOT NULL,
    image_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    title TEXT NOT NULL,
    severity INTEGER NOT NULL,
    detail TEXT NOT NULL,
    first_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    PRIMARY KEY (kind, image_id, grp)
);
CREATE INDEX alert_groups_due ON alert_groups (due_at);
CREATE TABLE alert_hosts (
    kind TEXT NOT NULL,
    image_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    host_id TEXT NOT NULL,
    pending INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (kind, image_id, grp, host_id)
) WITHOUT ROWID;
CREATE INDEX alert_hosts_seen ON alert_hosts (seen_at);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    give_up_at INTEGER NOT NULL,
    claimed_by TEXT,
    claim_expires_at INTEGER,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
"#,
    // 4: trust: named tokens (hashes only), key bindings, lasting revocations.
    r#"
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    uses_left INTEGER,
    host_ids TEXT,
    images TEXT,
    revoked_at INTEGER
);
CREATE TABLE credentials (
    host_id TEXT PRIMARY KEY,
    key_fingerprint TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    source TEXT NOT NULL,
    token TEXT,
    images TEXT,
    daemon INTEGER NOT NULL DEFAULT 1,
    bound_at INTEGER NOT NULL
);
CREATE TABLE revocations (
    key_fingerprint TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    host_id TEXT NOT NULL,
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX revocations_by_serial ON revocations (serial);
"#,
    // 5: alert groups of a change inside containers: their members are containers,
    // and the group knows the containers' image.
    r#"
ALTER TABLE alert_groups ADD COLUMN container_image TEXT;
CREATE TABLE alert_members (
    kind TEXT NOT NULL,
    image_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    host_id TEXT NOT NULL,
    container_id TEXT NOT NULL DEFAULT '',
    pending INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (kind, image_id, grp, host_id, container_id)
) WITHOUT ROWID;
INSERT INTO alert_members (kind, image_id, grp, host_id, pending, seen_at)
    SELECT kind, image_id, grp, host_id, pending, seen_at FROM alert_hosts;
DROP TABLE alert_hosts;
ALTER TABLE alert_members RENAME TO alert_hosts;
CREATE INDEX alert_hosts_seen ON alert_hosts (seen_at);
"#,
    // 6: the dashboard: hosts of a state, held hosts, marks in the window and a
    // host's findings by severity (as PostgreSQL has it) found by index, the
    // baselines it compares, its sessions (shared by every process on the
    // database).
    r#"
CREATE INDEX hosts_held ON hosts (hold, state, host_id) WHERE hold IS NOT NULL;
CREATE INDEX hosts_by_state_seen ON hosts (state, last_seen DESC, host_id);
CREATE INDEX findings_by_severity ON findings (host_id, severity DESC, key);
CREATE INDEX marks_by_time ON marks (at, image_id, host_id);
CREATE TABLE baselines (
    image_id TEXT PRIMARY KEY,
    baseline BLOB NOT NULL
);
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);
"#,
    // 7: enroll tokens of hosts without a daemon.
    r#"
ALTER TABLE tokens ADD COLUMN daemon INTEGER NOT NULL DEFAULT 1;
"#,
    // 8: the hosts page: most severe first and "at least this severe" by one
    // index on the findings' counts (crate::store::severity_rank, the same
    // formula), by id, each also within a state.
    r#"
ALTER TABLE hosts ADD COLUMN severity_rank INTEGER GENERATED ALWAYS AS (
        (CASE WHEN n_critical < 0 THEN 0 WHEN n_critical > 32767 THEN 32767 ELSE n_critical END) * 35184372088832
        + (CASE WHEN n_high < 0 THEN 0 WHEN n_high > 32767 THEN 32767 ELSE n_high END) * 1073741824
        + (CASE WHEN n_medium < 0 THEN 0 WHEN n_medium > 32767 THEN 32767 ELSE n_medium END) * 32768
        + (CASE WHEN n_low < 0 THEN 0 WHEN n_low > 32767 THEN 32767 ELSE n_low END)) VIRTUAL;
CREATE INDEX hosts_by_severity ON hosts (severity_rank DESC, host_id);
CREATE INDEX hosts_by_state_severity ON hosts (state, severity_rank DESC, host_id);
CREATE INDEX hosts_by_state_id ON hosts (state, host_id);
"#,
];

/// Brings the database up to [`MIGRATIONS`]; refuses one from a newer collector.
///
/// Each step reads the version inside a write transaction (`BEGIN IMMEDIATE`), so
/// processes opening one file at once (the collector and `issue-host-cert`, say) take
/// turns and never apply a step twice.
pub(super) fn migrate(connection: &mut Connection) -> StoreResult<()> {
    loop {
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_error)?;
        let version: i64 = transaction
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db_error)?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Database(format!(
                "the database is at schema version {version}, newer than this collector knows ({})",
                MIGRATIONS.len()
            )));
        }
        let Some(script) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        transaction.execute_batch(script).map_err(db_error)?;
        transaction
            .execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(db_error)?;
        transaction.commit().map_err(db_error)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::tests::policy;
    use crate::store::{
        ActionFilter, HostFilter, IngestBody, IngestEvent, IngestRecord, PageRequest, Store,
    };
    use driftwatch_protocol::wire::HostState;

    /// A database made by the previous release (schemas 1 and 2), with a marked host, a drifted
    /// one and their findings and actions, opened by this collector: nothing is lost,
    /// and the counts and the outbox start right.
    #[tokio::test]
    async fn migrating_a_previous_release_database_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.db");
        {
            let connection = Connection::open(&path).unwrap();
            // The schema as the release before this one left it.
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection.execute_batch(MIGRATIONS[1]).unwrap();
            connection
                .execute_batch(
                    "PRAGMA user_version = 2;
                     INSERT INTO hosts (host_id, hostname, image_id, state, state_since,
                         first_seen, last_seen, mark_reason, marked_at)
                     VALUES ('m1', 'm1.example', 'img', 'marked', 10, 1, 20, 'critical finding', 10),
                            ('d1', 'd1.example', 'img', 'drifted', 5, 1, 30, NULL, NULL);
                     INSERT INTO findings VALUES
                         ('m1', 'kernel_module:evil', 'kernel_module', 3, 'evil', '{\"kind\":\"kernel_module\"}', 2, 20),
                         ('d1', 'file:/etc/motd', 'file', 1, '/etc/motd', '{\"kind\":\"file\"}', 3, 30),
                         ('d1', 'file:/etc/issue', 'file', 0, '/etc/issue', '{\"kind\":\"file\"}', 3, 30);
                     INSERT INTO events VALUES ('m1', 'e1', 2), ('d1', 'e2', 3), ('d1', 'e3', 3);
                     INSERT INTO marks VALUES ('m1', 'img', 10);
                     INSERT INTO images VALUES ('img', 'blake3:00', NULL, 7, 'x', 1);
                     INSERT INTO actions (at, host_id, image_id, action, target, outcome, detail)
                     VALUES (10, 'm1', 'img', 'mark', 'policy', 'ok', 'Marked.');",
                )
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let hosts = store.hosts(HostFilter::default()).await.unwrap().items;
        assert_eq!(hosts.len(), 2);
        let marked = store.host("m1").await.unwrap().unwrap();
        assert_eq!(marked.state, HostState::Marked);
        assert_eq!(marked.findings_by_severity, [1, 0, 0, 0]);
        let drifted = store.host("d1").await.unwrap().unwrap();
        assert_eq!(drifted.findings_by_severity, [0, 0, 1, 1]);
        let findings = store.findings("d1", PageRequest::default()).await.unwrap();
        assert_eq!(findings.items.len(), 2);
        assert_eq!(store.marked_since(Some("img"), 0).await.unwrap(), 1);
        assert!(store.image("img").await.unwrap().is_some());
        let actions = store.actions(ActionFilter::default()).await.unwrap().items;
        assert_eq!(actions.len(), 1);
        assert_eq!(
            store.counts().await.unwrap().findings_by_severity,
            [1, 0, 1, 1]
        );
        // The old events still deduplicate; the marked host was told before the
        // upgrade, so it is not logged as told again.
        let retried = store
            .ingest(
                IngestRecord {
                    host_id: "m1".into(),
                    hostname: "m1.example".into(),
                    image_id: Some("img".into()),
                    baseline_digest: None,
                    events: vec![IngestEvent {
                        id: "e1".into(),
                        body: IngestBody::Heartbeat {
                            agent_version: "1".into(),
                            interval_secs: 0,
                        },
                    }],
                    collector_findings: Vec::new(),
                    received_ms: 40,
                },
                policy(""),
            )
            .await
            .unwrap();
        assert_eq!(retried.host.state, HostState::Marked);
        let actions = store.actions(ActionFilter::default()).await.unwrap().items;
        assert!(
            actions.iter().all(|a| a.action != "agent_told"),
            "{actions:?}"
        );
        // A newer schema is refused, not guessed at.
        drop(store);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        assert!(SqliteStore::open(&path).is_err());
    }

    /// Alert memory made before containers were counted (schema 4) is kept: a host
    /// alerted for a change is still not alerted again, and a group waiting when the
    /// collector was upgraded goes out with its host.
    #[tokio::test]
    async fn migrating_alert_memory_keeps_who_was_alerted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.db");
        {
            let connection = Connection::open(&path).unwrap();
            for script in &MIGRATIONS[..4] {
                connection.execute_batch(script).unwrap();
            }
            connection
                .execute_batch(&format!(
                    "PRAGMA user_version = 4;\n{}",
                    crate::store::tests::ALERT_MEMORY
                ))
                .unwrap();
        }
        let store: crate::store::DynStore = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
        crate::store::tests::migrated_alert_memory_holds(store).await;
    }
}
