//! The dashboard's queries on SQLite ([`crate::store::dashboard`]).

use super::{collect, count, db_error, finding_from_row, FINDING_COLUMNS};
use crate::store::dashboard::image_states;
use crate::store::{
    FindingRecord, HeldHosts, Hold, ImageStates, SessionRecord, StoreError, StoreResult,
};
use rusqlite::{params, Connection, OptionalExtension};

pub(super) fn held(c: &Connection, hold: Hold, limit: u32) -> StoreResult<HeldHosts> {
    Ok(HeldHosts {
        count: count(
            c,
            "SELECT count(*) FROM hosts WHERE hold = ?1 AND state = 'drifted'",
            [hold.name()],
        )?,
        first: collect(
            c,
            "SELECT host_id FROM hosts WHERE hold = ?1 AND state = 'drifted'
             ORDER BY host_id LIMIT ?2",
            params![hold.name(), limit],
            |row| row.get(0),
        )?,
    })
}

pub(super) fn hosts_by_image_state(c: &Connection) -> StoreResult<Vec<ImageStates>> {
    image_states(collect(
        c,
        "SELECT image_id, state, count(*) FROM hosts GROUP BY image_id, state
         ORDER BY image_id, state",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?)
}

pub(super) fn marked_by_image(
    c: &Connection,
    since_ms: i64,
) -> StoreResult<Vec<(Option<String>, u64)>> {
    collect(
        c,
        // The window's marks by time, covered by the index (without statistics the
        // planner would rather walk every mark ever made in image order).
        "SELECT image_id, count(DISTINCT host_id) FROM marks INDEXED BY marks_by_time
         WHERE at >= ?1 GROUP BY image_id ORDER BY image_id",
        [since_ms],
        |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)),
    )
}

pub(super) fn keep_baseline(
    c: &Connection,
    image_id: &str,
    baseline: Option<&[u8]>,
) -> StoreResult<()> {
    let Some(baseline) = baseline else {
        return c
            .execute("DELETE FROM baselines WHERE image_id = ?1", [image_id])
            .map(|_| ())
            .map_err(db_error);
    };
    c.execute(
        "INSERT INTO baselines (image_id, baseline) VALUES (?1, ?2)
         ON CONFLICT (image_id) DO UPDATE SET baseline = excluded.baseline",
        params![image_id, baseline],
    )
    .map(|_| ())
    .map_err(db_error)
}

pub(super) fn kept_baseline(c: &Connection, image_id: &str) -> StoreResult<Option<Vec<u8>>> {
    c.query_row(
        "SELECT baseline FROM baselines WHERE image_id = ?1",
        [image_id],
        |row| row.get(0),
    )
    .optional()
    .map_err(db_error)
}

pub(super) fn open_session(
    c: &Connection,
    s: &SessionRecord,
    max: u64,
    now: i64,
) -> StoreResult<()> {
    c.execute("DELETE FROM ui_sessions WHERE expires_at <= ?1", [now])
        .map_err(db_error)?;
    let live = count(c, "SELECT count(*) FROM ui_sessions", [])?;
    if live >= max {
        c.execute(
            "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions
                 ORDER BY expires_at, id_hash LIMIT ?1)",
            [i64::try_from(live - max + 1).unwrap_or(i64::MAX)],
        )
        .map_err(db_error)?;
    }
    c.execute(
        "INSERT INTO ui_sessions (id_hash, name, role, token_hash, csrf, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            s.id_hash,
            s.name,
            s.role,
            s.token_hash,
            s.csrf,
            s.expires_ms
        ],
    )
    .map(|_| ())
    .map_err(db_error)
}

pub(super) fn session(
    c: &Connection,
    id_hash: &str,
    now: i64,
) -> StoreResult<Option<SessionRecord>> {
    c.query_row(
        "SELECT id_hash, name, role, token_hash, csrf, expires_at FROM ui_sessions s
         WHERE id_hash = ?1 AND expires_at > ?2
           AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.hash = s.token_hash
               AND (t.revoked_at IS NOT NULL OR t.expires_at <= ?2))",
        params![id_hash, now],
        |row| {
            Ok(SessionRecord {
                id_hash: row.get(0)?,
                name: row.get(1)?,
                role: row.get(2)?,
                token_hash: row.get(3)?,
                csrf: row.get(4)?,
                expires_ms: row.get(5)?,
            })
        },
    )
    .optional()
    .map_err(db_error)
}

pub(super) fn close_session(c: &Connection, id_hash: &str) -> StoreResult<()> {
    c.execute("DELETE FROM ui_sessions WHERE id_hash = ?1", [id_hash])
        .map(|_| ())
        .map_err(db_error)
}

pub(super) fn findings_of(
    c: &Connection,
    host_ids: &[String],
    per_host: u32,
) -> StoreResult<Vec<FindingRecord>> {
    let ids = serde_json::to_string(host_ids)
        .map_err(|e| StoreError::Database(format!("cannot encode host ids: {e}")))?;
    collect(
        c,
        &format!(
            "SELECT {FINDING_COLUMNS} FROM (
                 SELECT *, row_number() OVER (
                     PARTITION BY host_id ORDER BY severity DESC, key) AS n
                 FROM findings WHERE host_id IN (SELECT value FROM json_each(?1)))
             WHERE n <= ?2 ORDER BY host_id, severity DESC, key"
        ),
        params![ids, per_host],
        finding_from_row,
    )
}
