//! The SQL of one SQLite transaction: storing a batch, the [`DecisionTx`] the
//! decisions run against, and the outbox's rows.
//!
//! Everything here runs on the writer thread inside its open transaction; nothing
//! suspends, which is why the decision flows (async, shared with PostgreSQL) can be
//! polled to completion right here.

use super::{collect, count, db_error, host_from_row, HOST_COLUMNS};
use crate::store::decide::{DecisionTx, DueGroup, Taken};
use crate::store::outbox::{random_token, AlertContainer, AlertKind, Occurrence, OutboxItem};
use crate::store::{
    changed, parse_state, severity_code, severity_of, too_many_findings, ActionRecord,
    BatchFindings, FindingInput, FindingRecord, HostRecord, IngestRecord, StoreError, StoreResult,
    Transition, TOO_MANY_FINDINGS_KEY,
};
use driftwatch_protocol::wire::HostState;
use rusqlite::{params, Connection, OptionalExtension};

/// The writer's connection inside its transaction.
pub(super) struct SqliteTx<'a>(pub(super) &'a Connection);

/// What storing one finding did.
enum Upsert {
    /// First seen, or seen again with other content: to be decided and alerted.
    News(FindingRecord),
    /// Seen again, nothing new.
    Same,
    /// Not stored: the host is at its bound.
    Dropped,
}

/// Adds `delta` to the host's count of findings of `severity` (a code).
fn bump(c: &Connection, host_id: &str, code: i64, delta: i64) -> StoreResult<()> {
    let column = match code {
        3 => "n_critical",
        2 => "n_high",
        1 => "n_medium",
        _ => "n_low",
    };
    c.prepare_cached(&format!(
        "UPDATE hosts SET {column} = {column} + ?2 WHERE host_id = ?1"
    ))
    .and_then(|mut s| s.execute(params![host_id, delta]))
    .map(|_| ())
    .map_err(db_error)
}

/// Inserts or refreshes one finding, keeping the host's counts and its bound.
fn upsert_finding(
    c: &Connection,
    host_id: &str,
    input: &FindingInput,
    now: i64,
    room: &mut u64,
) -> StoreResult<Upsert> {
    let existing: Option<(i64, String, i64)> = c
        .prepare_cached(
            "SELECT severity, finding, first_seen FROM findings WHERE host_id = ?1 AND key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![host_id, input.key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(db_error)?;
    let code = severity_code(input.severity);
    let json = input.finding.to_string();
    let Some((old_code, old_json, first_seen)) = existing else {
        if *room == 0 && input.key != TOO_MANY_FINDINGS_KEY {
            return Ok(Upsert::Dropped);
        }
        *room = room.saturating_sub(1);
        c.prepare_cached(
            "INSERT INTO findings (host_id, key, kind, severity, subject, finding, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![host_id, input.key, input.kind, code, input.subject, json, now])
        })
        .map_err(db_error)?;
        bump(c, host_id, code, 1)?;
        return Ok(Upsert::News(input.record(host_id, now, now)));
    };
    c.prepare_cached(
        "UPDATE findings SET severity = ?3, subject = ?4, finding = ?5, last_seen = ?6
         WHERE host_id = ?1 AND key = ?2",
    )
    .and_then(|mut s| s.execute(params![host_id, input.key, code, input.subject, json, now]))
    .map_err(db_error)?;
    if old_code != code {
        bump(c, host_id, old_code, -1)?;
        bump(c, host_id, code, 1)?;
    }
    let old: serde_json::Value = serde_json::from_str(&old_json).unwrap_or_default();
    Ok(if old_code != code || changed(&old, &input.finding) {
        Upsert::News(input.record(host_id, first_seen, now))
    } else {
        Upsert::Same
    })
}

/// Records the batch's event ids in one statement; the ids not seen before (each
/// once, though a batch may repeat one), the others being duplicates.
fn new_events(
    c: &Connection,
    host_id: &str,
    events: &[(String, FindingInput)],
    now: i64,
) -> StoreResult<std::collections::HashSet<String>> {
    let ids = serde_json::Value::from(events.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>());
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as part of the join.
    c.prepare_cached(
        "INSERT INTO events (host_id, event_id, received)
         SELECT ?1, value, ?2 FROM json_each(?3) WHERE true
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .and_then(|mut s| {
        s.query_map(params![host_id, now, ids.to_string()], |r| r.get(0))?
            .collect()
    })
    .map_err(db_error)
}

/// Which of the batch's finding keys the host has stored already.
fn stored_keys<'a>(
    c: &Connection,
    host_id: &str,
    keys: impl Iterator<Item = &'a str>,
) -> StoreResult<std::collections::HashSet<String>> {
    let keys = serde_json::Value::from(keys.collect::<Vec<_>>());
    c.prepare_cached(
        "SELECT key FROM findings WHERE host_id = ?1 AND key IN (SELECT value FROM json_each(?2))",
    )
    .and_then(|mut s| {
        s.query_map(params![host_id, keys.to_string()], |r| r.get(0))?
            .collect()
    })
    .map_err(db_error)
}

/// Stores a batch: the host's contact, its heartbeat, its new events and findings.
/// Returns (accepted, duplicates, new or changed findings, first contact).
pub(super) fn store_batch(
    c: &Connection,
    record: &IngestRecord,
    max_findings: u64,
) -> StoreResult<(u32, u32, Vec<FindingRecord>, bool)> {
    let now = record.received_ms;
    let host_id = record.host_id.as_str();
    let revoked: Option<i64> = c
        .prepare_cached("SELECT revoked FROM hosts WHERE host_id = ?1")
        .and_then(|mut s| s.query_row([host_id], |row| row.get(0)).optional())
        .map_err(db_error)?;
    if revoked.is_some_and(|r| r != 0) {
        return Err(StoreError::Conflict(format!("host {host_id} is revoked")));
    }
    c.prepare_cached(
        "INSERT INTO hosts (host_id, hostname, image_id, baseline_digest, state,
             state_since, first_seen, last_seen)
         VALUES (?1, ?2, ?3, ?4, 'clean', ?5, ?5, ?5)
         ON CONFLICT (host_id) DO UPDATE SET hostname = ?2, image_id = ?3,
             baseline_digest = ?4, last_seen = ?5",
    )
    .and_then(|mut s| {
        s.execute(params![
            host_id,
            record.hostname,
            record.image_id,
            record.baseline_digest,
            now
        ])
    })
    .map_err(db_error)?;
    let batch = BatchFindings::of(record)?;
    // Heartbeats are not kept as events: only the latest matters, and a repeated one
    // is harmless. Keeping them would grow the table by every host every interval.
    if let Some((agent_version, interval_secs)) = &batch.heartbeat {
        c.prepare_cached(
            "UPDATE hosts SET last_heartbeat = ?2, heartbeat_interval = ?3, agent_version = ?4
             WHERE host_id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                host_id,
                now,
                i64::try_from(*interval_secs).unwrap_or(i64::MAX),
                agent_version
            ])
        })
        .map_err(db_error)?;
    }
    if let Some(delta) = &batch.provisioned {
        c.prepare_cached(
            "INSERT INTO provisioning (host_id, received, delta) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_id) DO UPDATE SET received = ?2, delta = ?3",
        )
        .and_then(|mut s| s.execute(params![host_id, now, delta]))
        .map_err(db_error)?;
    }
    let stored = count(
        c,
        "SELECT n_critical + n_high + n_medium + n_low FROM hosts WHERE host_id = ?1",
        [host_id],
    )?;
    let mut room = max_findings.saturating_sub(stored);
    let (mut accepted, mut duplicates, mut dropped) = (batch.heartbeats, 0u32, 0u64);
    let mut news = Vec::new();
    let mut keep = |upsert: Upsert, dropped: &mut u64| match upsert {
        Upsert::News(record) => news.push(record),
        Upsert::Same => {}
        Upsert::Dropped => *dropped += 1,
    };
    // A host at its bound (a flood) costs the single writer little: its events are
    // recorded in one statement and the keys it has stored looked up in another, so
    // its new findings are only counted as dropped, in the one update below.
    let mut fresh = new_events(c, host_id, &batch.events, now)?;
    let stored_before = if room == 0 {
        let keys = batch.events.iter().filter(|(id, _)| fresh.contains(id));
        Some(stored_keys(
            c,
            host_id,
            keys.map(|(_, input)| input.key.as_str()),
        )?)
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
        keep(
            upsert_finding(c, host_id, input, now, &mut room)?,
            &mut dropped,
        );
    }
    for input in &batch.collector {
        keep(
            upsert_finding(c, host_id, input, now, &mut room)?,
            &mut dropped,
        );
    }
    if dropped > 0 {
        let total: u64 = c
            .query_row(
                "UPDATE hosts SET findings_dropped = findings_dropped + ?2 WHERE host_id = ?1
                 RETURNING findings_dropped",
                params![host_id, i64::try_from(dropped).unwrap_or(i64::MAX)],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db_error)?;
        let marker = too_many_findings(max_findings, total);
        keep(
            upsert_finding(c, host_id, &marker, now, &mut room)?,
            &mut dropped,
        );
    }
    Ok((accepted, duplicates, news, revoked.is_none()))
}

pub(super) fn load_host(c: &Connection, host_id: &str) -> StoreResult<Option<HostRecord>> {
    c.prepare_cached(&format!(
        "SELECT {HOST_COLUMNS} FROM hosts WHERE host_id = ?1"
    ))
    .and_then(|mut statement| statement.query_row([host_id], host_from_row).optional())
    .map_err(db_error)
}

pub(super) fn require_host(c: &Connection, host_id: &str) -> StoreResult<HostRecord> {
    load_host(c, host_id)?.ok_or_else(|| StoreError::NotFound {
        what: "host",
        id: host_id.to_string(),
    })
}

pub(super) fn transition(
    c: &Connection,
    host_id: &str,
    transition: Transition,
    now: i64,
) -> StoreResult<HostRecord> {
    let host = require_host(c, host_id)?;
    let exec = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> StoreResult<()> {
        c.prepare_cached(sql)
            .and_then(|mut s| s.execute(params))
            .map(|_| ())
            .map_err(db_error)
    };
    let set_state = |state: HostState| {
        exec(
            "UPDATE hosts SET state = ?2,
                 state_since = CASE WHEN state = ?2 THEN state_since ELSE ?3 END
             WHERE host_id = ?1",
            &[&host_id, &state.name(), &now],
        )
    };
    match transition {
        Transition::Settle(state) => {
            set_state(state)?;
            exec(
                "UPDATE hosts SET hold = NULL, hold_reason = NULL WHERE host_id = ?1",
                &[&host_id],
            )?;
        }
        Transition::Mark { reason } => {
            set_state(HostState::Marked)?;
            exec(
                "UPDATE hosts SET mark_reason = ?2, marked_at = ?3, hold = NULL,
                     hold_reason = NULL WHERE host_id = ?1",
                &[&host_id, &reason, &now],
            )?;
            exec(
                "INSERT INTO marks (host_id, image_id, at) VALUES (?1, ?2, ?3)",
                &[&host_id, &host.image_id, &now],
            )?;
        }
        Transition::Hold { hold, reason } => {
            set_state(HostState::Drifted)?;
            exec(
                "UPDATE hosts SET hold = ?2, hold_reason = ?3 WHERE host_id = ?1",
                &[&host_id, &hold.name(), &reason],
            )?;
        }
        Transition::Unmark => {
            set_state(HostState::Drifted)?;
            exec(
                "UPDATE hosts SET mark_reason = NULL, marked_at = NULL, hold = NULL,
                     hold_reason = NULL, unmarked_at = ?2, told_at = NULL WHERE host_id = ?1",
                &[&host_id, &now],
            )?;
            // A lifted mark replaced nothing: it gives its budget slot back.
            exec("DELETE FROM marks WHERE host_id = ?1", &[&host_id])?;
        }
        Transition::Silence => set_state(HostState::Silent)?,
        Transition::Retire => set_state(HostState::Gone)?,
    }
    require_host(c, host_id)
}

pub(super) fn record_action(c: &Connection, action: &ActionRecord) -> StoreResult<i64> {
    c.prepare_cached(
        "INSERT INTO actions (at, host_id, image_id, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            if action.at_ms == 0 {
                crate::store::now_ms()
            } else {
                action.at_ms
            },
            action.host_id,
            action.image_id,
            action.action,
            action.target,
            action.outcome.name(),
            action.detail
        ])
    })
    .map_err(db_error)?;
    Ok(c.last_insert_rowid())
}

pub(super) fn live_hosts(c: &Connection, image_id: Option<&str>) -> StoreResult<u64> {
    count(
        c,
        "SELECT count(*) FROM hosts WHERE image_id IS ?1 AND state != 'gone'",
        params![image_id],
    )
}

pub(super) fn marked_since(c: &Connection, image_id: Option<&str>, since: i64) -> StoreResult<u64> {
    count(
        c,
        "SELECT count(DISTINCT host_id) FROM marks WHERE image_id IS ?1 AND at >= ?2",
        params![image_id, since],
    )
}

pub(super) fn raise(c: &Connection, o: &Occurrence, due: i64, now: i64) -> StoreResult<()> {
    let image = o.image_id.as_deref().unwrap_or("");
    let container = o.container.as_ref().map_or("", |c| c.id.as_str());
    let key = params![o.kind.name(), image, o.group, o.host_id, container, now];
    let new_member = c
        .prepare_cached(
            "INSERT INTO alert_hosts (kind, image_id, grp, host_id, container_id, pending, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| s.execute(key))
        .map_err(db_error)?;
    if new_member == 0 {
        // Pending or alerted already: the change is still around, nothing more.
        return c
            .prepare_cached(
                "UPDATE alert_hosts SET seen_at = ?6
                 WHERE kind = ?1 AND image_id = ?2 AND grp = ?3 AND host_id = ?4
                   AND container_id = ?5 AND seen_at < ?6 - 3600000",
            )
            .and_then(|mut s| s.execute(key))
            .map(|_| ())
            .map_err(db_error);
    }
    c.prepare_cached(
        "INSERT INTO alert_groups (kind, image_id, grp, title, severity, detail, first_at, due_at,
             container_image)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (kind, image_id, grp) DO UPDATE SET severity = max(severity, excluded.severity)",
    )
    .and_then(|mut s| {
        s.execute(params![
            o.kind.name(),
            image,
            o.group,
            o.title,
            severity_code(o.severity),
            o.detail,
            now,
            due,
            o.container.as_ref().map(|c| c.image.as_str()),
        ])
    })
    .map(|_| ())
    .map_err(db_error)
}

pub(super) fn enqueue(
    c: &Connection,
    item: &OutboxItem,
    give_up: i64,
    now: i64,
) -> StoreResult<()> {
    let payload = serde_json::to_string(item)
        .map_err(|e| StoreError::Database(format!("cannot encode an outbox item: {e}")))?;
    c.prepare_cached(
        "INSERT INTO outbox (kind, payload, idempotency_key, state, created_at,
             next_attempt_at, give_up_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![item.kind(), payload, random_token(), now, give_up]))
    .map(|_| ())
    .map_err(db_error)
}

impl DecisionTx for SqliteTx<'_> {
    async fn host(&mut self, host_id: &str) -> StoreResult<Option<HostRecord>> {
        // The single writer: nothing else decides meanwhile.
        load_host(self.0, host_id)
    }

    async fn findings(&mut self, host_id: &str) -> StoreResult<Vec<FindingRecord>> {
        collect(
            self.0,
            &format!(
                "SELECT {} FROM findings WHERE host_id = ?1 ORDER BY severity DESC, key",
                super::FINDING_COLUMNS
            ),
            [host_id],
            super::finding_from_row,
        )
    }

    async fn lock_budget(&mut self, _image_id: Option<&str>) -> StoreResult<()> {
        // One writer thread runs every transaction of the database, one after the
        // other: decisions are serialised already.
        Ok(())
    }

    async fn live_hosts(&mut self, image_id: Option<&str>) -> StoreResult<u64> {
        live_hosts(self.0, image_id)
    }

    async fn marked_since(&mut self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64> {
        marked_since(self.0, image_id, since_ms)
    }

    async fn transition(
        &mut self,
        host_id: &str,
        change: Transition,
        now: i64,
    ) -> StoreResult<HostRecord> {
        transition(self.0, host_id, change, now)
    }

    async fn record_action(&mut self, action: ActionRecord) -> StoreResult<()> {
        record_action(self.0, &action).map(|_| ())
    }

    async fn raise(&mut self, occurrence: &Occurrence, due_ms: i64, now: i64) -> StoreResult<()> {
        raise(self.0, occurrence, due_ms, now)
    }

    async fn enqueue(&mut self, item: &OutboxItem, give_up_ms: i64, now: i64) -> StoreResult<()> {
        enqueue(self.0, item, give_up_ms, now)
    }

    async fn set_told(&mut self, host_id: &str) -> StoreResult<bool> {
        self.0
            .prepare_cached(
                "UPDATE hosts SET told_at = last_seen WHERE host_id = ?1 AND told_at IS NULL",
            )
            .and_then(|mut s| s.execute([host_id]))
            .map(|n| n == 1)
            .map_err(db_error)
    }

    async fn due_groups(&mut self, now: i64, limit: u32) -> StoreResult<Vec<DueGroup>> {
        let rows = collect(
            self.0,
            "SELECT kind, image_id, grp, title, severity, detail, first_at, container_image
             FROM alert_groups WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2",
            params![now, limit],
            |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ),
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            },
        )?;
        rows.into_iter()
            .map(
                |((kind, image, group, title), severity, detail, first_at, container_image)| {
                    Ok(DueGroup {
                        kind: AlertKind::from_name(&kind).ok_or_else(|| {
                            StoreError::Corrupt(format!("unknown alert kind {kind:?}"))
                        })?,
                        image_id: Some(image).filter(|i| !i.is_empty()),
                        group,
                        title,
                        severity: severity_of(severity)?,
                        detail,
                        first_at_ms: first_at,
                        container_image,
                    })
                },
            )
            .collect()
    }

    async fn take_group(&mut self, due: &DueGroup) -> StoreResult<Taken> {
        let key = params![
            due.kind.name(),
            due.image_id.as_deref().unwrap_or(""),
            due.group
        ];
        let members = collect(
            self.0,
            "SELECT host_id, container_id FROM alert_hosts
             WHERE kind = ?1 AND image_id = ?2 AND grp = ?3 AND pending = 1
             ORDER BY host_id, container_id",
            key,
            |r| {
                Ok(AlertContainer {
                    host_id: r.get(0)?,
                    id: r.get(1)?,
                })
            },
        )?;
        let earlier = count(
            self.0,
            "SELECT count(*) FROM alert_hosts
             WHERE kind = ?1 AND image_id = ?2 AND grp = ?3 AND pending = 0",
            key,
        )?;
        let all_hosts = count(
            self.0,
            "SELECT count(DISTINCT host_id) FROM alert_hosts
             WHERE kind = ?1 AND image_id = ?2 AND grp = ?3",
            key,
        )?;
        for sql in [
            "UPDATE alert_hosts SET pending = 0 WHERE kind = ?1 AND image_id = ?2 AND grp = ?3",
            "DELETE FROM alert_groups WHERE kind = ?1 AND image_id = ?2 AND grp = ?3",
        ] {
            self.0.execute(sql, key).map_err(db_error)?;
        }
        Ok(Taken {
            members,
            earlier,
            all_hosts,
        })
    }
}

/// The state of a stored row, checked.
pub(super) fn state_of(name: &str) -> rusqlite::Result<HostState> {
    parse_state(name).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })
}
