//! The decisions, taken inside the store's transaction.
//!
//! "Replace, don't repair" is decided here: a finding that a rule selects marks the
//! host — unless the image's budget for the window is spent (the host is then *held*
//! as `drifted`, the budget alert says so, and the periodic sweep marks it as soon as
//! the window allows), or the mode is `dry_run` or `manual_approve`.
//!
//! Every flow runs against a [`DecisionTx`]: the open transaction of the store that
//! stored the findings. What a decision causes — the state change, the action log
//! line, the alert occurrences, the mark command — is written in that same
//! transaction, so it is all committed or none of it is: a crash between storing a
//! finding and deciding on it cannot happen, and a retried batch finds the decision
//! already taken. The flows are written once, as async code: PostgreSQL awaits its
//! queries; SQLite's transaction never suspends, and its worker thread polls the flow
//! to completion.

use super::outbox::{Alert, AlertContainer, AlertKind, CommandJob, Occurrence, OutboxItem};
use super::policy::{container_phrase, describe, Policy};
use super::{
    ActionRecord, Decided, FindingRecord, Hold, HostRecord, Outcome, Request, StoreError,
    StoreResult, Transition,
};
use driftwatch_protocol::report::Severity;
use driftwatch_protocol::wire::HostState;
use tracing::{info, warn};

/// The title of `marked` occurrences.
const MARKED_TITLE: &str = "marked for replacement";

/// An open transaction, as the decisions use it. Everything is undone unless the
/// caller commits after the flow returns `Ok`.
pub(crate) trait DecisionTx {
    /// One host, locked against other decisions until the transaction ends.
    async fn host(&mut self, host_id: &str) -> StoreResult<Option<HostRecord>>;
    /// All of a host's findings.
    async fn findings(&mut self, host_id: &str) -> StoreResult<Vec<FindingRecord>>;
    /// Serialises the budget decisions of one image until the transaction ends, so that
    /// two hosts of the image can never both take its last slot, on any replica.
    async fn lock_budget(&mut self, image_id: Option<&str>) -> StoreResult<()>;
    /// Hosts of the image that are not `gone`.
    async fn live_hosts(&mut self, image_id: Option<&str>) -> StoreResult<u64>;
    /// Hosts of the image marked at or after `since_ms`.
    async fn marked_since(&mut self, image_id: Option<&str>, since_ms: i64) -> StoreResult<u64>;
    /// Changes a host's state; the host afterwards.
    async fn transition(
        &mut self,
        host_id: &str,
        transition: Transition,
        now: i64,
    ) -> StoreResult<HostRecord>;
    /// Logs an action.
    async fn record_action(&mut self, action: ActionRecord) -> StoreResult<()>;
    /// Files an occurrence into its alert group (nothing when the host was alerted for
    /// the change already).
    async fn raise(&mut self, occurrence: &Occurrence, due_ms: i64, now: i64) -> StoreResult<()>;
    /// Puts an item into the outbox.
    async fn enqueue(&mut self, item: &OutboxItem, give_up_ms: i64, now: i64) -> StoreResult<()>;
    /// Records that a marked host's agent was told; true the first time.
    async fn set_told(&mut self, host_id: &str) -> StoreResult<bool>;
    /// Alert groups whose wait is over (at most `limit`), locked.
    async fn due_groups(&mut self, now: i64, limit: u32) -> StoreResult<Vec<DueGroup>>;
    /// Takes a group's pending members (they count as alerted from now on) and deletes
    /// the group.
    async fn take_group(&mut self, group: &DueGroup) -> StoreResult<Taken>;
}

/// What [`DecisionTx::take_group`] took.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Taken {
    /// The pending members, sorted: hosts (with an empty container id), or the
    /// containers of a change inside containers.
    pub members: Vec<AlertContainer>,
    /// Members alerted for the group's change before.
    pub earlier: u64,
    /// The distinct hosts of every member alerted for it, these included.
    pub all_hosts: u64,
}

/// A pending alert group whose wait is over.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DueGroup {
    pub kind: AlertKind,
    pub image_id: Option<String>,
    pub group: String,
    pub title: String,
    pub severity: Severity,
    pub detail: String,
    pub first_at_ms: i64,
    /// For a change inside containers: their image.
    pub container_image: Option<String>,
}

/// Most groups flushed in one transaction.
const FLUSH_BATCH: u32 = 100;

/// Turns due groups into alerts and the alerts into one outbox row per subscribed
/// webhook; returns the kinds of the alerts queued.
pub(crate) async fn flush_alerts<T: DecisionTx>(
    tx: &mut T,
    policy: &Policy,
    now: i64,
) -> StoreResult<Vec<AlertKind>> {
    let mut queued = Vec::new();
    for due in tx.due_groups(now, FLUSH_BATCH).await? {
        let taken = tx.take_group(&due).await?;
        let mut hosts: Vec<String> = taken.members.iter().map(|m| m.host_id.clone()).collect();
        hosts.sort();
        hosts.dedup();
        let subscribers: Vec<String> = policy
            .subscribers(due.kind.name())
            .map(|s| s.url.clone())
            .collect();
        if hosts.is_empty() || subscribers.is_empty() {
            tracing::debug!(
                kind = due.kind.name(),
                hosts = hosts.len(),
                "No webhook subscribes to this alert."
            );
            continue;
        }
        let (image_hosts, containers) = match due.container_image {
            // The containers' hosts may be of any image: no image's fleet to count.
            Some(_) => (None, taken.members),
            None => (
                Some(tx.live_hosts(due.image_id.as_deref()).await?),
                Vec::new(),
            ),
        };
        let alert = Alert {
            kind: due.kind,
            image_hosts,
            container_image: due.container_image,
            containers,
            all_hosts: usize::try_from(taken.all_hosts).unwrap_or(usize::MAX),
            image_id: due.image_id,
            group: due.group,
            title: due.title,
            severity: due.severity,
            hosts,
            earlier: usize::try_from(taken.earlier).unwrap_or(usize::MAX),
            detail: due.detail,
            first_at_ms: due.first_at_ms,
            sent_at_ms: now,
        };
        let give_up = now.saturating_add(policy.retry_for_ms);
        for url in subscribers {
            let item = OutboxItem::Webhook {
                url,
                alert: alert.clone(),
            };
            tx.enqueue(&item, give_up, now).await?;
        }
        queued.push(alert.kind);
    }
    Ok(queued)
}

/// One decision in progress.
pub(crate) struct Decider<'a, T> {
    tx: &'a mut T,
    policy: &'a Policy,
    now: i64,
    budget_stopped: bool,
}

impl<'a, T: DecisionTx> Decider<'a, T> {
    pub(crate) fn new(tx: &'a mut T, policy: &'a Policy, now: i64) -> Decider<'a, T> {
        Decider {
            tx,
            policy,
            now,
            budget_stopped: false,
        }
    }

    fn done(self, host: HostRecord) -> Decided {
        Decided {
            host,
            budget_stopped: self.budget_stopped,
        }
    }

    /// After a batch was stored: alerts for its new (or changed) findings, the decision
    /// they call for, and the note that the agent was told of its mark.
    pub(crate) async fn after_ingest(
        mut self,
        host: HostRecord,
        new: &[FindingRecord],
    ) -> StoreResult<Decided> {
        // Sorted by group: concurrent transactions take their alert groups' locks in
        // one order, so that they can wait for each other but never deadlock.
        let mut described: Vec<_> = new.iter().map(|f| (f, describe(f))).collect();
        described.sort_by(|a, b| {
            (a.0.kind == "image", &a.1.group).cmp(&(b.0.kind == "image", &b.1.group))
        });
        for (finding, described) in described {
            let kind = if finding.kind == "image" {
                AlertKind::Image
            } else {
                AlertKind::Drift
            };
            let on_host = format!("on {} ({})", host.host_id, host.hostname);
            let detail = match finding.finding.get("container") {
                Some(container) => {
                    format!("first seen in {} {on_host}", container_phrase(container))
                }
                None => format!("first seen {on_host}"),
            };
            self.raise(Occurrence {
                kind,
                // A change inside containers groups by their image, whatever the
                // image of the hosts they run on.
                image_id: match described.container {
                    Some(_) => None,
                    None => host.image_id.clone(),
                },
                container: described.container,
                group: described.group,
                title: described.title,
                severity: finding.severity,
                host_id: host.host_id.clone(),
                detail,
            })
            .await?;
        }
        let needs_decision = !new.is_empty()
            || matches!(host.state, HostState::Silent | HostState::Gone)
            || (host.state == HostState::Drifted && host.hold == Some(Hold::Budget));
        let host = if needs_decision {
            self.evaluate(host, Some(new)).await?
        } else {
            host
        };
        if host.state == HostState::Marked && self.tx.set_told(&host.host_id).await? {
            self.log(
                &host,
                "agent_told",
                None,
                Outcome::Ok,
                "The agent was told it is marked for replacement.",
            )
            .await?;
        }
        Ok(self.done(host))
    }

    /// Takes a decision asked for by an operator or the sweep.
    pub(crate) async fn request(mut self, host_id: &str, request: Request) -> StoreResult<Decided> {
        let host = self
            .tx
            .host(host_id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "host",
                id: host_id.to_string(),
            })?;
        let host = match request {
            Request::Evaluate => self.evaluate(host, None).await?,
            Request::Approve { by } => {
                let Some(reason) = host.hold_reason.clone().filter(|_| host.hold.is_some()) else {
                    return Err(StoreError::Conflict(format!(
                        "host {host_id} has no decision waiting for approval"
                    )));
                };
                self.mark(&host, reason, &by).await?
            }
            Request::Mark { reason, by } if host.state != HostState::Marked => {
                self.mark(&host, format!("marked by an operator: {reason}"), &by)
                    .await?
            }
            Request::Mark { .. } => host,
            Request::Unmark { by } => {
                let host = self
                    .tx
                    .transition(host_id, Transition::Unmark, self.now)
                    .await?;
                self.log(
                    &host,
                    "unmark",
                    Some(&by),
                    Outcome::Ok,
                    "Mark lifted by an operator.",
                )
                .await?;
                host
            }
            Request::Overdue { missed } => self.overdue(host, missed).await?,
        };
        Ok(self.done(host))
    }

    /// Re-decides one host's state. `new` are the findings just received: a host
    /// neither marked nor held was not selected by its older findings, so only new ones
    /// can change that, and the host's other findings are not read (they grow with
    /// every report). `None` weighs every finding: after silence, for a held decision
    /// the mode no longer explains, and for the sweep.
    async fn evaluate(
        &mut self,
        host: HostRecord,
        new: Option<&[FindingRecord]>,
    ) -> StoreResult<HostRecord> {
        if host.revoked || host.state == HostState::Marked {
            return Ok(host);
        }
        let now = self.now;
        let revived = matches!(host.state, HostState::Silent | HostState::Gone);
        if revived && host.mark_reason.is_some() {
            // A marked host heard from again is still to be replaced.
            return self
                .tx
                .transition(&host.host_id, Transition::Settle(HostState::Marked), now)
                .await;
        }
        let mode_hold = self.policy.mode_hold();
        if !revived {
            // A held decision stands until an operator acts on it, or — held by the
            // budget — until the window has room.
            match (host.hold, mode_hold, host.hold_reason.clone()) {
                (Some(Hold::DryRun), Some(Hold::DryRun), _)
                | (Some(Hold::Approval), Some(Hold::Approval), _) => return Ok(host),
                (Some(Hold::Budget), None, Some(reason)) => {
                    return self.mark_within_budget(host, reason).await
                }
                _ => {}
            }
        }
        let all;
        let candidates = match new {
            Some(new) if !revived && host.hold.is_none() => new,
            _ => {
                all = self.tx.findings(&host.host_id).await?;
                &all
            }
        };
        let settled = if host.findings_by_severity.iter().sum::<u64>() == 0 {
            HostState::Clean
        } else {
            HostState::Drifted
        };
        let selected =
            self.policy
                .select(candidates, host.image_id.as_deref(), host.unmarked_at_ms);
        let Some(finding) = selected else {
            return if host.state != settled || host.hold.is_some() {
                self.tx
                    .transition(&host.host_id, Transition::Settle(settled), now)
                    .await
            } else {
                Ok(host)
            };
        };
        let title = describe(finding).on_host(finding);
        let reason = format!("{} finding: {title}", finding.severity.name());
        match mode_hold {
            Some(Hold::DryRun) => {
                let held = self.hold(&host, Hold::DryRun, &reason).await?;
                let detail = format!("Would mark: {reason}.");
                self.log(&held, "mark", None, Outcome::DryRun, &detail)
                    .await?;
                Ok(held)
            }
            Some(hold) => {
                let held = self.hold(&host, hold, &reason).await?;
                let detail = format!("Held for an operator's approval: {reason}.");
                self.log(&held, "hold", None, Outcome::AwaitingApproval, &detail)
                    .await?;
                Ok(held)
            }
            None => self.mark_within_budget(host, reason).await,
        }
    }

    /// Marks the host if its image's budget has room in the window; holds it (once,
    /// with a budget alert) otherwise.
    async fn mark_within_budget(
        &mut self,
        host: HostRecord,
        reason: String,
    ) -> StoreResult<HostRecord> {
        let image_id = host.image_id.as_deref();
        // Locked before counting: the count and the mark it allows are one step for
        // every replica.
        self.tx.lock_budget(image_id).await?;
        let live = self.tx.live_hosts(image_id).await?;
        let limit = self.policy.budget(live);
        let since = self.now.saturating_sub(self.policy.window_ms);
        let used = self.tx.marked_since(image_id, since).await?;
        if used < limit {
            return self.mark(&host, reason, "policy").await;
        }
        if host.hold == Some(Hold::Budget) {
            return Ok(host);
        }
        let image = image_id.unwrap_or("(none)");
        let held = self.hold(&host, Hold::Budget, &reason).await?;
        self.budget_stopped = true;
        let detail = format!(
            "The replacement budget of image {image} ({limit} of {live} hosts per {} s) is used up; host {} is held as drifted: {reason}.",
            self.policy.window_ms / 1000,
            host.host_id
        );
        self.log(&held, "hold", None, Outcome::Held, &detail)
            .await?;
        self.raise(Occurrence {
            kind: AlertKind::Budget,
            image_id: host.image_id.clone(),
            container: None,
            group: String::new(),
            title: format!("replacement budget of image {image} used up"),
            severity: Severity::High,
            host_id: host.host_id.clone(),
            detail,
        })
        .await?;
        warn!(host_id = %host.host_id, image_id = image, "Replacement held back by the budget.");
        Ok(held)
    }

    async fn hold(
        &mut self,
        host: &HostRecord,
        hold: Hold,
        reason: &str,
    ) -> StoreResult<HostRecord> {
        let transition = Transition::Hold {
            hold,
            reason: reason.to_string(),
        };
        self.tx
            .transition(&host.host_id, transition, self.now)
            .await
    }

    /// Marks the host: the state, the log line, the `marked` alert and the command.
    async fn mark(
        &mut self,
        host: &HostRecord,
        reason: String,
        by: &str,
    ) -> StoreResult<HostRecord> {
        let transition = Transition::Mark {
            reason: reason.clone(),
        };
        let marked = self
            .tx
            .transition(&host.host_id, transition, self.now)
            .await?;
        let detail = format!("Marked for replacement: {reason}.");
        self.log(&marked, "mark", Some(by), Outcome::Ok, &detail)
            .await?;
        info!(host_id = %host.host_id, reason = %reason, "Host marked for replacement.");
        self.announce_mark(&marked, reason).await?;
        Ok(marked)
    }

    /// What follows a mark: the `marked` alert and the mark command, queued.
    pub(crate) async fn announce_mark(
        &mut self,
        marked: &HostRecord,
        reason: String,
    ) -> StoreResult<()> {
        self.raise(Occurrence {
            kind: AlertKind::Marked,
            image_id: marked.image_id.clone(),
            container: None,
            group: String::new(),
            title: MARKED_TITLE.to_string(),
            // Replacing a host is disruptive and deserves attention, but the finding
            // that caused it carries its own severity in its drift alert.
            severity: Severity::High,
            host_id: marked.host_id.clone(),
            detail: format!("{} ({}): {reason}", marked.host_id, marked.hostname),
        })
        .await?;
        if self.policy.command.is_some() {
            let job = OutboxItem::Command(CommandJob {
                host_id: marked.host_id.clone(),
                image_id: marked.image_id.clone(),
                hostname: marked.hostname.clone(),
                reason,
            });
            let give_up = self.now.saturating_add(self.policy.retry_for_ms);
            self.tx.enqueue(&job, give_up, self.now).await?;
        }
        Ok(())
    }

    /// A host whose heartbeats stopped: a marked one was replaced (`gone`), any other
    /// went `silent`. Checked again here: it may have reported since it was listed.
    async fn overdue(&mut self, host: HostRecord, missed: u32) -> StoreResult<HostRecord> {
        let interval_ms = i64::try_from(host.heartbeat_interval_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let last = host.last_heartbeat_ms.unwrap_or(host.first_seen_ms);
        let deadline = last.saturating_add(interval_ms.saturating_mul(i64::from(missed)));
        let still_overdue = interval_ms > 0
            && deadline < self.now
            && !matches!(host.state, HostState::Silent | HostState::Gone);
        if !still_overdue {
            return Ok(host);
        }
        if host.state == HostState::Marked {
            // A marked host going quiet is the replacement happening.
            let gone = self
                .tx
                .transition(&host.host_id, Transition::Retire, self.now)
                .await?;
            let detail = "Marked host stopped reporting: replaced.";
            self.log(&gone, "retire", None, Outcome::Ok, detail).await?;
            return Ok(gone);
        }
        let silent = self
            .tx
            .transition(&host.host_id, Transition::Silence, self.now)
            .await?;
        let detail = format!(
            "Host {} sent no heartbeat for {missed} intervals of {} s.",
            host.host_id, host.heartbeat_interval_secs
        );
        self.log(&silent, "silence", None, Outcome::Ok, &detail)
            .await?;
        warn!(host_id = %host.host_id, "Host went silent.");
        self.raise(Occurrence {
            kind: AlertKind::Silence,
            image_id: host.image_id.clone(),
            container: None,
            group: String::new(),
            title: "went silent".into(),
            severity: Severity::High,
            host_id: host.host_id.clone(),
            detail,
        })
        .await?;
        Ok(silent)
    }

    async fn raise(&mut self, occurrence: Occurrence) -> StoreResult<()> {
        let due = self.now.saturating_add(self.policy.group_wait_ms);
        self.tx.raise(&occurrence, due, self.now).await
    }

    async fn log(
        &mut self,
        host: &HostRecord,
        action: &str,
        target: Option<&str>,
        outcome: Outcome,
        detail: &str,
    ) -> StoreResult<()> {
        let mut record = ActionRecord::about(host, action, target, outcome, detail);
        record.at_ms = self.now;
        self.tx.record_action(record).await
    }
}
