//! The SQL of the trust records on SQLite: named tokens by hash.

use super::{collect, db_error};
use crate::store::trust::TOKEN_COLUMNS;
use crate::store::{StoreError, StoreResult, TokenRecord};
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
        &format!("INSERT INTO tokens ({TOKEN_COLUMNS}, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            token.name,
            token.role,
            token.created_ms,
            token.expires_ms,
            token.uses_left.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            token.host_ids,
            token.images,
            token.revoked_ms,
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
