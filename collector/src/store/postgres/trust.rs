//! The SQL of the trust records on PostgreSQL: named tokens by hash, key bindings
//! and revocations. A binding is decided under the row lock of the host's binding
//! (or of the token it spends), so two replicas never bind one id twice.

use super::{exec, pg_error, rows};
use crate::store::trust::{Source, BINDING_COLUMNS, TOKEN_COLUMNS};
use crate::store::{Admission, Binding, Enrolled, StoreError, StoreResult, TokenRecord};
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
            daemon: row.try_get(8)?,
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
            "INSERT INTO tokens ({TOKEN_COLUMNS}, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
            &token.daemon,
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

/// The binding in `row`, its columns ([`BINDING_COLUMNS`]) from index `at` on.
fn binding_at(row: &Row, at: usize) -> StoreResult<Binding> {
    let get = || -> Result<(Binding, String), tokio_postgres::Error> {
        Ok((
            Binding {
                host_id: row.try_get(at)?,
                key_fingerprint: row.try_get(at + 1)?,
                serial: row.try_get(at + 2)?,
                not_after_ms: row.try_get(at + 3)?,
                source: Source::Enrolled,
                token: row.try_get(at + 5)?,
                images: row.try_get(at + 6)?,
                daemon: row.try_get(at + 7)?,
                bound_ms: row.try_get(at + 8)?,
            },
            row.try_get(at + 4)?,
        ))
    };
    let (binding, source) = get().map_err(pg_error)?;
    Ok(Binding {
        source: Source::parse(&source)?,
        ..binding
    })
}

async fn key_revoked<C: GenericClient>(c: &C, key_fingerprint: &str) -> StoreResult<bool> {
    let found = rows(
        c,
        "SELECT 1 FROM revocations WHERE key_fingerprint = $1",
        &[&key_fingerprint],
    )
    .await?;
    Ok(!found.is_empty())
}

async fn binding<C: GenericClient>(
    c: &C,
    host_id: &str,
    lock: bool,
) -> StoreResult<Option<Binding>> {
    let sql = format!(
        "SELECT {BINDING_COLUMNS} FROM credentials WHERE host_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let found = rows(c, &sql, &[&host_id]).await?;
    found.first().map(|row| binding_at(row, 0)).transpose()
}

/// Spends one use of `token`, when it counts uses; refuses a used-up one.
async fn spend<C: GenericClient>(c: &C, token: &str) -> StoreResult<()> {
    let found = rows(
        c,
        "SELECT uses_left FROM tokens WHERE name = $1 FOR UPDATE",
        &[&token],
    )
    .await?;
    let uses: Option<i64> = found
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error)?
        .flatten();
    match uses {
        None => Ok(()),
        Some(n) if n > 0 => exec(
            c,
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE name = $1",
            &[&token],
        )
        .await
        .map(|_| ()),
        Some(_) => Err(StoreError::Conflict(format!("token {token:?} is used up"))),
    }
}

pub(super) async fn bind<C: GenericClient>(c: &C, b: &Binding) -> StoreResult<Enrolled> {
    // The host row first: it exists (and is locked) from here on, so two replicas
    // binding one new id take turns.
    exec(
        c,
        "INSERT INTO hosts (host_id, hostname, state, state_since, first_seen, last_seen)
         VALUES ($1, $1, 'clean', $2, $2, $2) ON CONFLICT (host_id) DO NOTHING",
        &[&b.host_id, &b.bound_ms],
    )
    .await?;
    let revoked = rows(
        c,
        "SELECT revoked FROM hosts WHERE host_id = $1 FOR UPDATE",
        &[&b.host_id],
    )
    .await?;
    let host_revoked: bool = revoked
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error)?
        .unwrap_or(false);
    if host_revoked || key_revoked(c, &b.key_fingerprint).await? {
        return Err(StoreError::Conflict(format!(
            "host {} or its key is revoked",
            b.host_id
        )));
    }
    let known = binding(c, &b.host_id, true).await?;
    let outcome = crate::store::trust::judge(known.as_ref(), b)?;
    if let (Enrolled::New, Source::Enrolled, Some(token)) = (outcome, b.source, &b.token) {
        spend(c, token).await?;
    }
    exec(
        c,
        &format!(
            "INSERT INTO credentials ({BINDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (host_id) DO UPDATE SET key_fingerprint = $2, serial = $3,
                 not_after = $4, source = $5, token = $6, images = $7, daemon = $8, bound_at = $9"
        ),
        &[
            &b.host_id,
            &b.key_fingerprint,
            &b.serial,
            &b.not_after_ms,
            &b.source.name(),
            &b.token,
            &b.images,
            &b.daemon,
            &b.bound_ms,
        ],
    )
    .await?;
    Ok(outcome)
}

/// One round trip per report: the key's revocation and the id's binding together.
pub(super) async fn admission<C: GenericClient>(
    c: &C,
    host_id: &str,
    key_fingerprint: &str,
) -> StoreResult<Admission> {
    let columns = BINDING_COLUMNS.replace(", ", ", b.");
    let found = rows(
        c,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM revocations WHERE key_fingerprint = $2), b.{columns}
             FROM (SELECT 1) AS one LEFT JOIN credentials b ON b.host_id = $1"
        ),
        &[&host_id, &key_fingerprint],
    )
    .await?;
    let row = found
        .first()
        .ok_or_else(|| StoreError::Database("no admission row".into()))?;
    if row.try_get::<_, bool>(0).map_err(pg_error)? {
        return Ok(Admission::Revoked);
    }
    if row
        .try_get::<_, Option<String>>(1)
        .map_err(pg_error)?
        .is_none()
    {
        return Ok(Admission::Unbound);
    }
    let binding = binding_at(row, 1)?;
    Ok(if binding.key_fingerprint == key_fingerprint {
        Admission::Bound(binding)
    } else {
        Admission::OtherKey
    })
}

pub(super) async fn revoke<C: GenericClient>(
    c: &C,
    host_id: &str,
    at_ms: i64,
) -> StoreResult<bool> {
    let bound = binding(c, host_id, true).await?;
    if let Some(b) = &bound {
        exec(
            c,
            "INSERT INTO revocations (key_fingerprint, serial, host_id, revoked_at, expires_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_fingerprint) DO NOTHING",
            &[
                &b.key_fingerprint,
                &b.serial,
                &host_id,
                &at_ms,
                &b.not_after_ms,
            ],
        )
        .await?;
        exec(c, "DELETE FROM credentials WHERE host_id = $1", &[&host_id]).await?;
    }
    let hosts = exec(
        c,
        "UPDATE hosts SET revoked = TRUE, state = 'gone', state_since = $2 WHERE host_id = $1",
        &[&host_id, &at_ms],
    )
    .await?;
    Ok(hosts > 0 || bound.is_some())
}

/// Forgets revocations and bindings of certificates expired before `before_ms`.
pub(super) async fn expire<C: GenericClient>(c: &C, before_ms: i64) -> StoreResult<()> {
    for sql in [
        "DELETE FROM revocations WHERE expires_at < $1",
        "DELETE FROM credentials WHERE not_after < $1",
    ] {
        exec(c, sql, &[&before_ms]).await?;
    }
    Ok(())
}
