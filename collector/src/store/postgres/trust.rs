//! The SQL of the trust records on PostgreSQL: named tokens by hash.

use super::{exec, pg_error, rows};
use crate::store::trust::TOKEN_COLUMNS;
use crate::store::{StoreError, StoreResult, TokenRecord};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

fn token_from_row(row: &Row) -> StoreResult<TokenRecord> {
    let get = || -> Result<TokenRecord, tokio_postgres::Error> {
        Ok(TokenRecord {
            name: row.try_get(0)?,
            role: row.try_get(1)?,
            created_ms: row.try_get(2)?,
            expires_ms: row.try_get(3)?,
            uses_left: row.try_get::<_, Option<i64>>(4)?.map(|n| n.max(0) as u64),
            host_ids: row.try_get(5)?,
            images: row.try_get(6)?,
            revoked_ms: row.try_get(7)?,
        })
    };
    get().map_err(pg_error)
}

pub(super) async fn create_token<C: GenericClient>(
    c: &C,
    token: &TokenRecord,
    hash: &str,
) -> StoreResult<()> {
    let uses = token
        .uses_left
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let inserted = exec(
        c,
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING"
        ),
        &[
            &token.name,
            &token.role,
            &token.created_ms,
            &token.expires_ms,
            &uses,
            &token.host_ids,
            &token.images,
            &token.revoked_ms,
            &hash,
        ],
    )
    .await?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "a token named {:?} exists",
            token.name
        )));
    }
    Ok(())
}

pub(super) async fn token<C: GenericClient>(c: &C, hash: &str) -> StoreResult<Option<TokenRecord>> {
    let found = rows(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
        &[&hash],
    )
    .await?;
    found.first().map(token_from_row).transpose()
}

pub(super) async fn tokens<C: GenericClient>(c: &C) -> StoreResult<Vec<TokenRecord>> {
    rows(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name"),
        &[],
    )
    .await?
    .iter()
    .map(token_from_row)
    .collect()
}

pub(super) async fn revoke_token<C: GenericClient>(
    c: &C,
    name: &str,
    at_ms: i64,
) -> StoreResult<bool> {
    exec(
        c,
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, $2) WHERE name = $1",
        &[&name, &at_ms],
    )
    .await
    .map(|n| n > 0)
}
