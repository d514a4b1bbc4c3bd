//! The dashboard's queries on PostgreSQL ([`crate::store::dashboard`]).

use super::{exec, finding_from_row, number, pg_error, rows, FINDING_COLUMNS};
use crate::store::dashboard::image_states;
use crate::store::{FindingRecord, HeldHosts, Hold, ImageStates, SessionRecord, StoreResult};
use deadpool_postgres::GenericClient;

pub(super) async fn held<C: GenericClient>(
    c: &C,
    hold: Hold,
    limit: u32,
) -> StoreResult<HeldHosts> {
    let count = number(
        c,
        "SELECT count(*) FROM hosts WHERE hold = $1 AND state = 'drifted'",
        &[&hold.name()],
    )
    .await?;
    let first = rows(
        c,
        "SELECT host_id FROM hosts WHERE hold = $1 AND state = 'drifted'
         ORDER BY host_id LIMIT $2",
        &[&hold.name(), &i64::from(limit)],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0).map_err(pg_error))
    .collect::<StoreResult<Vec<String>>>()?;
    Ok(HeldHosts { count, first })
}

pub(super) async fn hosts_by_image_state<C: GenericClient>(c: &C) -> StoreResult<Vec<ImageStates>> {
    let found = rows(
        c,
        "SELECT image_id, state, count(*) FROM hosts GROUP BY image_id, state
         ORDER BY image_id NULLS FIRST, state",
        &[],
    )
    .await?;
    let rows = found
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(pg_error)?;
    image_states(rows)
}

pub(super) async fn marked_by_image<C: GenericClient>(
    c: &C,
    since_ms: i64,
) -> StoreResult<Vec<(Option<String>, u64)>> {
    rows(
        c,
        "SELECT image_id, count(DISTINCT host_id) FROM marks WHERE at >= $1
         GROUP BY image_id ORDER BY image_id NULLS FIRST",
        &[&since_ms],
    )
    .await?
    .iter()
    .map(|r| {
        let n: i64 = r.try_get(1).map_err(pg_error)?;
        Ok((r.try_get(0).map_err(pg_error)?, n.max(0) as u64))
    })
    .collect()
}

pub(super) async fn keep_baseline<C: GenericClient>(
    c: &C,
    image_id: &str,
    baseline: Option<&[u8]>,
) -> StoreResult<()> {
    let Some(baseline) = baseline else {
        return exec(c, "DELETE FROM baselines WHERE image_id = $1", &[&image_id])
            .await
            .map(|_| ());
    };
    exec(
        c,
        "INSERT INTO baselines (image_id, baseline) VALUES ($1, $2)
         ON CONFLICT (image_id) DO UPDATE SET baseline = excluded.baseline",
        &[&image_id, &baseline],
    )
    .await
    .map(|_| ())
}

pub(super) async fn kept_baseline<C: GenericClient>(
    c: &C,
    image_id: &str,
) -> StoreResult<Option<Vec<u8>>> {
    rows(
        c,
        "SELECT baseline FROM baselines WHERE image_id = $1",
        &[&image_id],
    )
    .await?
    .first()
    .map(|r| r.try_get(0).map_err(pg_error))
    .transpose()
}

pub(super) async fn open_session<C: GenericClient>(
    c: &C,
    s: &SessionRecord,
    max: u64,
    now: i64,
) -> StoreResult<()> {
    exec(c, "DELETE FROM ui_sessions WHERE expires_at <= $1", &[&now]).await?;
    let live = number(c, "SELECT count(*) FROM ui_sessions", &[]).await?;
    if live >= max {
        let excess = i64::try_from(live - max + 1).unwrap_or(i64::MAX);
        exec(
            c,
            "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions
                 ORDER BY expires_at, id_hash LIMIT $1)",
            &[&excess],
        )
        .await?;
    }
    exec(
        c,
        "INSERT INTO ui_sessions (id_hash, name, role, token_hash, csrf, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &s.id_hash,
            &s.name,
            &s.role,
            &s.token_hash,
            &s.csrf,
            &s.expires_ms,
        ],
    )
    .await
    .map(|_| ())
}

pub(super) async fn session<C: GenericClient>(
    c: &C,
    id_hash: &str,
    now: i64,
) -> StoreResult<Option<SessionRecord>> {
    rows(
        c,
        "SELECT id_hash, name, role, token_hash, csrf, expires_at FROM ui_sessions s
         WHERE id_hash = $1 AND expires_at > $2
           AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.hash = s.token_hash
               AND (t.revoked_at IS NOT NULL OR t.expires_at <= $2))",
        &[&id_hash, &now],
    )
    .await?
    .first()
    .map(|r| {
        Ok(SessionRecord {
            id_hash: r.try_get(0).map_err(pg_error)?,
            name: r.try_get(1).map_err(pg_error)?,
            role: r.try_get(2).map_err(pg_error)?,
            token_hash: r.try_get(3).map_err(pg_error)?,
            csrf: r.try_get(4).map_err(pg_error)?,
            expires_ms: r.try_get(5).map_err(pg_error)?,
        })
    })
    .transpose()
}

pub(super) async fn close_session<C: GenericClient>(c: &C, id_hash: &str) -> StoreResult<()> {
    exec(c, "DELETE FROM ui_sessions WHERE id_hash = $1", &[&id_hash])
        .await
        .map(|_| ())
}

pub(super) async fn findings_of<C: GenericClient>(
    c: &C,
    host_ids: &[String],
    per_host: u32,
) -> StoreResult<Vec<FindingRecord>> {
    rows(
        c,
        &format!(
            "SELECT {FINDING_COLUMNS} FROM (
                 SELECT *, row_number() OVER (
                     PARTITION BY host_id ORDER BY severity DESC, key) AS n
                 FROM findings WHERE host_id = ANY($1)) AS ranked
             WHERE n <= $2 ORDER BY host_id, severity DESC, key"
        ),
        &[&host_ids, &i64::from(per_host)],
    )
    .await?
    .iter()
    .map(finding_from_row)
    .collect()
}
