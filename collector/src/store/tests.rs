//! The store's tests, one body per behaviour, run against every implementation: once
//! on SQLite and once on PostgreSQL (a fresh database per test, created under the
//! admin URL in `DRIFTWATCH_TEST_POSTGRES`; without it the PostgreSQL half says why it
//! is skipped, and fails when `CI=true`).

use super::outbox::OutboxItem;
use super::sqlite::SqliteStore;
use super::*;
use crate::config::CollectorConfig;
use driftwatch_protocol::report::{
    ContainerRef, FileChange, FileFinding, Finding, KernelModuleFinding, KernelModuleReason,
};
use std::path::PathBuf;

/// A database for one test, and the way to open handles on it: each handle is what
/// one replica (or one run of the collector) has.
pub(crate) enum TestDb {
    /// A SQLite file in a directory of its own.
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL database of its own, dropped at the end.
    Postgres(super::postgres::tests::PgTestDb),
}

impl TestDb {
    fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    fn path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("collector.db")
    }

    /// A new handle on the database.
    pub(crate) async fn open(&self) -> DynStore {
        match self {
            TestDb::Sqlite(dir) => Arc::new(SqliteStore::open(&TestDb::path(dir)).unwrap()),
            TestDb::Postgres(db) => Arc::new(db.open().await),
        }
    }

    /// Runs SQL on the database beside the store (to break it on purpose).
    pub(crate) async fn execute(&self, sqlite: &str, postgres: &str) {
        match self {
            TestDb::Sqlite(dir) => rusqlite::Connection::open(TestDb::path(dir))
                .unwrap()
                .execute_batch(sqlite)
                .unwrap(),
            TestDb::Postgres(db) => db.execute(postgres).await,
        }
    }
}

/// Runs a test body once per store.
macro_rules! both_stores {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::TestDb::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = crate::store::postgres::tests::PgTestDb::create().await {
                    super::$name(super::TestDb::Postgres(db)).await;
                }
            }
        }
    )+};
}

both_stores!(
    a_retried_batch_stores_nothing_twice,
    budgets_count_marks_per_image_and_window,
    enrollment_is_once_per_host_and_revocation_sticks,
    silent_and_gone_hosts_expire_with_their_findings,
    a_reopened_store_keeps_everything,
    the_decision_is_taken_in_the_ingest_transaction,
    the_budget_holds_exactly_under_concurrent_replicas,
    a_changed_finding_is_decided_and_alerted_again,
    the_outbox_survives_a_restart,
    a_dead_replicas_delivery_is_taken_over_with_its_key,
    a_lease_is_taken_over_when_its_holder_stops,
    a_host_cannot_store_more_findings_than_its_bound,
    lists_page_with_cursors,
    hosts_filter_by_severity_and_page_in_every_order,
    an_unknown_state_in_the_database_is_an_error,
    tokens_are_kept_by_hash_and_revoked,
    a_change_inside_containers_groups_by_their_image_across_hosts,
    container_drift_marks_a_node_only_when_a_rule_says_so,
    the_dashboard_counts_come_grouped_from_the_store,
    sessions_are_shared_bounded_and_end_with_their_token,
    a_kept_baseline_is_replaced_and_forgotten,
);

pub(crate) fn config(extra: &str) -> CollectorConfig {
    toml::from_str(&format!(
        "[tls]\ncert_file = \"/x\"\nkey_file = \"/x\"\nclient_ca_file = \"/x\"\n\
         [auth]\noperator_token_file = \"/x\"\n{extra}"
    ))
    .unwrap()
}

pub(crate) fn policy(extra: &str) -> Arc<Policy> {
    Arc::new(Policy::new(&config(extra)).unwrap())
}

fn module(name: &str, severity: Severity) -> Finding {
    Finding::KernelModule(KernelModuleFinding {
        name: name.into(),
        reason: KernelModuleReason::NotInImage,
        taint: None,
        severity,
    })
}

fn critical(name: &str) -> IngestBody {
    IngestBody::Finding(Box::new(module(name, Severity::Critical)))
}

fn batch_on(image: &str, host: &str, events: Vec<(&str, IngestBody)>) -> IngestRecord {
    IngestRecord {
        host_id: host.into(),
        hostname: host.into(),
        image_id: Some(image.into()),
        baseline_digest: Some("blake3:00".into()),
        events: events
            .into_iter()
            .map(|(id, body)| IngestEvent {
                id: id.into(),
                body,
            })
            .collect(),
        collector_findings: Vec::new(),
        received_ms: now_ms(),
    }
}

fn batch(host: &str, events: Vec<(&str, IngestBody)>) -> IngestRecord {
    batch_on("img", host, events)
}

fn heartbeat(interval_secs: u64) -> IngestBody {
    IngestBody::Heartbeat {
        agent_version: "1".into(),
        interval_secs,
    }
}

async fn all_actions(store: &DynStore) -> Vec<ActionRecord> {
    store.actions(ActionFilter::default()).await.unwrap().items
}

async fn a_retried_batch_stores_nothing_twice(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[replacement]\nmode = \"dry_run\"\n");
    let events = || vec![("e1", critical("evil")), ("e2", critical("worse"))];
    let first = store
        .ingest(batch("h1", events()), policy.clone())
        .await
        .unwrap();
    assert!(first.first_contact);
    assert_eq!(
        (first.accepted, first.duplicates, first.new_findings.len()),
        (2, 0, 2)
    );
    let again = store
        .ingest(batch("h1", events()), policy.clone())
        .await
        .unwrap();
    assert_eq!(
        (again.accepted, again.duplicates, again.new_findings.len()),
        (0, 2, 0)
    );
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 2);
    assert_eq!(again.host.findings_by_severity, [2, 0, 0, 0]);
    // The same ids from another host are that host's own events.
    let other = store.ingest(batch("h2", events()), policy).await.unwrap();
    assert_eq!(other.accepted, 2);
}

async fn budgets_count_marks_per_image_and_window(db: TestDb) {
    let store = db.open().await;
    let policy = policy("");
    for host in ["a", "b", "c"] {
        store
            .ingest(batch(host, vec![]), policy.clone())
            .await
            .unwrap();
    }
    let t0 = now_ms();
    for host in ["a", "b"] {
        let marked = store
            .transition(host, Transition::Mark { reason: "r".into() }, t0)
            .await
            .unwrap();
        assert_eq!(marked.state, HostState::Marked);
    }
    assert_eq!(store.marked_since(Some("img"), t0).await.unwrap(), 2);
    assert_eq!(store.marked_since(Some("img"), t0 + 1).await.unwrap(), 0);
    assert_eq!(store.marked_since(Some("other"), 0).await.unwrap(), 0);
    assert_eq!(store.live_hosts_on_image(Some("img")).await.unwrap(), 3);
    store.transition("c", Transition::Retire, t0).await.unwrap();
    assert_eq!(store.live_hosts_on_image(Some("img")).await.unwrap(), 2);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.hosts_by_state, [0, 0, 2, 0, 1]);
}

fn binding(host: &str, key: &str, source: trust::Source) -> Binding {
    Binding {
        host_id: host.into(),
        key_fingerprint: key.into(),
        serial: format!("serial-{key}"),
        not_after_ms: 10_000_000,
        source,
        token: (source == trust::Source::Enrolled).then(|| "enroll-2".into()),
        images: None,
        daemon: true,
        bound_ms: 1,
    }
}

async fn uses_left(store: &DynStore) -> Option<u64> {
    store.tokens().await.unwrap()[0].uses_left
}

async fn enrollment_is_once_per_host_and_revocation_sticks(db: TestDb) {
    use trust::Source::{Enrolled as E, FirstContact, Provisioned as P};
    let store = db.open().await;
    let token = TokenRecord {
        name: "enroll-2".into(),
        role: "enroll".into(),
        created_ms: 0,
        expires_ms: None,
        uses_left: Some(2),
        host_ids: None,
        images: None,
        revoked_ms: None,
        daemon: true,
    };
    store
        .create_token(token, trust::token_hash("s"))
        .await
        .unwrap();
    let conflict = |result: StoreResult<Enrolled>| matches!(result, Err(StoreError::Conflict(_)));
    // Bound once to a key; the same key again spends nothing; another key is refused.
    assert_eq!(
        store.bind(binding("h1", "k1", E)).await.unwrap(),
        Enrolled::New
    );
    assert_eq!(
        store.host("h1").await.unwrap().unwrap().state,
        HostState::Clean
    );
    assert_eq!(uses_left(&store).await, Some(1));
    assert_eq!(
        store.bind(binding("h1", "k1", E)).await.unwrap(),
        Enrolled::Again
    );
    assert_eq!(uses_left(&store).await, Some(1));
    assert!(conflict(store.bind(binding("h1", "k2", E)).await));
    // A provisioned id is never enrolled, even with its own key; provisioning rebinds.
    store.bind(binding("p1", "kp", P)).await.unwrap();
    assert!(conflict(store.bind(binding("p1", "kp", E)).await));
    assert!(conflict(store.bind(binding("p1", "kx", E)).await));
    store.bind(binding("p1", "kq", P)).await.unwrap();
    assert_eq!(
        store.admission("p1", "kp").await.unwrap(),
        Admission::OtherKey
    );
    assert!(matches!(
        store.admission("p1", "kq").await.unwrap(),
        Admission::Bound(b) if b.source == P
    ));
    assert_eq!(
        store.admission("h9", "k9").await.unwrap(),
        Admission::Unbound
    );
    // The token's last use, then it is used up.
    store.bind(binding("h2", "k3", E)).await.unwrap();
    assert_eq!(uses_left(&store).await, Some(0));
    assert!(conflict(store.bind(binding("h3", "k4", E)).await));
    assert!(store.host("h3").await.unwrap().is_none());

    // Revoked: the host and its key, and the key outlives the host's record.
    assert!(store.revoke("h1", 3).await.unwrap());
    assert!(store.host("h1").await.unwrap().unwrap().revoked);
    assert!(matches!(
        store.ingest(batch("h1", vec![]), policy("")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.admission("h1", "k1").await.unwrap(),
        Admission::Revoked
    );
    assert_eq!(store.expire_hosts(1_000).await.unwrap(), 1);
    assert!(store.host("h1").await.unwrap().is_none());
    let reopened = db.open().await;
    assert_eq!(
        reopened.admission("h1", "k1").await.unwrap(),
        Admission::Revoked
    );
    assert!(conflict(
        reopened.bind(binding("h1", "k1", FirstContact)).await
    ));
    // Until the certificate expires.
    reopened.expire_hosts(20_000_000).await.unwrap();
    assert_eq!(
        reopened.admission("h1", "k1").await.unwrap(),
        Admission::Unbound
    );
    assert!(!store.revoke("nobody", 3).await.unwrap());
}

async fn silent_and_gone_hosts_expire_with_their_findings(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[replacement]\nmode = \"dry_run\"\n");
    let mut record = batch("h1", vec![("e1", critical("m")), ("hb", heartbeat(1))]);
    record.received_ms = 1_000;
    store.ingest(record, policy.clone()).await.unwrap();
    assert!(store.overdue_hosts(3, 3_500).await.unwrap().is_empty());
    assert_eq!(store.overdue_hosts(3, 4_001).await.unwrap(), ["h1"]);
    store
        .transition("h1", Transition::Silence, 4_001)
        .await
        .unwrap();
    assert!(store.overdue_hosts(3, 10_000).await.unwrap().is_empty());
    assert_eq!(store.expire_hosts(4_000).await.unwrap(), 0);
    assert_eq!(store.expire_hosts(5_000).await.unwrap(), 1);
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert!(findings.items.is_empty());
    assert!(store.host("h1").await.unwrap().is_none());
}

async fn a_reopened_store_keeps_everything(db: TestDb) {
    let policy = policy("");
    {
        let store = db.open().await;
        let outcome = store
            .ingest(batch("h1", vec![("e1", critical("m"))]), policy.clone())
            .await
            .unwrap();
        assert_eq!(outcome.host.state, HostState::Marked);
    }
    let store = db.open().await;
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 1);
    let again = store
        .ingest(batch("h1", vec![("e1", critical("m"))]), policy)
        .await
        .unwrap();
    assert_eq!(again.duplicates, 1);
    assert_eq!(again.host.state, HostState::Marked);
}

/// The decision is part of the batch's transaction: when deciding fails (here: the
/// database refuses the mark, as a crash at that point would), the findings are not
/// stored either, so the agent's retry is new again, and decided.
async fn the_decision_is_taken_in_the_ingest_transaction(db: TestDb) {
    let store = db.open().await;
    let policy = policy("");
    db.execute(
        "CREATE TRIGGER crash BEFORE INSERT ON marks BEGIN SELECT RAISE(ABORT, 'crash'); END;",
        "CREATE FUNCTION crash() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'crash'; END $$
             LANGUAGE plpgsql;
         CREATE TRIGGER crash BEFORE INSERT ON marks FOR EACH ROW EXECUTE FUNCTION crash();",
    )
    .await;
    let events = || vec![("e1", critical("rootkit"))];
    let failed = store.ingest(batch("h1", events()), policy.clone()).await;
    assert!(failed.is_err(), "{failed:?}");
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert!(findings.items.is_empty(), "no finding without its decision");
    db.execute("DROP TRIGGER crash;", "DROP TRIGGER crash ON marks;")
        .await;
    // The collector restarts; the agent retries the batch it never got an answer to.
    drop(store);
    let store = db.open().await;
    let retried = store.ingest(batch("h1", events()), policy).await.unwrap();
    assert_eq!((retried.accepted, retried.duplicates), (1, 0));
    assert_eq!(retried.host.state, HostState::Marked);
    let marks: Vec<ActionRecord> = all_actions(&store)
        .await
        .into_iter()
        .filter(|a| a.action == "mark")
        .collect();
    assert_eq!(marks.len(), 1, "{marks:?}");
    // And the same batch once more changes nothing.
    let again = store
        .ingest(
            batch("h1", vec![("e1", critical("rootkit"))]),
            policy_default(),
        )
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
}

fn policy_default() -> Arc<Policy> {
    policy("")
}

/// 50 hosts of one image drift at once through 3 replicas with a budget of 5: exactly
/// 5 are marked, every round.
async fn the_budget_holds_exactly_under_concurrent_replicas(db: TestDb) {
    let replicas = [db.open().await, db.open().await, db.open().await];
    let policy = policy("[replacement]\nmax_hosts = 5\nmax_percent = 100.0\n");
    for round in 0..20 {
        let image = format!("img-{round}");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = Arc::clone(&replicas[i % replicas.len()]);
            let (policy, image) = (Arc::clone(&policy), image.clone());
            tasks.push(tokio::spawn(async move {
                let host = format!("{image}-h{i}");
                let events = vec![("e1", critical("rootkit"))];
                store.ingest(batch_on(&image, &host, events), policy).await
            }));
        }
        let mut marked = 0;
        for task in tasks {
            let outcome = task.await.unwrap().unwrap();
            marked += usize::from(outcome.host.state == HostState::Marked);
        }
        assert_eq!(marked, 5, "round {round}");
        let held = replicas[0].held_hosts(Hold::Budget).await.unwrap();
        assert_eq!(
            held.iter()
                .filter(|h| h.starts_with(&format!("{image}-")))
                .count(),
            45,
            "round {round}"
        );
        assert_eq!(replicas[1].marked_since(Some(&image), 0).await.unwrap(), 5);
    }
}

/// An escalation arrives as a new event for a finding already stored (a file added at
/// medium, then made setuid): it updates the finding and is decided and alerted.
async fn a_changed_finding_is_decided_and_alerted_again(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[alerts]\ngroup_wait_secs = 0\n");
    let medium = IngestBody::Finding(Box::new(module("m", Severity::Medium)));
    let first = store
        .ingest(batch("h1", vec![("e1", medium)]), policy.clone())
        .await
        .unwrap();
    assert_eq!(first.host.state, HostState::Drifted);
    assert_eq!(first.host.findings_by_severity, [0, 0, 1, 0]);
    let escalated = store
        .ingest(batch("h1", vec![("e2", critical("m"))]), policy.clone())
        .await
        .unwrap();
    assert_eq!(escalated.new_findings.len(), 1);
    assert_eq!(escalated.host.state, HostState::Marked);
    assert_eq!(escalated.host.findings_by_severity, [1, 0, 0, 0]);
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 1);
    assert_eq!(findings.items[0].severity, Severity::Critical);
    // The same content under yet another event id is not news.
    let same = store
        .ingest(batch("h1", vec![("e3", critical("m"))]), policy)
        .await
        .unwrap();
    assert!(same.new_findings.is_empty());
}

/// Alerts and commands owed when the collector stops are delivered after it starts
/// again.
async fn the_outbox_survives_a_restart(db: TestDb) {
    use crate::alerts::tests::TestReceiver;
    let receiver = TestReceiver::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ran");
    let extra = format!(
        "[alerts]\ngroup_wait_secs = 0\nmark_command = [\"sh\", \"-c\", \
         \"printf %s \\\"$DRIFTWATCH_ACTION_ID\\\" > {}\"]\n\
         [[webhook]]\nurl = \"{}\"\nevents = [\"marked\"]\n",
        out.display(),
        receiver.url
    );
    let policy = policy(&extra);
    {
        // A collector that stores the decision and dies before delivering anything.
        let store = db.open().await;
        store
            .ingest(batch("h1", vec![("e1", critical("m"))]), policy.clone())
            .await
            .unwrap();
        store
            .flush_alerts(now_ms() + 1, policy.clone())
            .await
            .unwrap();
        let counts = store.counts().await.unwrap();
        assert_eq!((counts.pending_alerts, counts.pending_commands), (1, 1));
    }
    let store = db.open().await;
    let config = config(&extra);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let alerter = crate::alerts::tests::fast_alerter(&config, store.clone(), metrics.clone());
    let _actions = crate::actions::Actions::start(&config, store.clone(), alerter, metrics);
    let bodies = receiver.wait_for(1).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["kind"], "marked");
    let logged = crate::alerts::tests::wait_for_actions(&store, "command", 1).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].outcome, Outcome::Ok, "{}", logged[0].detail);
    let action_id = std::fs::read_to_string(&out).unwrap();
    assert_eq!(action_id.len(), 32, "{action_id:?}");
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.pending_alerts, counts.pending_commands), (0, 0));
}

/// A replica claims a delivery and dies: when its claim expires another replica
/// claims it, with the same idempotency key, and only that one's outcome counts.
async fn a_dead_replicas_delivery_is_taken_over_with_its_key(db: TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let policy = policy("[alerts]\nmark_command = [\"true\"]\n");
    let host = a
        .ingest(batch("h1", vec![]), policy.clone())
        .await
        .unwrap()
        .host;
    a.announce_mark(host, "test".into(), policy).await.unwrap();
    let now = now_ms();
    let claimed = a.claim("a", "command", now, 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(matches!(claimed[0].item, OutboxItem::Command(_)));
    // Claimed: nobody else gets it while the claim lasts.
    assert!(b
        .claim("b", "command", now + 500, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A is gone; its claim expires.
    let taken = b
        .claim("b", "command", now + 1_001, 1_000, 10)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, claimed[0].id);
    assert_eq!(taken[0].idempotency_key, claimed[0].idempotency_key);
    assert_eq!(taken[0].attempts, 2);
    let done = |by: &str| {
        Finish::Done(ActionRecord {
            id: 0,
            at_ms: now,
            host_id: Some("h1".into()),
            image_id: None,
            action: "command".into(),
            target: Some(by.into()),
            outcome: Outcome::Ok,
            detail: "ran".into(),
        })
    };
    assert!(b.finish(taken[0].id, "b", done("b")).await.unwrap());
    // A wakes up late: its outcome is refused, nothing is delivered twice.
    assert!(!a.finish(claimed[0].id, "a", done("a")).await.unwrap());
    assert!(a
        .claim("a", "command", now + 10_000, 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    let commands: Vec<_> = all_actions(&a)
        .await
        .into_iter()
        .filter(|x| x.action == "command")
        .collect();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].target.as_deref(), Some("b"));
}

async fn a_lease_is_taken_over_when_its_holder_stops(db: TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    let t = now_ms();
    assert!(a.lease("sweep", "a", t, 1_000).await.unwrap());
    assert!(!b.lease("sweep", "b", t + 10, 1_000).await.unwrap());
    // The holder renews it.
    assert!(a.lease("sweep", "a", t + 900, 1_000).await.unwrap());
    assert!(!b.lease("sweep", "b", t + 1_500, 1_000).await.unwrap());
    // The holder stops renewing: within one lease period the other takes over.
    assert!(b.lease("sweep", "b", t + 1_901, 1_000).await.unwrap());
    assert!(!a.lease("sweep", "a", t + 1_950, 1_000).await.unwrap());
    // Leases are per job.
    assert!(a.lease("alerts", "a", t + 1_950, 1_000).await.unwrap());
}

async fn a_host_cannot_store_more_findings_than_its_bound(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[ingest]\nmax_findings_per_host = 5\n[replacement]\nmode = \"dry_run\"\n");
    let names: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let events: Vec<(&str, IngestBody)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                IngestBody::Finding(Box::new(module(n, Severity::Low))),
            )
        })
        .collect();
    let outcome = store
        .ingest(batch("h1", events), policy.clone())
        .await
        .unwrap();
    assert_eq!(outcome.accepted, 8);
    assert_eq!(outcome.host.findings_dropped, 3);
    assert_eq!(outcome.host.findings_by_severity, [1, 0, 0, 5]);
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 6);
    assert_eq!(findings.items[0].key, TOO_MANY_FINDINGS_KEY);
    assert_eq!(findings.items[0].finding["dropped"], 3);
    // More of them only count.
    let more = store
        .ingest(batch("h1", vec![("x", critical("x"))]), policy.clone())
        .await
        .unwrap();
    assert_eq!(more.host.findings_dropped, 4);
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 6);
    assert_eq!(findings.items[0].finding["dropped"], 4);
    // At its bound, a batch still tells duplicates (resent, or twice in the batch) from
    // new events, refreshes the findings it has stored, and only counts the rest.
    let low = |n: &str| IngestBody::Finding(Box::new(module(n, Severity::Low)));
    let at_bound = || {
        vec![
            ("m0", low("m0")),
            ("n1", low("m1")),
            (
                "n2",
                IngestBody::Finding(Box::new(module("m2", Severity::High))),
            ),
            ("n3", low("z")),
            ("n3", low("z")),
            ("n4", low("z2")),
        ]
    };
    let flood = store
        .ingest(batch("h1", at_bound()), policy.clone())
        .await
        .unwrap();
    assert_eq!((flood.accepted, flood.duplicates), (4, 2));
    let news: Vec<_> = flood.new_findings.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(news.len(), 2, "{news:?}");
    assert!(news.iter().any(|k| k.contains("m2")), "{news:?}");
    assert!(news.contains(&TOO_MANY_FINDINGS_KEY), "{news:?}");
    assert_eq!(flood.host.findings_dropped, 6);
    assert_eq!(flood.host.findings_by_severity, [1, 1, 0, 4]);
    let again = store
        .ingest(batch("h1", at_bound()), policy.clone())
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 6));
    assert_eq!(
        again.host.findings_dropped, 6,
        "a resent batch counts nothing twice"
    );
    let findings = store.findings("h1", PageRequest::default()).await.unwrap();
    assert_eq!(findings.items.len(), 6);
    assert_eq!(findings.items[0].finding["dropped"], 6);
    // Other hosts are not affected.
    let other = store
        .ingest(batch("h2", vec![("y", critical("y"))]), policy_default())
        .await
        .unwrap();
    assert_eq!(other.host.findings_by_severity, [1, 0, 0, 0]);
}

/// Walks every page of a list; checks no row comes twice.
async fn walk<T: Clone + PartialEq + std::fmt::Debug, F, Fut>(limit: u32, fetch: F) -> Vec<T>
where
    F: Fn(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Page<T>>,
{
    let mut rows: Vec<T> = Vec::new();
    let mut after = None;
    loop {
        let page = fetch(PageRequest {
            after,
            limit: Some(limit),
        })
        .await;
        assert!(page.items.len() <= limit as usize);
        for row in &page.items {
            assert!(!rows.contains(row), "{row:?} twice");
        }
        rows.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(Cursor::decode(&cursor.encode()).unwrap()),
            None => return rows,
        }
    }
}

/// Findings of host `i` by severity (critical, high, medium, low): many hosts tie.
fn counts_of(i: usize) -> [usize; 4] {
    [
        if i.is_multiple_of(3) { i % 4 } else { 0 },
        i % 2,
        usize::from(i.is_multiple_of(5)),
        i % 3,
    ]
}

async fn hosts_filter_by_severity_and_page_in_every_order(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[replacement]\nmode = \"dry_run\"\n");
    for i in 0..30 {
        let names: Vec<(String, Severity)> = counts_of(i)
            .iter()
            .zip(Severity::ALL_DESCENDING)
            .flat_map(|(n, severity)| {
                (0..*n).map(move |k| (format!("{}{k}", severity.name()), severity))
            })
            .collect();
        let events = names
            .iter()
            .map(|(n, severity)| {
                (
                    n.as_str(),
                    IngestBody::Finding(Box::new(module(n, *severity))),
                )
            })
            .collect();
        let mut record = batch(&format!("h{i:02}"), events);
        record.received_ms = 1_000 + (i as i64) / 4;
        store.ingest(record, policy.clone()).await.unwrap();
    }
    let all = store.hosts(HostFilter::default()).await.unwrap().items;
    assert_eq!(all.len(), 30);
    for host in &all {
        let i: usize = host.host_id[1..].parse().unwrap();
        assert_eq!(host.findings_by_severity, counts_of(i).map(|n| n as u64));
    }
    let key = |sort: HostSort, h: &HostRecord| match sort {
        HostSort::LastSeen => (-h.last_seen_ms, h.host_id.clone()),
        HostSort::Id => (0, h.host_id.clone()),
        HostSort::Severity => (-severity_rank(&h.findings_by_severity), h.host_id.clone()),
    };
    for state in [None, Some(HostState::Drifted)] {
        for min_severity in [None].into_iter().chain(Severity::ALL_DESCENDING.map(Some)) {
            for sort in HostSort::ALL {
                let mut expected: Vec<HostRecord> = all
                    .iter()
                    .filter(|h| state.is_none_or(|s| h.state == s))
                    .filter(|h| {
                        min_severity.is_none_or(|min| {
                            h.findings_by_severity[..=severity_index(min)]
                                .iter()
                                .any(|n| *n > 0)
                        })
                    })
                    .cloned()
                    .collect();
                expected.sort_by_key(|h| key(sort, h));
                let found = walk(4, |page| {
                    let store = store.clone();
                    async move {
                        store
                            .hosts(HostFilter {
                                state,
                                min_severity,
                                sort,
                                page,
                                ..HostFilter::default()
                            })
                            .await
                            .unwrap()
                    }
                })
                .await;
                assert_eq!(
                    found.iter().map(|h| &h.host_id).collect::<Vec<_>>(),
                    expected.iter().map(|h| &h.host_id).collect::<Vec<_>>(),
                    "{state:?} {min_severity:?} {sort:?}"
                );
            }
        }
    }
    // The filters select: of the 10 hosts with i % 3 == 0, 7 have a critical finding
    // (0, 12 and 24 have none).
    let critical = store
        .hosts(HostFilter {
            min_severity: Some(Severity::Critical),
            ..HostFilter::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(critical.len(), 7);
    let worst = store
        .hosts(HostFilter {
            sort: HostSort::Severity,
            page: PageRequest {
                after: None,
                limit: Some(1),
            },
            ..HostFilter::default()
        })
        .await
        .unwrap()
        .items;
    // 3 critical and 1 high: hosts 3, 15 and 27; only 15 has a medium one too.
    assert_eq!(worst[0].host_id, "h15");
}

#[test]
fn the_severity_rank_orders_by_the_worst_counts_first() {
    assert!(severity_rank(&[1, 0, 0, 0]) > severity_rank(&[0, 40_000, 9, 9]));
    assert!(severity_rank(&[0, 2, 0, 0]) > severity_rank(&[0, 1, 30_000, 0]));
    assert!(severity_rank(&[0, 0, 0, 1]) > severity_rank(&[0; 4]));
    // Capped, not wrapped: more than the cap ranks as the cap.
    assert_eq!(
        severity_rank(&[40_000, 0, 0, 0]),
        severity_rank(&[32_767, 0, 0, 0])
    );
    assert!(severity_rank(&[u64::MAX; 4]) > 0);
    assert_eq!(severity_rank_at_least(Severity::Low), 1);
    assert!(
        severity_rank_at_least(Severity::Critical) > severity_rank(&[0, 32_767, 32_767, 32_767])
    );
}

async fn lists_page_with_cursors(db: TestDb) {
    let store = db.open().await;
    let policy = policy("[replacement]\nmode = \"dry_run\"\n");
    for i in 0..25 {
        let mut record = batch(&format!("h{i:02}"), vec![]);
        // Some hosts seen at the same millisecond: the id breaks the tie.
        record.received_ms = 1_000 + i / 3;
        store.ingest(record, policy.clone()).await.unwrap();
    }
    let hosts = walk(10, |page| {
        let store = store.clone();
        async move {
            store
                .hosts(HostFilter {
                    page,
                    ..HostFilter::default()
                })
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(hosts.len(), 25);
    assert!(hosts
        .windows(2)
        .all(|w| w[0].last_seen_ms > w[1].last_seen_ms
            || (w[0].last_seen_ms == w[1].last_seen_ms && w[0].host_id < w[1].host_id)));
    // Filtered by state and image (another query, another index): the same order.
    let clean = walk(4, |page| {
        let store = store.clone();
        async move {
            store
                .hosts(HostFilter {
                    state: Some(HostState::Clean),
                    image_id: Some("img".into()),
                    page,
                    ..HostFilter::default()
                })
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(clean, hosts);
    let names: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    let events: Vec<(&str, IngestBody)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let severity = [Severity::Low, Severity::High, Severity::Critical][i % 3];
            (
                n.as_str(),
                IngestBody::Finding(Box::new(module(n, severity))),
            )
        })
        .collect();
    store.ingest(batch("h00", events), policy).await.unwrap();
    let findings = walk(5, |page| {
        let store = store.clone();
        async move { store.findings("h00", page).await.unwrap() }
    })
    .await;
    assert_eq!(findings.len(), 12);
    assert!(findings.windows(2).all(|w| w[0].severity >= w[1].severity));
    for i in 0..7 {
        store
            .record_action(ActionRecord {
                id: 0,
                at_ms: 5,
                host_id: Some("h01".into()),
                image_id: None,
                action: "test".into(),
                target: None,
                outcome: Outcome::Ok,
                detail: format!("{i}"),
            })
            .await
            .unwrap();
    }
    let actions = walk(3, |page| {
        let store = store.clone();
        async move {
            store
                .actions(ActionFilter {
                    host_id: Some("h01".into()),
                    page,
                })
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(actions.len(), 7);
    assert!(actions.windows(2).all(|w| w[0].id > w[1].id));
    for i in 0..4 {
        store
            .register_image(ImageRecord {
                image_id: format!("i{i}"),
                baseline_digest: "blake3:00".into(),
                signer: None,
                entries: 1,
                created_at: "x".into(),
                registered_ms: 7,
            })
            .await
            .unwrap();
    }
    let images = walk(3, |page| {
        let store = store.clone();
        async move { store.images(page).await.unwrap() }
    })
    .await;
    assert_eq!(images.len(), 4);
    assert!(matches!(
        Cursor::decode("garbage!"),
        Err(StoreError::BadCursor)
    ));
}

async fn an_unknown_state_in_the_database_is_an_error(db: TestDb) {
    let store = db.open().await;
    store.ingest(batch("h1", vec![]), policy("")).await.unwrap();
    db.execute(
        "UPDATE hosts SET state = 'exploded';",
        "UPDATE hosts SET state = 'exploded';",
    )
    .await;
    let read = store.host("h1").await;
    assert!(matches!(read, Err(StoreError::Corrupt(_))), "{read:?}");
    assert!(store.counts().await.is_err());
}

async fn tokens_are_kept_by_hash_and_revoked(db: TestDb) {
    let store = db.open().await;
    let token = TokenRecord {
        name: "enroll-web".into(),
        role: "enroll".into(),
        created_ms: 1,
        expires_ms: Some(1_000),
        uses_left: Some(3),
        host_ids: Some("web-*".into()),
        images: Some("img-*".into()),
        revoked_ms: None,
        // Hosts without a daemon: kept as such.
        daemon: false,
    };
    let hash = trust::token_hash("secret-1");
    store
        .create_token(token.clone(), hash.clone())
        .await
        .unwrap();
    // A name, or a secret, is taken once.
    let again = TokenRecord {
        name: "other".into(),
        ..token.clone()
    };
    for (record, hash) in [
        (token.clone(), trust::token_hash("secret-2")),
        (again, hash.clone()),
    ] {
        assert!(matches!(
            store.create_token(record, hash).await,
            Err(StoreError::Conflict(_))
        ));
    }
    assert_eq!(store.token(&hash).await.unwrap(), Some(token.clone()));
    assert_eq!(
        store.token(&trust::token_hash("secret-2")).await.unwrap(),
        None
    );
    assert_eq!(store.tokens().await.unwrap(), std::slice::from_ref(&token));
    // Revoked once: a second revocation keeps the first time.
    assert!(store.revoke_token("enroll-web", 5).await.unwrap());
    assert!(store.revoke_token("enroll-web", 9).await.unwrap());
    assert!(!store.revoke_token("nobody", 9).await.unwrap());
    let revoked = store.token(&hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_ms, Some(5));
    assert_eq!(revoked.unusable(2), Some("revoked"));
    // Another handle (replica, restart) sees the same.
    let reopened = db.open().await;
    assert_eq!(reopened.tokens().await.unwrap(), [revoked]);
}

/// `/usr/local/bin/x` added (critical) inside container `id` of `image`, or on the
/// host itself without a container.
fn dropped(container: Option<(&str, &str)>) -> IngestBody {
    IngestBody::Finding(Box::new(Finding::File(Box::new(FileFinding {
        change: FileChange::Added,
        path: "/usr/local/bin/x".into(),
        path_bytes_b64: None,
        attributes: Vec::new(),
        severity: Severity::Critical,
        rule: "containers".into(),
        baseline: None,
        observed: None,
        package: None,
        container: container.map(|(id, image)| ContainerRef {
            id: id.into(),
            name: Some(format!("web-{id}")),
            runtime: "containerd".into(),
            image: Some(image.into()),
            image_digest: Some("sha256:ab12".into()),
            pod: Some(format!("api-{id}")),
            namespace: Some("shop".into()),
        }),
    }))))
}

/// The alerts queued for the webhook, claimed.
async fn queued_alerts(store: &DynStore, now: i64) -> Vec<super::outbox::Alert> {
    store
        .claim("t", "webhook", now, 60_000, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| match c.item {
            OutboxItem::Webhook { alert, .. } => Some(alert),
            OutboxItem::Command(_) => None,
        })
        .collect()
}

/// The same file dropped into containers of one image on hosts of two node images is
/// one alert counting containers (and their hosts); the host's own copy of the change
/// and another image's containers are alerts of their own; a container alerted once is
/// not alerted again, a new one makes a follow-up.
async fn a_change_inside_containers_groups_by_their_image_across_hosts(db: TestDb) {
    use super::outbox::AlertContainer;
    let store = db.open().await;
    let policy = policy(
        "[alerts]\ngroup_wait_secs = 0\n[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\n\
         events = [\"drift\"]\n",
    );
    let api = "shop/api:1.4";
    for (image, host, events) in [
        (
            "node-a",
            "h1",
            vec![
                ("e1", dropped(Some(("c1", api)))),
                ("e2", dropped(Some(("c2", api)))),
            ],
        ),
        (
            "node-b",
            "h2",
            vec![
                ("e1", dropped(Some(("c3", api)))),
                ("e2", dropped(None)),
                ("e3", dropped(Some(("c4", "shop/cart:2")))),
            ],
        ),
    ] {
        store
            .ingest(batch_on(image, host, events), policy.clone())
            .await
            .unwrap();
    }
    store
        .flush_alerts(now_ms() + 1, policy.clone())
        .await
        .unwrap();
    let mut alerts = queued_alerts(&store, now_ms() + 1).await;
    alerts.sort_by(|a, b| a.container_image.cmp(&b.container_image));
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    let (own, of_api, of_cart) = (&alerts[0], &alerts[1], &alerts[2]);
    assert_eq!(own.container_image, None);
    assert_eq!(own.image_id.as_deref(), Some("node-b"));
    assert_eq!(own.hosts, ["h2"]);
    assert_eq!(own.image_hosts, Some(1));
    assert_eq!(
        of_api.container_image.as_deref(),
        Some("shop/api:1.4@sha256:ab12")
    );
    assert_eq!(of_api.image_id, None, "the hosts' images differ");
    assert_eq!(of_api.image_hosts, None);
    assert_eq!(of_api.title, "added file /usr/local/bin/x");
    let member = |host: &str, id: &str| AlertContainer {
        host_id: host.into(),
        id: id.into(),
    };
    assert_eq!(
        of_api.containers,
        [member("h1", "c1"), member("h1", "c2"), member("h2", "c3")]
    );
    assert_eq!(of_api.hosts, ["h1", "h2"]);
    assert_eq!((of_api.earlier, of_api.all_hosts), (0, 2));
    assert_eq!(
        of_api.summary(),
        "added file /usr/local/bin/x in 3 containers of image shop/api:1.4@sha256:ab12 on 2 hosts"
    );
    assert_eq!(of_cart.containers, [member("h2", "c4")]);
    assert_eq!(
        of_cart.summary(),
        "added file /usr/local/bin/x in 1 container of image shop/cart:2@sha256:ab12 on 1 host: \
         first seen in container web-c4 (c4) on h2 (h2)"
    );

    // Reported again: not news. A new container of the image on a third host: a
    // follow-up, counting what came before.
    store
        .ingest(
            batch_on("node-a", "h1", vec![("e9", dropped(Some(("c1", api))))]),
            policy.clone(),
        )
        .await
        .unwrap();
    store
        .ingest(
            batch_on("node-a", "h3", vec![("e1", dropped(Some(("c5", api))))]),
            policy.clone(),
        )
        .await
        .unwrap();
    store
        .flush_alerts(now_ms() + 1, policy.clone())
        .await
        .unwrap();
    let alerts = queued_alerts(&store, now_ms() + 1).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].containers, [member("h3", "c5")]);
    assert_eq!((alerts[0].earlier, alerts[0].all_hosts), (3, 3));
    assert_eq!(
        alerts[0].summary(),
        "added file /usr/local/bin/x in 1 more container of image shop/api:1.4@sha256:ab12, \
         4 containers on 3 hosts in all: first seen in container web-c5 (c5) on h3 (h3)"
    );
}

/// A critical change inside a container leaves its node `drifted` under the default
/// rule (the container is what gets replaced); a rule with `scope = "containers"`
/// marks the node, naming the container in the reason.
async fn container_drift_marks_a_node_only_when_a_rule_says_so(db: TestDb) {
    let store = db.open().await;
    let inside = || vec![("e1", dropped(Some(("c1", "shop/api:1.4"))))];
    let by_default = store
        .ingest(batch("h1", inside()), policy(""))
        .await
        .unwrap();
    assert_eq!(by_default.host.state, HostState::Drifted);
    assert_eq!(by_default.host.findings_by_severity, [1, 0, 0, 0]);
    assert_eq!(by_default.host.hold, None);
    // The host's own critical change still marks it.
    let own = store
        .ingest(batch("h2", vec![("e1", dropped(None))]), policy(""))
        .await
        .unwrap();
    assert_eq!(own.host.state, HostState::Marked);

    let containers_too = policy(
        "[replacement]\nmax_percent = 100.0\n[[replacement.rule]]\nscope = \"containers\"\n",
    );
    let marked = store
        .ingest(batch("h3", inside()), containers_too.clone())
        .await
        .unwrap();
    assert_eq!(marked.host.state, HostState::Marked);
    assert_eq!(
        marked.host.mark_reason.as_deref(),
        Some(
            "critical finding: added file /usr/local/bin/x in container web-c1 (c1) \
             of image shop/api:1.4@sha256:ab12"
        )
    );
    // That rule weighs containers only: the host's own change does not mark.
    let host_own = store
        .ingest(batch("h4", vec![("e1", dropped(None))]), containers_too)
        .await
        .unwrap();
    assert_eq!(host_own.host.state, HostState::Drifted);
}

/// Alert memory as a collector before containers were counted left it (SQLite schema
/// 4, PostgreSQL 2): h1 alerted for change `g`, h2 waiting in its group.
pub(crate) const ALERT_MEMORY: &str = "
INSERT INTO alert_hosts VALUES ('drift', 'img', 'g', 'h1', FALSE, 1), ('drift', 'img', 'g', 'h2', TRUE, 1);
INSERT INTO alert_groups VALUES ('drift', 'img', 'g', 'modified file /x', 3, 'first seen on h2', 1, 1);
";

/// After migrating [`ALERT_MEMORY`]: h1 is still not alerted again, and the waiting
/// group goes out with h2 as a follow-up.
pub(crate) async fn migrated_alert_memory_holds(store: DynStore) {
    use super::outbox::{AlertKind, Occurrence};
    let policy = policy("[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"drift\"]\n");
    let again = |host: &str| Occurrence {
        kind: AlertKind::Drift,
        image_id: Some("img".into()),
        container: None,
        group: "g".into(),
        title: "modified file /x".into(),
        severity: Severity::Critical,
        host_id: host.into(),
        detail: String::new(),
    };
    store
        .raise(vec![again("h1"), again("h2")], policy.clone())
        .await
        .unwrap();
    let later = now_ms() + 60_000;
    store.flush_alerts(later, policy).await.unwrap();
    let alerts = queued_alerts(&store, later).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0].hosts, ["h2"]);
    assert_eq!(alerts[0].earlier, 1);
    assert_eq!(alerts[0].container_image, None);
    assert!(alerts[0].containers.is_empty());
}

async fn the_dashboard_counts_come_grouped_from_the_store(db: TestDb) {
    let store = db.open().await;
    // A budget of one host: the first drifted host of an image is marked, the others
    // are held for the budget.
    let policy = policy("[replacement]\nmax_hosts = 1\nmax_percent = 100.0\n");
    for (image, host) in [
        ("a", "a1"),
        ("a", "a2"),
        ("a", "a3"),
        ("a", "a4"),
        ("b", "b1"),
    ] {
        store
            .ingest(
                batch_on(image, host, vec![("e1", critical("rootkit"))]),
                policy.clone(),
            )
            .await
            .unwrap();
    }
    store
        .ingest(batch_on("b", "b2", vec![]), policy.clone())
        .await
        .unwrap();
    let mut none = batch("n1", vec![]);
    none.image_id = None;
    store.ingest(none, policy.clone()).await.unwrap();
    store
        .transition("b2", Transition::Retire, now_ms())
        .await
        .unwrap();
    // clean, drifted, marked, silent, gone
    let by_image = store.hosts_by_image_state().await.unwrap();
    let states = |image: Option<&str>| {
        by_image
            .iter()
            .find(|i| i.image_id.as_deref() == image)
            .map(|i| (i.by_state, i.live()))
    };
    assert_eq!(by_image.len(), 3, "{by_image:?}");
    assert_eq!(by_image[0].image_id, None, "{by_image:?}");
    assert_eq!(states(None), Some(([1, 0, 0, 0, 0], 1)));
    assert_eq!(states(Some("a")), Some(([0, 3, 1, 0, 0], 4)));
    assert_eq!(states(Some("b")), Some(([0, 0, 1, 0, 1], 1)));
    let marked = store.marked_by_image(0).await.unwrap();
    assert_eq!(
        marked,
        [(Some("a".to_string()), 1), (Some("b".to_string()), 1)]
    );
    assert!(store
        .marked_by_image(now_ms() + 1)
        .await
        .unwrap()
        .is_empty());
    let held = store.held(Hold::Budget, 2).await.unwrap();
    assert_eq!(held.count, 3);
    assert_eq!(held.first.len(), 2);
    let all = store.held(Hold::Budget, 10).await.unwrap().first;
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert!(all.iter().all(|h| h.starts_with('a')), "{all:?}");
    assert_eq!(all[..2], held.first[..]);
    assert_eq!(
        store.held(Hold::Approval, 10).await.unwrap(),
        HeldHosts::default()
    );
    // Every host's findings in one query, the most severe first, bounded per host.
    store
        .ingest(
            batch_on(
                "b",
                "b1",
                vec![
                    (
                        "e2",
                        IngestBody::Finding(Box::new(module("m-low", Severity::Low))),
                    ),
                    (
                        "e3",
                        IngestBody::Finding(Box::new(module("m-high", Severity::High))),
                    ),
                ],
            ),
            policy.clone(),
        )
        .await
        .unwrap();
    let found = store
        .findings_of(vec!["b1".into(), "a2".into(), "nobody".into()], 2)
        .await
        .unwrap();
    let keys: Vec<(&str, Severity)> = found
        .iter()
        .map(|f| (f.host_id.as_str(), f.severity))
        .collect();
    assert_eq!(
        keys,
        [
            ("a2", Severity::Critical),
            ("b1", Severity::Critical),
            ("b1", Severity::High)
        ]
    );
    assert!(store.findings_of(Vec::new(), 5).await.unwrap().is_empty());
    // The metrics' counts agree, findings summed in one pass.
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.hosts_by_state, [1, 3, 2, 0, 1]);
    assert_eq!(counts.findings_by_severity, [5, 1, 0, 1]);
}

fn session_of(id: &str, name: &str, expires_ms: i64) -> SessionRecord {
    SessionRecord {
        id_hash: id.into(),
        name: name.into(),
        role: "viewer".into(),
        token_hash: trust::token_hash(&format!("{name}-secret")),
        csrf: format!("csrf-{id}"),
        expires_ms,
    }
}

async fn sessions_are_shared_bounded_and_end_with_their_token(db: TestDb) {
    let store = db.open().await;
    let later = now_ms() + 3_600_000;
    store
        .open_session(session_of("s1", "vera", later), 3)
        .await
        .unwrap();
    // Another handle (another replica) serves it.
    let other = db.open().await;
    assert_eq!(
        other.session("s1", now_ms()).await.unwrap(),
        Some(session_of("s1", "vera", later))
    );
    assert_eq!(other.session("s1", later).await.unwrap(), None, "expired");
    assert_eq!(other.session("nope", now_ms()).await.unwrap(), None);
    // Bounded: the one closest to its end goes first.
    for (i, id) in ["s2", "s3", "s4"].iter().enumerate() {
        store
            .open_session(session_of(id, "operator", later + 1 + i as i64), 3)
            .await
            .unwrap();
    }
    assert_eq!(store.session("s1", now_ms()).await.unwrap(), None);
    for id in ["s2", "s3", "s4"] {
        assert!(store.session(id, now_ms()).await.unwrap().is_some(), "{id}");
    }
    // Signing out ends one.
    other.close_session("s2").await.unwrap();
    assert_eq!(store.session("s2", now_ms()).await.unwrap(), None);
    // Revoking the stored token a session was opened with ends it too.
    let token = TokenRecord {
        name: "vera".into(),
        role: "viewer".into(),
        created_ms: 1,
        expires_ms: None,
        uses_left: None,
        host_ids: None,
        images: None,
        revoked_ms: None,
        daemon: true,
    };
    store
        .create_token(token, trust::token_hash("vera-secret"))
        .await
        .unwrap();
    store
        .open_session(session_of("s5", "vera", later), 3)
        .await
        .unwrap();
    assert!(store.session("s5", now_ms()).await.unwrap().is_some());
    assert!(store.revoke_token("vera", now_ms()).await.unwrap());
    assert_eq!(other.session("s5", now_ms()).await.unwrap(), None);
    assert!(store.session("s4", now_ms()).await.unwrap().is_some());
}

async fn a_kept_baseline_is_replaced_and_forgotten(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.kept_baseline("img").await.unwrap(), None);
    store
        .keep_baseline("img", Some(vec![0, 1, 2, 255]))
        .await
        .unwrap();
    store.keep_baseline("img", Some(vec![9, 8])).await.unwrap();
    let other = db.open().await;
    assert_eq!(other.kept_baseline("img").await.unwrap(), Some(vec![9, 8]));
    other.keep_baseline("img", None).await.unwrap();
    assert_eq!(store.kept_baseline("img").await.unwrap(), None);
}
