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
    // 2: decisions durable, counts incremental, the outbox and the leases.
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
];

/// Brings the database up to [`MIGRATIONS`]; refuses one from a newer collector.
pub(super) fn migrate(connection: &mut Connection) -> StoreResult<()> {
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
