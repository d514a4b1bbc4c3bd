//! The SQL of the trust records on SQLite: named tokens by hash, key bindings and
//! revocations. Everything runs on the writer (or a reader) in one transaction.

use super::{collect, db_error};
use crate::store::trust::{Source, BINDING_COLUMNS, TOKEN_COLUMNS};
use crate::store::{Admission, Binding, Enrolled, StoreError, StoreResult, TokenRecord};
use rusqlite::{params, Connection, OptionalExtension, Row};

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        name: row.get(0)?,
        role: row.get(1)?,
        created_ms: row.get(2)?,
        expires_ms: row.get(3)?,
        uses_left: row.get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
        host_ids: row.get(5)?,
        images: row.get(6)?,
        revoked_ms: row.get(7)?,
        daemon: row.get::<_, i64>(8)? != 0,
    })
}

pub(super) fn create_token(c: &Connection, token: &TokenRecord, hash: &str) -> StoreResult<()> {
    let taken: Option<i64> = c
        .query_row(
            "SELECT 1 FROM tokens WHERE name = ?1 OR hash = ?2",
            params![token.name, hash],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error)?;
    if taken.is_some() {
        return Err(StoreError::Conflict(format!(
            "a token named {:?} exists",
            token.name
        )));
    }
    c.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            token.name,
            token.role,
            token.created_ms,
            token.expires_ms,
            token.uses_left.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            token.host_ids,
            token.images,
            token.revoked_ms,
            token.daemon,
            hash
        ],
    )
    .map(|_| ())
    .map_err(db_error)
}

pub(super) fn token(c: &Connection, hash: &str) -> StoreResult<Option<TokenRecord>> {
    c.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
        [hash],
        token_from_row,
    )
    .optional()
    .map_err(db_error)
}

pub(super) fn tokens(c: &Connection) -> StoreResult<Vec<TokenRecord>> {
    collect(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"),
        [],
        token_from_row,
    )
}

pub(super) fn revoke_token(c: &Connection, name: &str, at_ms: i64) -> StoreResult<bool> {
    c.execute(
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE name = ?1",
        params![name, at_ms],
    )
    .map(|n| n > 0)
    .map_err(db_error)
}

fn binding_from_row(row: &Row<'_>) -> rusqlite::Result<Binding> {
    let source: String = row.get(4)?;
    Ok(Binding {
        host_id: row.get(0)?,
        key_fingerprint: row.get(1)?,
        serial: row.get(2)?,
        not_after_ms: row.get(3)?,
        source: Source::parse(&source).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?,
        token: row.get(5)?,
        images: row.get(6)?,
        daemon: row.get::<_, i64>(7)? != 0,
        bound_ms: row.get(8)?,
    })
}

fn key_revoked(c: &Connection, key_fingerprint: &str) -> StoreResult<bool> {
    c.prepare_cached("SELECT 1 FROM revocations WHERE key_fingerprint = ?1")
        .and_then(|mut s| s.exists([key_fingerprint]))
        .map_err(db_error)
}

fn binding(c: &Connection, host_id: &str) -> StoreResult<Option<Binding>> {
    c.prepare_cached(&format!(
        "SELECT {BINDING_COLUMNS} FROM credentials WHERE host_id = ?1"
    ))
    .and_then(|mut s| s.query_row([host_id], binding_from_row).optional())
    .map_err(db_error)
}

fn write_binding(c: &Connection, b: &Binding) -> StoreResult<()> {
    c.execute(
        &format!(
            "INSERT INTO credentials ({BINDING_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (host_id) DO UPDATE SET key_fingerprint = ?2, serial = ?3,
                 not_after = ?4, source = ?5, token = ?6, images = ?7, daemon = ?8, bound_at = ?9"
        ),
        params![
            b.host_id,
            b.key_fingerprint,
            b.serial,
            b.not_after_ms,
            b.source.name(),
            b.token,
            b.images,
            b.daemon,
            b.bound_ms
        ],
    )
    .map(|_| ())
    .map_err(db_error)
}

pub(super) fn bind(c: &Connection, b: &Binding) -> StoreResult<Enrolled> {
    let host_revoked: Option<i64> = c
        .query_row(
            "SELECT revoked FROM hosts WHERE host_id = ?1",
            [&b.host_id],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error)?;
    if host_revoked.unwrap_or(0) != 0 || key_revoked(c, &b.key_fingerprint)? {
        return Err(StoreError::Conflict(format!(
            "host {} or its key is revoked",
            b.host_id
        )));
    }
    let known = binding(c, &b.host_id)?;
    let outcome = crate::store::trust::judge(known.as_ref(), b)?;
    if outcome == Enrolled::New && b.source == Source::Enrolled {
        if let Some(token) = &b.token {
            let spent = c
                .execute(
                    "UPDATE tokens SET uses_left = uses_left - 1
                     WHERE name = ?1 AND uses_left IS NOT NULL AND uses_left > 0",
                    [token],
                )
                .map_err(db_error)?;
            let unlimited: bool = c
                .prepare_cached("SELECT 1 FROM tokens WHERE name = ?1 AND uses_left IS NULL")
                .and_then(|mut s| s.exists([token]))
                .map_err(db_error)?;
            if spent == 0 && !unlimited {
                return Err(StoreError::Conflict(format!("token {token:?} is used up")));
            }
        }
    }
    write_binding(c, b)?;
    c.execute(
        "INSERT INTO hosts (host_id, hostname, state, state_since, first_seen, last_seen)
         VALUES (?1, ?1, 'clean', ?2, ?2, ?2) ON CONFLICT (host_id) DO NOTHING",
        params![b.host_id, b.bound_ms],
    )
    .map_err(db_error)?;
    Ok(outcome)
}

pub(super) fn admission(
    c: &Connection,
    host_id: &str,
    key_fingerprint: &str,
) -> StoreResult<Admission> {
    if key_revoked(c, key_fingerprint)? {
        return Ok(Admission::Revoked);
    }
    Ok(match binding(c, host_id)? {
        Some(b) if b.key_fingerprint == key_fingerprint => Admission::Bound(b),
        Some(_) => Admission::OtherKey,
        None => Admission::Unbound,
    })
}

pub(super) fn revoke(c: &Connection, host_id: &str, at_ms: i64) -> StoreResult<bool> {
    let bound = binding(c, host_id)?;
    if let Some(b) = &bound {
        c.execute(
            "INSERT INTO revocations (key_fingerprint, serial, host_id, revoked_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key_fingerprint) DO NOTHING",
            params![b.key_fingerprint, b.serial, host_id, at_ms, b.not_after_ms],
        )
        .map_err(db_error)?;
        c.execute("DELETE FROM credentials WHERE host_id = ?1", [host_id])
            .map_err(db_error)?;
    }
    let hosts = c
        .execute(
            "UPDATE hosts SET revoked = 1, state = 'gone', state_since = ?2
             WHERE host_id = ?1",
            params![host_id, at_ms],
        )
        .map_err(db_error)?;
    Ok(hosts > 0 || bound.is_some())
}

/// Forgets revocations and bindings of certificates expired before `before_ms`.
pub(super) fn expire(c: &Connection, before_ms: i64) -> StoreResult<()> {
    for sql in [
        "DELETE FROM revocations WHERE expires_at < ?1",
        "DELETE FROM credentials WHERE not_after < ?1",
    ] {
        c.execute(sql, [before_ms]).map_err(db_error)?;
    }
    Ok(())
}
