//! `driftwatch run`: the agent daemon, a systemd service shipped in the image.
//!
//! It runs the same pipeline as `driftwatch check`, on a schedule and on demand:
//!
//! 1. **Start**: verify the baseline (a baseline that fails verification is never used:
//!    the host is marked for replacement at once), tell systemd it is ready, then run a
//!    full check.
//! 2. **Real time**: [`crate::watch`] watches the policy's critical paths; an event
//!    re-checks only the paths it names (one baseline lookup each). The package
//!    databases are polled (a few `stat`s every two seconds): a package manager run
//!    re-compares the package set once it has settled.
//! 3. **Scheduled**: fast verification every `fast_verify_interval_secs` re-hashes only
//!    files whose identity (size, mtime, ctime, inode, device) moved since they were
//!    hashed ([`cache`]); full verification every `full_verify_interval_secs` re-hashes
//!    everything. Both are jittered, paced to `read_bytes_per_sec`, on a share of the
//!    cores, at the priority the unit gives them.
//! 4. **Reporting**: with a `[collector]` section, every new finding is written to the
//!    spool ([`crate::sink::spool`], durable) before anything else happens to it, and
//!    the reporter task ([`crate::sink::collector`]) delivers the spool and heartbeats
//!    while the daemon runs. SIGTERM gives it about two seconds to send what it can;
//!    the rest waits in the spool for the next start.
//! 5. **Replacement signal**: findings are remembered in [`state`]; the host is marked
//!    when one reaches `mark_severity` (local marking, the default without a
//!    collector), when the collector's fleet policy says so (its verdict comes back
//!    with every acknowledgement), or when the baseline fails verification. Marked,
//!    `/healthz` answers 503, a marker file appears under `run_dir`, and the
//!    configured command runs. Only replacing the host clears a local mark; the
//!    collector may lift its own (an operator unmarked the host there).
//!
//! Everything an operator can see is on the loopback endpoint ([`health`]) and in the
//! journal. Scans run on blocking threads; the async side only waits for timers,
//! signals, events and HTTP requests.

pub mod cache;
pub mod health;
pub mod provision;
pub mod state;

use crate::config::{self, AgentConfig};
use crate::error::Error;
use crate::pipeline::{self, CheckPlan};
use crate::policy::Policy;
use crate::sink::collector::{
    no_image, CollectorStatus, HostSummary, Reporter, ReporterHandle, StatusBoard,
};
use crate::sink::progress::Progress;
use crate::sink::spool::{Appended, Spool, SPOOL_DIR};
use crate::source::containers::action::Actions;
use crate::source::containers::watch::{ContainerEvent, ContainerWatcher};
use crate::source::files::{ContentHashes, FileIdentity, KnownHashes, ScanOptions};
use crate::source::{containers, packages};
use crate::watch::{self, WatchEvent};
use cache::{CacheWriter, HashCache};
use driftwatch_protocol::baseline::{digest_string, BaselineReader};
use driftwatch_protocol::report::{BaselineFinding, Finding, ScanError, Severity};
use driftwatch_protocol::time::now_rfc3339;
use driftwatch_protocol::wire::{EventBody, HostDirective, ImageClaim};
use serde::Serialize;
use state::{Directed, Mark, State};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch as latest, Notify};
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, error, info, warn};

/// Name of the marker file written under `run_dir` when the host is marked.
pub const MARKER_FILE: &str = "replace-me";
/// Watch events queued before the watcher waits: a burst (a package unpacking) is
/// absorbed, and a full queue slows the watcher rather than growing memory.
const WATCH_QUEUE: usize = 4096;
/// How long SIGTERM waits for the reporter to send what is still unsent: short enough
/// for systemd's stop timeout, and the spool keeps the rest.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// What `/status` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// `starting`, `clean`, `drifted` or `marked`.
    pub state: &'static str,
    /// The baseline in use (`blake3:…`), once verified.
    pub baseline_digest: Option<String>,
    /// The image id recorded in the baseline.
    pub image_id: Option<String>,
    /// Why the host is marked for replacement.
    pub mark: Option<Mark>,
    /// Every finding remembered, in key order.
    pub findings: Vec<state::Remembered>,
    /// What the last check could not examine.
    pub errors: Vec<ScanError>,
    /// Ways in which real-time watching is degraded (scheduled verification covers
    /// them).
    pub degradations: Vec<String>,
    /// What is wrong with the daemon's own state directory: a state file found corrupt
    /// at start or a hash cache found damaged (both stay listed until restart), the last
    /// save failing (read-only, full: gone once a save succeeds again). Watching goes
    /// on.
    pub state_problems: Vec<String>,
    /// Hash caches found damaged and discarded since start.
    pub hash_caches_discarded: u64,
    /// When the last full check finished (RFC 3339).
    pub last_full_check: Option<String>,
    /// How long it took.
    pub last_full_check_ms: Option<u64>,
    /// Full checks finished since start (boot, reload, rescan and scheduled).
    pub full_checks: u64,
    /// When the last fast verification finished (RFC 3339).
    pub last_fast_check: Option<String>,
    /// How long it took.
    pub last_fast_check_ms: Option<u64>,
    /// Fast verifications finished since start.
    pub fast_checks: u64,
    /// Bytes read for hashing by the last check (fast or full).
    pub last_check_bytes_hashed: u64,
    /// Paths re-checked after watch events since start.
    pub watch_rechecks: u64,
    /// Full checks run because watch events were lost (queue overflow).
    pub rescans: u64,
    /// Containers watched in real time.
    pub containers: Vec<driftwatch_protocol::report::ContainerRef>,
    /// Reporting to the collector, when configured.
    pub collector: Option<CollectorStatus>,
    /// The first-boot provisioning window and its delta ([`provision`]).
    pub provisioning: Option<provision::Provisioning>,
}

/// How a failed state save starts in [`Status::state_problems`].
const SAVE_FAILED: &str = "cannot save state in";
/// How a damaged hash cache starts in [`Status::state_problems`].
const CACHE_DAMAGED: &str = "hash cache";
/// How a failing spool starts in [`Status::state_problems`].
const SPOOL_FAILED: &str = "cannot spool findings:";
/// How often failed writes of the daemon's own state (a full or read-only state
/// directory) are tried again.
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// State shared between the daemon loop and the HTTP endpoint.
#[derive(Default)]
pub struct Shared {
    status: Mutex<Status>,
}

impl Shared {
    /// The status, locked (a poisoned lock still holds a usable status: it is only
    /// ever replaced field by field).
    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StatusBoard for Shared {
    fn update_collector(&self, change: &mut dyn FnMut(&mut Option<CollectorStatus>)) {
        change(&mut self.status().collector);
    }
}

/// How much a check re-reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    /// Everything, unpaced, on all cores: at start, after a reload or lost events.
    Immediate,
    /// Everything, paced: the scheduled full re-hash.
    Full,
    /// Only files whose identity moved since they were hashed, paced.
    Fast,
}

/// The verified baseline and the policy in force.
struct Context {
    baseline_path: PathBuf,
    reader: BaselineReader<File>,
    policy: Policy,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config_path: Option<&Path>) -> Result<(), Error> {
    let explicit = config_path.is_some();
    let path = config_path.unwrap_or(Path::new(config::DEFAULT_CONFIG_PATH));
    let config = AgentConfig::load(path, explicit).map_err(Error::Config)?;
    crate::logging::init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Start)?;
    runtime.block_on(Daemon::new(config, path.to_path_buf()).serve())
}

struct Daemon {
    config: AgentConfig,
    config_path: PathBuf,
    shared: Arc<Shared>,
    cancel: Arc<AtomicBool>,
    state: State,
    /// The image and baseline the host runs on, for the collector.
    image: ImageClaim,
    /// Events for the collector (with a `[collector]` section).
    spool: Option<Arc<Mutex<Spool>>>,
    /// The last state save failed: it is retried.
    save_failed: bool,
    /// Tells the reporter there is something to send.
    wake: Arc<Notify>,
    /// What heartbeats say about the host.
    summary: latest::Sender<HostSummary>,
    /// The collector's verdicts, from the reporter (only the latest matters).
    directives_tx: latest::Sender<Option<HostDirective>>,
    directives: latest::Receiver<Option<HostDirective>>,
    reporter: Option<ReporterHandle>,
    /// Container actions already run.
    container_actions: Actions,
    /// Watch events, also taken while a check runs.
    events_tx: mpsc::Sender<WatchEvent>,
    events: mpsc::Receiver<WatchEvent>,
    /// Watch events were lost: a paced full check is due.
    rescan_pending: Option<String>,
    /// systemd's watchdog, fed at half its interval whatever the daemon is waiting for.
    watchdog: Option<tokio::time::Interval>,
    /// The first-boot provisioning window, once the baseline is verified.
    provisioning: Option<provision::Provisioning>,
    /// Its declared paths.
    declared: Option<config::provisioning::Declared>,
}

impl Daemon {
    fn new(config: AgentConfig, config_path: PathBuf) -> Self {
        let (directives_tx, directives) = latest::channel(None);
        let (events_tx, events) = mpsc::channel(WATCH_QUEUE);
        let (summary, _) = latest::channel(HostSummary {
            image: no_image(),
            findings: 0,
            last_full_verification: None,
        });
        Daemon {
            config,
            config_path,
            shared: Arc::new(Shared::default()),
            cancel: Arc::new(AtomicBool::new(false)),
            state: State::default(),
            image: no_image(),
            spool: None,
            save_failed: false,
            wake: Arc::new(Notify::new()),
            summary,
            directives_tx,
            directives,
            reporter: None,
            container_actions: Actions::default(),
            events_tx,
            events,
            rescan_pending: None,
            watchdog: None,
            provisioning: None,
            declared: None,
        }
    }

    fn load_context(config: &AgentConfig) -> Result<Context, Error> {
        let (reader, policy) = pipeline::open_baseline_and_policy(
            &config.baseline,
            config.pubkey.as_deref(),
            config.policy.as_deref(),
        )?;
        Ok(Context {
            baseline_path: config.baseline.clone(),
            reader,
            policy,
        })
    }

    async fn serve(mut self) -> Result<(), Error> {
        let listener = tokio::net::TcpListener::bind(self.config.health.listen)
            .await
            .map_err(|source| Error::Listen {
                address: self.config.health.listen,
                source,
            })?;
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, health::app(shared)).await {
                error!(error = %err, "Health endpoint stopped.");
            }
        });
        self.shared.status().state = "starting";

        let mut context = match Daemon::load_context(&self.config) {
            Ok(context) => Some(Arc::new(context)),
            Err(Error::VerifyBaseline { path, source }) if source.is_integrity_failure() => {
                // A baseline that does not verify cannot be trusted to judge the host;
                // the host itself is what is in doubt. Mark it and keep serving.
                error!(baseline = %path.display(), error = %source, "Baseline failed verification.");
                self.state = State::load(&self.config.state_dir, "untrusted").unwrap_or_default();
                self.open_spool_or_retry();
                let finding = Finding::Baseline(BaselineFinding {
                    path: path.display().to_string(),
                    error: source.to_string(),
                    severity: Severity::Critical,
                });
                // Marked whatever `mark_severity` says, with the reason itself: the
                // trust anchor failed. The finding is recorded beside the mark.
                let mark = self.state.mark(
                    format!("baseline {} failed verification: {source}", path.display()),
                    &now_rfc3339(),
                );
                self.apply(std::slice::from_ref(&finding)).await;
                self.apply_mark(mark).await;
                None
            }
            Err(err) => return Err(err),
        };
        if let Some(context) = &context {
            let digest = digest_string(context.reader.digest());
            let (state, problem) =
                State::load_or_recover(&self.config.state_dir, &digest).map_err(Error::State)?;
            self.state = state;
            if let Some(problem) = problem {
                error!(problem = %problem, "The state file was corrupt.");
                self.shared.status().state_problems.push(problem);
            }
            self.image = ImageClaim {
                image_id: context.reader.meta().image_id.clone(),
                baseline_digest: Some(digest.clone()),
            };
            self.open_spool_or_retry();
            self.start_provisioning(&digest);
            let mut status = self.shared.status();
            status.baseline_digest = Some(digest);
            status.image_id = context.reader.meta().image_id.clone();
            drop(status);
            info!(baseline = %self.config.baseline.display(), "Baseline verified.");
        }
        self.publish();
        self.start_reporter();
        notify_systemd(&[sd_notify::NotifyState::Ready]);

        // Fed from here on, during checks too: a paced full re-hash of a large image
        // takes longer than any WatchdogSec.
        self.watchdog = sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2));
        let mut watcher = context
            .as_ref()
            .filter(|_| self.config.watch.enabled)
            .map(|c| watch::start(&self.config.root, &c.policy, self.events_tx.clone()));
        let (containers_tx, mut container_events) = mpsc::channel::<ContainerEvent>(WATCH_QUEUE);
        let mut container_watcher = context
            .as_ref()
            .and_then(|c| self.watch_containers(c, containers_tx.clone()));
        // Stop requests are taken by a task of their own: a check in progress (a paced
        // full re-hash takes minutes) is cancelled between files at once, and the loop
        // sees the request as soon as the check returns.
        let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Start)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Start)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(Error::Start)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        {
            let (stop, cancel) = (Arc::clone(&stop), Arc::clone(&self.cancel));
            tokio::spawn(async move {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = sigint.recv() => {}
                }
                cancel.store(true, Ordering::Relaxed);
                stop.notify_one();
            });
        }
        if let Some(context) = &context {
            self.full_check(Arc::clone(context), "boot").await;
        }

        let schedule = &self.config.schedule;
        let full_interval = Duration::from_secs(schedule.full_verify_interval_secs);
        let fast_interval = Duration::from_secs(schedule.fast_verify_interval_secs);
        let mut next_full = Instant::now() + jittered(full_interval, schedule.jitter);
        let mut next_fast = Instant::now() + jittered(fast_interval, schedule.jitter);
        let mut package_poll = tokio::time::interval(PACKAGE_POLL);
        let mut packages = PackageWatch::new(&self.config.root);
        let mut provision_poll = tokio::time::interval(provision::POLL);
        let mut write_retry = tokio::time::interval(WRITE_RETRY);
        loop {
            if let (Some(reason), Some(context)) = (self.rescan_pending.take(), &context) {
                // Paced and at background priority like any scheduled check: an event
                // storm must not turn into an unthrottled re-hash of the whole host.
                info!(reason = %reason, "Running a full check for lost watch events.");
                self.check(Arc::clone(context), "rescan", Depth::Full).await;
                continue;
            }
            tokio::select! {
                _ = stop.notified() => break,
                _ = sighup.recv() => {
                    info!(config = %self.config_path.display(), "Reloading configuration and policy.");
                    match AgentConfig::load(&self.config_path, true).map_err(Error::Config).and_then(|c| {
                        let context = Daemon::load_context(&c)?;
                        Ok((c, context))
                    }) {
                        Ok((config, reloaded)) => {
                            self.config = config;
                            // Also picks up a rotated client certificate.
                            self.restart_reporter().await;
                            let reloaded = Arc::new(reloaded);
                            watcher = self
                                .config
                                .watch
                                .enabled
                                .then(|| watch::start(&self.config.root, &reloaded.policy, self.events_tx.clone()));
                            drop(container_watcher.take());
                            container_watcher = self.watch_containers(&reloaded, containers_tx.clone());
                            context = Some(Arc::clone(&reloaded));
                            self.full_check(reloaded, "reload").await;
                        }
                        // Keep running on the old configuration: a typo must not blind a host.
                        Err(err) => error!(error = %err, "Reload failed; keeping the running configuration."),
                    }
                }
                _ = tokio::time::sleep_until(next_full.into()) => {
                    if let Some(context) = &context {
                        self.check(Arc::clone(context), "scheduled", Depth::Full).await;
                    }
                    next_full = Instant::now() + jittered(full_interval, self.config.schedule.jitter);
                    // A full verification is also the freshest fast one.
                    next_fast = Instant::now() + jittered(fast_interval, self.config.schedule.jitter);
                }
                _ = tokio::time::sleep_until(next_fast.into()) => {
                    if let Some(context) = &context {
                        self.check(Arc::clone(context), "scheduled", Depth::Fast).await;
                    }
                    next_fast = Instant::now() + jittered(fast_interval, self.config.schedule.jitter);
                }
                Some(event) = self.events.recv() => {
                    if let Some(context) = &context {
                        self.watch_event(Arc::clone(context), event).await;
                    }
                }
                Some(event) = container_events.recv() => self.container_event(event).await,
                Ok(()) = self.directives.changed() => self.apply_directive().await,
                _ = package_poll.tick(), if self.config.watch.enabled => {
                    if let Some(context) = &context {
                        if packages.settled(&self.config.root) {
                            self.package_event(Arc::clone(context)).await;
                        }
                    }
                }
                _ = provision_poll.tick(), if self.provisioning_open() => {
                    if let Some(context) = &context {
                        self.poll_provisioning(Arc::clone(context)).await;
                    }
                }
                _ = write_retry.tick(), if self.writes_behind() => self.retry_writes(),
                () = tick(&mut self.watchdog) => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            }
        }
        info!("Stopping.");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        self.cancel.store(true, Ordering::Relaxed);
        drop(watcher);
        drop(container_watcher);
        if let Some(reporter) = self.reporter.take() {
            reporter.shutdown(FLUSH_GRACE).await;
        }
        self.save_state();
        Ok(())
    }

    /// Runs the whole pipeline on a blocking thread and applies what it found; then
    /// refreshes the hash cache with what it hashed.
    async fn full_check(&mut self, context: Arc<Context>, why: &'static str) {
        self.check(context, why, Depth::Immediate).await;
    }

    async fn check(&mut self, context: Arc<Context>, why: &'static str, depth: Depth) {
        let root = self.config.root.clone();
        let state_dir = self.config.state_dir.clone();
        let scan = ScanOptions {
            threads: match depth {
                Depth::Immediate => 0,
                Depth::Full | Depth::Fast => self.config.throttle.threads(),
            },
            read_bytes_per_sec: match depth {
                Depth::Immediate => 0,
                Depth::Full | Depth::Fast => self.config.throttle.read_bytes_per_sec,
            },
            known: None,
            // The boot check meets a cold page cache: outstanding reads decide it.
            readers: (depth == Depth::Immediate).then_some(crate::source::files::DEFAULT_READERS),
            ..ScanOptions::default()
        };
        let cancel = Arc::clone(&self.cancel);
        let started = Instant::now();
        let live = Arc::clone(&context);
        let task = tokio::task::spawn_blocking(move || {
            // Scheduled checks yield to the host's own work, also outside systemd; the
            // scan's threads inherit this thread's priorities.
            let _priority = (depth != Depth::Immediate).then(BackgroundPriority::enter);
            // Only fast verification trusts the cache; every check says when it is
            // found damaged (and rewrites it).
            let (known, cache_problem) = if depth == Depth::Fast {
                let (cache, problem) = HashCache::load(&state_dir);
                debug!(files = cache.len(), "Hash cache loaded.");
                (Some(Arc::new(cache) as Arc<dyn KnownHashes>), problem)
            } else {
                (None, HashCache::inspect(&state_dir))
            };
            let plan = CheckPlan {
                root: &root,
                baseline: &context.reader,
                baseline_path: &context.baseline_path,
                policy: &context.policy,
                scan: ScanOptions { known, ..scan },
                runtime: true,
                cancel: &cancel,
            };
            // The cache is rewritten as the scan goes; a failure to write it costs only
            // fast verification, which then re-reads more.
            let mut cache = CacheWriter::create(&state_dir)
                .map_err(|err| warn!(error = %err, "Cannot write the hash cache."))
                .ok();
            let mut record = |path: &[u8], identity: &FileIdentity, hashes: &ContentHashes| {
                if let Some(writer) = cache.as_mut() {
                    if let Err(err) = writer.push(path, identity, hashes) {
                        warn!(error = %err, "Cannot write the hash cache.");
                        cache = None;
                    }
                }
            };
            let outcome = pipeline::check(&plan, &Progress::hidden(), &mut record);
            // A cancelled scan saw only part of the tree: keep the old cache.
            let complete = outcome.is_ok() && !cancel.load(Ordering::Relaxed);
            if let Some(Err(err)) = cache.filter(|_| complete).map(CacheWriter::finish) {
                warn!(error = %err, "Cannot write the hash cache.");
            }
            (cache_problem, outcome)
        });
        let result = self.wait_serving(task, Some(&live)).await;
        let result = result.map(|(cache_problem, outcome)| {
            if let Some(problem) = cache_problem {
                self.cache_problem(&problem);
            }
            outcome
        });
        if self.cancel.load(Ordering::Relaxed) {
            // A walk cut short looks like deleted files: never apply it.
            info!(why, "Check cancelled.");
            return;
        }
        match result {
            Ok(Ok(outcome)) => {
                let report = outcome.report;
                info!(
                    why,
                    depth = ?depth,
                    entries = report.scan.entries,
                    bytes_hashed = report.scan.bytes_hashed,
                    findings = report.findings.len(),
                    errors = report.errors.len(),
                    duration_ms = report.scan.duration_ms,
                    "Check finished."
                );
                {
                    let mut status = self.shared.status();
                    status.errors = report.errors;
                    status.last_check_bytes_hashed = report.scan.bytes_hashed;
                    let elapsed = Some(started.elapsed().as_millis() as u64);
                    if depth == Depth::Fast {
                        status.last_fast_check = Some(now_rfc3339());
                        status.last_fast_check_ms = elapsed;
                        status.fast_checks += 1;
                    } else {
                        status.last_full_check = Some(now_rfc3339());
                        status.last_full_check_ms = elapsed;
                        status.full_checks += 1;
                    }
                }
                if depth != Depth::Fast {
                    self.state.last_full_verification = Some(now_rfc3339());
                }
                self.apply(&report.findings).await;
            }
            Ok(Err(err)) => error!(why, error = %err, "Check failed."),
            Err(err) => error!(why, error = %err, "Check panicked."),
        }
    }

    /// Reports a damaged hash cache: a log line, a state problem (the latest one stays
    /// until restart, like a corrupt state file) and a count in the metrics.
    fn cache_problem(&self, problem: &cache::CacheProblem) {
        let path = self.config.state_dir.join(cache::CACHE_FILE);
        error!(path = %path.display(), problem = %problem, "The hash cache was damaged; it is not trusted: every file is read again and the cache rebuilt.");
        self.shared.status().hash_caches_discarded += 1;
        self.set_problem(
            CACHE_DAMAGED,
            &format!(
                "{} {problem}; discarded at {}, every file read again and the cache rebuilt",
                path.display(),
                now_rfc3339()
            ),
        );
    }

    /// Re-checks the paths named by a burst of watch events; lost events schedule a
    /// paced full check (run by the main loop, after any check in progress).
    async fn watch_event(&mut self, context: Arc<Context>, first: WatchEvent) {
        let mut paths = Vec::new();
        let mut rescan = None;
        let mut handle = |event: WatchEvent, status: &mut Status| match event {
            WatchEvent::Changed(path) => paths.push(path),
            WatchEvent::Rescan(reason) => rescan = Some(reason),
            WatchEvent::Degraded(reason) => {
                warn!(reason = %reason, "Real-time watching is degraded; scheduled verification covers it.");
                if !status.degradations.contains(&reason) {
                    status.degradations.push(reason);
                }
            }
        };
        {
            let mut status = self.shared.status();
            handle(first, &mut status);
            // Take the whole burst at once: one re-check per path, not per event.
            while let Ok(event) = self.events.try_recv() {
                handle(event, &mut status);
            }
        }
        if let Some(reason) = rescan {
            warn!(reason = %reason, "Watch events were lost; a full check follows.");
            self.shared.status().rescans += 1;
            self.rescan_pending = Some(reason);
            return;
        }
        paths.sort();
        paths.dedup();
        if paths.is_empty() {
            return;
        }
        let root = self.config.root.clone();
        let count = paths.len() as u64;
        let task = tokio::task::spawn_blocking(move || {
            pipeline::recheck(&root, &context.reader, &context.policy, &paths)
        });
        let result = self.wait_quiet(task).await;
        match result {
            Ok(Ok(findings)) => {
                self.shared.status().watch_rechecks += count;
                self.apply(&findings).await;
            }
            Ok(Err(err)) => error!(error = %err, "Re-check failed."),
            Err(err) => error!(error = %err, "Re-check panicked."),
        }
    }

    /// Waits for a check while staying live: the collector's verdicts are applied, the
    /// watchdog is fed and watch events are re-checked as they come (a paced full check
    /// takes minutes; neither a mark nor real-time drift may wait for it).
    async fn wait_serving<T>(
        &mut self,
        mut task: JoinHandle<T>,
        context: Option<&Arc<Context>>,
    ) -> Result<T, JoinError> {
        loop {
            tokio::select! {
                result = &mut task => return result,
                Ok(()) = self.directives.changed() => self.apply_directive().await,
                () = tick(&mut self.watchdog) => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
                Some(event) = self.events.recv(), if context.is_some() => {
                    if let Some(context) = context {
                        self.watch_event(Arc::clone(context), event).await;
                    }
                }
            }
        }
    }

    /// Waits for short blocking work (a re-check, a package comparison) applying
    /// verdicts and feeding the watchdog; watch events wait in their queue meanwhile.
    async fn wait_quiet<T>(&mut self, mut task: JoinHandle<T>) -> Result<T, JoinError> {
        loop {
            tokio::select! {
                result = &mut task => return result,
                Ok(()) = self.directives.changed() => self.apply_directive().await,
                () = tick(&mut self.watchdog) => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            }
        }
    }

    /// Follows the host's containers in real time, when the root is `/` and the policy
    /// checks containers.
    fn watch_containers(
        &self,
        context: &Context,
        events: mpsc::Sender<ContainerEvent>,
    ) -> Option<ContainerWatcher> {
        let config = &context.policy.config().containers;
        let on = self.config.watch.enabled && config.enabled && self.config.root == Path::new("/");
        on.then(|| containers::watch::start(containers::Host::default(), config.clone(), events))
    }

    /// What the container watcher saw.
    async fn container_event(&mut self, event: ContainerEvent) {
        match event {
            ContainerEvent::Started(c) => {
                info!(container = %containers::label(&c), runtime = %c.runtime, image = c.image.as_deref().unwrap_or("-"), "Watching container.");
                self.shared.status().containers.push(c);
            }
            ContainerEvent::Stopped(c) => {
                // Its findings stay remembered (and reported): findings are never withdrawn.
                info!(container = %containers::label(&c), "Container gone; no longer watched.");
                self.shared.status().containers.retain(|w| w.id != c.id);
            }
            ContainerEvent::Findings(findings) => {
                self.apply(&findings).await;
                self.container_actions
                    .run(&self.config.containers, &findings)
                    .await;
            }
            ContainerEvent::Degraded(reason) => {
                warn!(reason = %reason, "Container watching is degraded; scheduled checks cover it.");
                let mut status = self.shared.status();
                if !status.degradations.contains(&reason) {
                    status.degradations.push(reason);
                }
            }
        }
    }

    /// Compares the package set after a package manager wrote its database.
    async fn package_event(&mut self, context: Arc<Context>) {
        let root = self.config.root.clone();
        let task = tokio::task::spawn_blocking(move || {
            pipeline::recheck_packages(&root, &context.reader, &context.policy)
        });
        match self.wait_quiet(task).await {
            Ok(Ok(findings)) => self.apply(&findings).await,
            // The next full check reports an unreadable database as an error.
            Ok(Err(err)) => warn!(error = %err, "Cannot re-read the package database."),
            Err(err) => error!(error = %err, "Package re-check panicked."),
        }
    }

    /// Remembers findings, spools the new ones for the collector, marks the host when
    /// needed, saves the state.
    async fn apply(&mut self, findings: &[Finding]) {
        let time = now_rfc3339();
        let findings = self.provisioning_filter(findings, &time);
        let recorded = self.state.record(&findings, &time);
        // Durable for the collector before anything else: a crash from here on
        // re-finds them at worst (the state is saved below), never loses them. A
        // changed finding travels as a new event under its old key.
        if self.config.collector.is_some() {
            // Also while the spool cannot be opened: it takes them once it can.
            self.state.set_unspooled(Some(&recorded.to_report()));
        }
        self.spool_findings();
        // Drift is output, but an operator reading the journal must see it too.
        for (findings, what) in [(&recorded.new, "found"), (&recorded.changed, "changed")] {
            for finding in findings {
                warn!(
                    kind = finding.kind_name(),
                    key = %finding.key(),
                    severity = finding.severity().name(),
                    "Drift {what}."
                );
            }
        }
        let mark = self.local_mark(&time);
        self.apply_mark(mark).await;
    }

    /// Marks the host by `[replacement] mark_severity`, when local marking is on.
    fn local_mark(&mut self, time: &str) -> Option<Mark> {
        let threshold = self.config.replacement.mark_severity?;
        self.state.mark_if_needed(threshold, time)
    }

    /// Applies the collector's latest verdict on the host.
    async fn apply_directive(&mut self) {
        let Some(host) = self.directives.borrow_and_update().clone() else {
            return;
        };
        match self.state.apply_directive(host.mark.as_ref()) {
            Directed::Unchanged => {}
            Directed::Marked(mark) => self.apply_mark(Some(mark)).await,
            Directed::Lifted(mark) => {
                info!(reason = %mark.reason, "The collector lifted its mark; the host is no longer marked for replacement.");
                if let Err(err) = remove_marker(&self.config.run_dir) {
                    error!(error = %err, "Cannot remove the replacement marker.");
                }
                // A local rule may still want the host replaced.
                let local = self.local_mark(&now_rfc3339());
                self.apply_mark(local).await;
            }
        }
    }

    /// Opens the spool when reporting is configured (once; a reload only changes its
    /// bound). A spool made just now is seeded with every finding remembered so far:
    /// the collector must know them all, also on a host that reported nowhere before.
    fn open_spool(&mut self) -> Result<(), Error> {
        let Some(collector) = &self.config.collector else {
            return Ok(());
        };
        if let Some(spool) = &self.spool {
            lock(spool).set_max_bytes(collector.spool_max_bytes);
            return Ok(());
        }
        let spool = Spool::open(
            &self.config.state_dir.join(SPOOL_DIR),
            collector.spool_max_bytes,
        )
        .map_err(Error::Spool)?;
        if spool.created() {
            self.state.set_unspooled(None);
        } else {
            let unacked = spool.peek(usize::MAX).map(|u| u.events).unwrap_or_default();
            self.state
                .absorb_spooled(unacked.iter().filter_map(|event| match &event.body {
                    EventBody::Finding { finding } => Some((finding, event.at.as_str())),
                    _ => None,
                }));
        }
        self.spool = Some(Arc::new(Mutex::new(spool)));
        self.shared.status().collector = Some(CollectorStatus::new(collector));
        self.forget_problem(SPOOL_FAILED);
        self.spool_findings();
        Ok(())
    }

    /// [`Daemon::open_spool`] at start: a spool that cannot be opened (a full or
    /// read-only state directory) is a state problem, retried with the other writes;
    /// watching goes on meanwhile.
    fn open_spool_or_retry(&mut self) {
        if let Err(err) = self.open_spool() {
            error!(error = %err, "Cannot open the spool; retrying.");
            self.set_problem(SPOOL_FAILED, &err.to_string());
        }
    }

    /// Whether a write of the daemon's own state failed and is due again.
    fn writes_behind(&self) -> bool {
        self.save_failed
            || (self.config.collector.is_some() && self.spool.is_none())
            || self.state.findings.values().any(|r| r.unspooled)
    }

    /// Retries what failed to be written: the spool's opening, the findings not
    /// spooled, the state.
    fn retry_writes(&mut self) {
        if self.config.collector.is_some() && self.spool.is_none() {
            self.open_spool_or_retry();
            self.start_reporter();
        }
        self.spool_findings();
        if self.save_failed {
            self.save_state();
        }
    }

    /// Lists a state problem under `prefix`, replacing an older one.
    fn set_problem(&self, prefix: &str, text: &str) {
        let mut status = self.shared.status();
        status.state_problems.retain(|p| !p.starts_with(prefix));
        status.state_problems.push(format!("{prefix} {text}"));
    }

    fn forget_problem(&self, prefix: &str) {
        self.shared
            .status()
            .state_problems
            .retain(|p| !p.starts_with(prefix));
    }

    /// Writes the findings not spooled yet (new and changed ones, and any whose
    /// spooling failed before) to the spool and wakes the reporter.
    fn spool_findings(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let events: Vec<(String, EventBody)> = self
            .state
            .findings
            .values()
            .filter(|r| r.unspooled)
            .map(|r| {
                let finding = r.finding.clone();
                (r.reported_at().to_string(), EventBody::Finding { finding })
            })
            .collect();
        if events.is_empty() {
            return;
        }
        let state = &self.state;
        let result = lock(&spool).append(events, || current_findings(state));
        match result {
            Ok(appended) => {
                self.state.clear_unspooled();
                self.forget_problem(SPOOL_FAILED);
                self.spooled(appended);
                self.wake.notify_one();
            }
            Err(err) => {
                // They stay marked in the state (saved, when it can be) and are
                // spooled when the spool works again; nothing else waits for it.
                error!(error = %err, "Cannot spool findings for the collector; retrying.");
                self.set_problem(SPOOL_FAILED, &err.to_string());
            }
        }
    }

    /// Counts spooled events on `/status` and `/metrics`.
    fn spooled(&self, appended: Appended) {
        let Some(spool) = &self.spool else {
            return;
        };
        let (len, bytes) = {
            let spool = lock(spool);
            (spool.len() as u64, spool.bytes())
        };
        if let Some(collector) = self.shared.status().collector.as_mut() {
            collector.events_spooled += match appended {
                Appended::Added(n) => n as u64,
                Appended::Compacted { kept, .. } => kept as u64,
            };
            collector.spooled_events = len;
            collector.spool_bytes = bytes;
        }
    }

    /// Starts the reporter when reporting is configured.
    fn start_reporter(&mut self) {
        let (Some(collector), Some(spool)) = (&self.config.collector, &self.spool) else {
            return;
        };
        self.reporter = Some(
            Reporter {
                config: collector.clone(),
                state_dir: self.config.state_dir.clone(),
                spool: Arc::clone(spool),
                wake: Arc::clone(&self.wake),
                summary: self.summary.subscribe(),
                directives: self.directives_tx.clone(),
                status: Arc::clone(&self.shared) as Arc<dyn StatusBoard>,
            }
            .spawn(),
        );
    }

    /// Stops the reporter at once (its work is in the spool) and starts it with the
    /// configuration now in force.
    async fn restart_reporter(&mut self) {
        if let Some(reporter) = self.reporter.take() {
            reporter.shutdown(Duration::ZERO).await;
        }
        if self.config.collector.is_none() {
            self.spool = None;
            self.shared.status().collector = None;
            return;
        }
        match self.open_spool() {
            Ok(()) => self.start_reporter(),
            Err(err) => {
                error!(error = %err, "Cannot open the spool; not reporting to the collector.")
            }
        }
    }

    async fn apply_mark(&mut self, mark: Option<Mark>) {
        if let Some(mark) = &mark {
            error!(reason = %mark.reason, origin = ?mark.origin, "Host marked for replacement.");
            if let Err(err) = write_marker(&self.config.run_dir, mark) {
                error!(error = %err, "Cannot write the replacement marker.");
            }
            // Its own task: a slow command must not hold up checks or the watchdog.
            tokio::spawn(run_mark_command(
                self.config.replacement.command.clone(),
                mark.clone(),
                Duration::from_secs(self.config.replacement.command_timeout_secs),
            ));
        }
        self.save_state();
        self.publish();
    }

    /// Saves the state; a failure (a read-only or full state directory) is logged and
    /// shown in the status until a save succeeds again. Nothing else stops: the state
    /// in memory stays right, and the spool keeps what the collector has not taken.
    fn save_state(&mut self) {
        let result = self.state.save(&self.config.state_dir);
        self.save_failed = result.is_err();
        match result {
            Ok(()) => self.forget_problem(SAVE_FAILED),
            Err(err) => {
                error!(error = %err, dir = %self.config.state_dir.display(), "Cannot save state; retrying.");
                let dir = self.config.state_dir.display().to_string();
                self.set_problem(SAVE_FAILED, &format!("{dir}: {err}"));
            }
        }
    }

    fn publish(&self) {
        self.summary.send_replace(HostSummary {
            image: self.image.clone(),
            findings: self.state.findings.len() as u64,
            last_full_verification: self.state.last_full_verification.clone(),
        });
        let mut status = self.shared.status();
        status.mark = self.state.mark.clone();
        status.findings = self.state.findings.values().cloned().collect();
        status.provisioning = self.provisioning.clone();
        status.state = if self.state.mark.is_some() {
            "marked"
        } else if !self.state.findings.is_empty() {
            "drifted"
        } else if status.full_checks + status.fast_checks > 0 {
            "clean"
        } else {
            "starting"
        };
    }
}

/// How often the package databases are looked at (a few `stat`s): a package
/// installed shows up within two polls of its package manager finishing.
const PACKAGE_POLL: Duration = Duration::from_secs(2);

/// Notices package manager runs by polling the databases' file stamps (inotify on
/// `/var/lib/dpkg` would also fire for every lock and temporary file of a run), and
/// says when a change has *settled*: unchanged for one poll after it changed, so one
/// `apt install` that rewrites the status a dozen times is compared once, at its end.
struct PackageWatch {
    stamp: packages::DatabaseStamp,
    changed: bool,
}

impl PackageWatch {
    fn new(root: &Path) -> Self {
        PackageWatch {
            stamp: packages::database_stamp(root),
            changed: false,
        }
    }

    fn settled(&mut self, root: &Path) -> bool {
        let now = packages::database_stamp(root);
        if now != self.stamp {
            self.stamp = now;
            self.changed = true;
            return false;
        }
        std::mem::take(&mut self.changed)
    }
}

/// Idle I/O class and the lowest CPU priority for the calling thread, restored on drop
/// (blocking-pool threads are reused for other work).
struct BackgroundPriority {
    nice: i32,
    ioprio: i32,
}

const IOPRIO_WHO_PROCESS: i32 = 1;
const IOPRIO_CLASS_IDLE: i32 = 3;
const IOPRIO_CLASS_SHIFT: i32 = 13;

fn thread_id() -> libc::id_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as libc::id_t }
}

impl BackgroundPriority {
    fn enter() -> Self {
        let tid = thread_id();
        // SAFETY: plain syscalls on this thread's own id; failures leave the priority
        // as it was, which is only less polite.
        unsafe {
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            let ioprio = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) as i32;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            );
            BackgroundPriority { nice, ioprio }
        }
    }
}

impl Drop for BackgroundPriority {
    fn drop(&mut self) {
        let tid = thread_id();
        // SAFETY: as in `enter`. Lowering nice back needs CAP_SYS_NICE, which the
        // daemon has as root outside the unit; inside it stays at the unit's Nice=.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, tid, self.nice);
            if self.ioprio >= 0 {
                libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, self.ioprio);
            }
        }
    }
}

/// `interval` plus a random share of it up to `jitter`, so that a fleet booted together
/// does not verify together.
fn jittered(interval: Duration, jitter: f64) -> Duration {
    interval + interval.mul_f64(jitter * driftwatch_protocol::random::unit())
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    // Outside systemd (NOTIFY_SOCKET unset) this does nothing; a failure to reach
    // systemd is not worth stopping for, systemd's own timeout will say so.
    if let Err(err) = sd_notify::notify(states) {
        warn!(error = %err, "Cannot notify systemd.");
    }
}

/// One spool event per remembered finding, as last seen.
fn current_findings(state: &State) -> Vec<(String, EventBody)> {
    state
        .findings
        .values()
        .map(|r| {
            (
                r.last_seen.clone(),
                EventBody::Finding {
                    finding: r.finding.clone(),
                },
            )
        })
        .collect()
}

/// The spool, locked (every spool operation is durable before it changes memory, so
/// a poisoned lock still guards a consistent spool).
fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remove_marker(run_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(run_dir.join(MARKER_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn write_marker(run_dir: &Path, mark: &Mark) -> std::io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    let json = serde_json::to_vec_pretty(mark).map_err(std::io::Error::other)?;
    std::fs::write(run_dir.join(MARKER_FILE), json)
}

async fn run_mark_command(command: Vec<String>, mark: Mark, timeout: Duration) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .env("DRIFTWATCH_REASON", &mark.reason)
        .env("DRIFTWATCH_SINCE", &mark.since)
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            error!(program, error = %err, "Cannot run the replacement command.");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => info!(program, "Replacement command succeeded."),
        Ok(Ok(status)) => error!(program, status = %status, "Replacement command failed."),
        Ok(Err(err)) => error!(program, error = %err, "Cannot wait for the replacement command."),
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on the process group of our own child; no memory is
                // involved.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            error!(
                program,
                timeout_secs = timeout.as_secs(),
                "Replacement command timed out and was killed."
            );
        }
    }
}

/// The next watchdog tick; never, without a watchdog.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
