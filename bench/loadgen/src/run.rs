//! The two commands that load the collector: `run` (a scenario, closed or open loop)
//! and `register` (N hosts known, for memory).

use crate::agents::{ingest_url, send, CollectorFiles, Host, TlsBase};
use crate::body::Payload;
use crate::certs::{self, Identity};
use crate::error::{Error, Result};
use crate::stats::{mib, rate, thousands, Resources, Stats};
use crate::{ConnectionArgs, IdentityArgs, Scenario};
use driftwatch_protocol::wire::ImageClaim;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// `run`'s settings.
pub struct RunOptions {
    pub scenario: Scenario,
    pub duration_secs: f64,
    pub rate: Option<f64>,
    pub findings_per_batch: usize,
    pub findings_percent: u32,
    pub interval_secs: u64,
    pub max_in_flight: usize,
    pub warmup: bool,
    pub timeline: bool,
}

/// `register`'s settings.
pub struct RegisterOptions {
    pub interval_secs: u64,
    pub keep_connections: bool,
    pub settle_secs: f64,
}

/// What both commands start from.
struct Setup {
    collector: CollectorFiles,
    url: Arc<str>,
    tls: TlsBase,
    identities: Vec<Identity>,
    image: ImageClaim,
}

async fn setup(identity: &IdentityArgs, connection: &ConnectionArgs) -> Result<Setup> {
    if identity.hosts == 0 {
        return Err(Error::new("--hosts must be at least 1"));
    }
    let collector = CollectorFiles::load(&identity.collector)?;
    let base = collector.base_url(connection.url.as_deref());
    let (identities, issued) = certs::load_or_issue(&collector, identity)?;
    if issued > 0 {
        eprintln!("driftwatch-loadgen: {issued} host certificates issued and cached.");
    }
    let pool_idle =
        (connection.pool_idle_secs > 0).then(|| Duration::from_secs(connection.pool_idle_secs));
    let tls = TlsBase::new(
        &collector.ca_pem,
        Duration::from_secs(connection.timeout_secs.max(1)),
        pool_idle,
    )?;
    let image = if connection.no_image {
        ImageClaim {
            image_id: None,
            baseline_digest: None,
        }
    } else {
        collector.register_image(&base).await?
    };
    Ok(Setup {
        url: ingest_url(&base).into(),
        collector,
        tls,
        identities,
        image,
    })
}

/// Which requests carry findings.
#[derive(Clone, Copy)]
struct Mix {
    scenario: Scenario,
    findings_per_batch: usize,
    findings_percent: u32,
}

impl Mix {
    /// Findings in request number `n`.
    fn findings(self, n: u64) -> usize {
        match self.scenario {
            Scenario::Heartbeats => 0,
            Scenario::Findings => self.findings_per_batch,
            // 61 is prime to 100: requests with findings are spread evenly, not bunched.
            Scenario::Mixed if (n * 61) % 100 < u64::from(self.findings_percent) => {
                self.findings_per_batch
            }
            Scenario::Mixed => 0,
        }
    }

    /// Requests per second for a target `rate` of the scenario's events.
    fn requests_per_sec(self, rate: f64) -> f64 {
        match self.scenario {
            Scenario::Findings => rate / self.findings_per_batch as f64,
            Scenario::Heartbeats | Scenario::Mixed => rate,
        }
    }
}

/// `driftwatch-loadgen run`.
pub async fn run(
    identity: IdentityArgs,
    connection: ConnectionArgs,
    options: RunOptions,
) -> Result<()> {
    let setup = setup(&identity, &connection).await?;
    let hosts: Arc<Vec<Host>> = Arc::new(
        setup
            .identities
            .iter()
            .map(|id| Host::new(&setup.tls, id))
            .collect::<Result<_>>()?,
    );
    let payload = Arc::new(Payload::new(setup.image.clone(), options.interval_secs));
    let concurrency = connection.concurrency.max(1);
    let mix = Mix {
        scenario: options.scenario,
        findings_per_batch: options.findings_per_batch,
        findings_percent: options.findings_percent,
    };
    let limit = setup.collector.config.ingest.rate_per_sec;
    if let Some(rate) = options.rate {
        let per_host = mix.requests_per_sec(rate) / hosts.len() as f64;
        if per_host > limit {
            eprintln!(
                "driftwatch-loadgen: warning: {} requests/s per host is above the collector's limit of {limit}/s: expect 429s; use more hosts",
                rate_text(per_host)
            );
        }
    }
    if mix.findings_per_batch + 1 > setup.collector.config.ingest.max_events_per_batch
        && options.scenario != Scenario::Heartbeats
    {
        return Err(Error::new(format!(
            "{} findings and a heartbeat exceed the collector's {} events per batch",
            mix.findings_per_batch, setup.collector.config.ingest.max_events_per_batch
        )));
    }

    if options.warmup {
        eprintln!(
            "driftwatch-loadgen: connecting {} hosts ({} at once)…",
            hosts.len(),
            concurrency
        );
        let connected = connect(&hosts, &payload, &setup.url, concurrency).await;
        if connected.failed() > 0 {
            return Err(Error::new(format!(
                "{} of {} hosts could not send their first heartbeat: {}",
                connected.failed(),
                hosts.len(),
                error_summary(&connected)
            )));
        }
    }
    let duration = Duration::from_secs_f64(options.duration_secs);
    eprintln!(
        "driftwatch-loadgen: {} for {:.0} s…",
        options.scenario.name(),
        duration.as_secs_f64()
    );
    let meter = Resources::start(connection.collector_pid);
    let started = Instant::now();
    let stats = match options.rate {
        None => closed_loop(&hosts, &payload, &setup.url, mix, concurrency, duration).await,
        Some(rate) => {
            let per_sec = mix.requests_per_sec(rate);
            open_loop(
                &hosts,
                &payload,
                &setup.url,
                mix,
                per_sec,
                duration,
                options.max_in_flight,
            )
            .await
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let resources = meter.stop();

    let loop_text = match options.rate {
        None => format!("closed loop, {concurrency} workers"),
        Some(rate) => format!(
            "open loop at {} {}/s ({} requests/s)",
            rate_text(rate),
            match options.scenario {
                Scenario::Findings => "findings",
                Scenario::Heartbeats => "heartbeats",
                Scenario::Mixed => "requests",
            },
            rate_text(mix.requests_per_sec(rate))
        ),
    };
    let batch_text = match options.scenario {
        Scenario::Heartbeats => "heartbeat-only batches".to_string(),
        Scenario::Findings => format!(
            "{} findings + 1 heartbeat per batch",
            mix.findings_per_batch
        ),
        Scenario::Mixed => format!(
            "{} % of batches with {} findings, the rest heartbeat-only",
            mix.findings_percent, mix.findings_per_batch
        ),
    };
    let percentiles = stats.percentiles_ms();
    let per_host = stats.requests as f64 / elapsed / hosts.len() as f64;
    println!(
        "{} — {loop_text}; {} hosts; {batch_text}; {:.1} s measured",
        options.scenario.name(),
        thousands(hosts.len() as u64),
        elapsed
    );
    println!(
        "  requests    {} acknowledged, {} failed: {} requests/s ({} per host, limit {limit})",
        thousands(stats.requests),
        thousands(stats.failed()),
        rate_text(stats.requests as f64 / elapsed),
        rate_text(per_host),
    );
    println!(
        "  events      {} findings/s, {} heartbeats/s ({} stored, {} duplicates)",
        rate(stats.findings as f64 / elapsed),
        rate(stats.heartbeats as f64 / elapsed),
        thousands(stats.accepted),
        thousands(stats.duplicates)
    );
    let thirds = stats.thirds(u32::try_from(duration.as_millis()).unwrap_or(u32::MAX));
    let trend = |pick: fn(&(f64, f64)) -> f64| {
        thirds
            .iter()
            .map(|t| rate(pick(t)))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    if options.scenario == Scenario::Heartbeats {
        println!("  by thirds   {} requests/s", trend(|t| t.0));
    } else {
        println!("  by thirds   {} findings/s", trend(|t| t.1));
    }
    if let Some([p50, p90, p99, p999, max]) = percentiles {
        println!(
            "  latency     p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, p99.9 {p999:.1} ms, max {max:.1} ms{}",
            if options.rate.is_some() { " (from when each request was due)" } else { "" }
        );
    }
    print_errors(&stats);
    print_resources(&resources, elapsed);
    if options.timeline {
        println!("  timeline    second: requests started, p99 ms, max ms");
        for (second, count, p99, max) in stats.timeline() {
            println!("  {second:>10}: {count:>7} {p99:>9.1} {max:>9.1}");
        }
    }

    if let Some(path) = &connection.json {
        let [p50, p90, p99, p999, max] = percentiles.unwrap_or([f64::NAN; 5]);
        let value = json!({
            "command": "run",
            "scenario": options.scenario.name(),
            "loop": if options.rate.is_some() { "open" } else { "closed" },
            "target_rate": options.rate,
            "target_requests_per_sec": options.rate.map(|r| mix.requests_per_sec(r)),
            "concurrency": concurrency,
            "hosts": hosts.len(),
            "findings_per_batch": mix.findings_per_batch,
            "findings_percent": mix.findings_percent,
            "elapsed_secs": elapsed,
            "requests": stats.requests,
            "failed": stats.failed(),
            "requests_per_sec": stats.requests as f64 / elapsed,
            "findings_per_sec": stats.findings as f64 / elapsed,
            "heartbeats_per_sec": stats.heartbeats as f64 / elapsed,
            "requests_per_sec_by_third": thirds.map(|t| t.0),
            "findings_per_sec_by_third": thirds.map(|t| t.1),
            "accepted": stats.accepted,
            "duplicates": stats.duplicates,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": max },
            "errors": error_counts(&stats),
            "resources": resources_json(&resources, elapsed),
        });
        write_json(path, &value)?;
    }
    Ok(())
}

/// Every host sends one heartbeat: its connection is made and it is known to the
/// collector before the measured run.
async fn connect(
    hosts: &Arc<Vec<Host>>,
    payload: &Arc<Payload>,
    url: &Arc<str>,
    concurrency: usize,
) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(hosts.len()) {
        let (hosts, payload, url, next) = (
            Arc::clone(hosts),
            Arc::clone(payload),
            Arc::clone(url),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            let mut stats = Stats::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(host) = hosts.get(index) else { break };
                one_request(&mut stats, host, &payload, &url, 0, None, epoch).await;
            }
            stats
        });
    }
    join_stats(workers).await
}

/// Sends one batch of `findings` findings from `host` and records it; latency from
/// `due` when given (open loop), else from now.
async fn one_request(
    stats: &mut Stats,
    host: &Host,
    payload: &Payload,
    url: &str,
    findings: usize,
    due: Option<Instant>,
    epoch: Instant,
) {
    let started = due.unwrap_or_else(Instant::now);
    let offset_ms =
        u32::try_from(started.saturating_duration_since(epoch).as_millis()).unwrap_or(u32::MAX);
    match payload.batch(host, findings) {
        Ok(body) => {
            let outcome = send(&host.client, url, body).await;
            stats.record(outcome, findings, offset_ms, started.elapsed());
        }
        Err(err) => stats.error("not sent: encoding".into(), err.to_string()),
    }
}

async fn join_stats(mut workers: JoinSet<Stats>) -> Stats {
    let mut total = Stats::default();
    while let Some(result) = workers.join_next().await {
        match result {
            Ok(stats) => total.merge(stats),
            Err(err) => total.error("worker failed".into(), err.to_string()),
        }
    }
    total
}

/// `concurrency` workers, each over its own share of the hosts, each sending again as
/// soon as it has its answer, until `duration` has passed.
async fn closed_loop(
    hosts: &Arc<Vec<Host>>,
    payload: &Arc<Payload>,
    url: &Arc<str>,
    mix: Mix,
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let epoch = Instant::now();
    let deadline = epoch + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..concurrency {
        let (hosts, payload, url, counter) = (
            Arc::clone(hosts),
            Arc::clone(payload),
            Arc::clone(url),
            Arc::clone(&counter),
        );
        workers.spawn(async move {
            // Hosts are dealt out like cards; with fewer hosts than workers, some
            // workers share a host (its requests then share its connection).
            let mine: Vec<usize> = if hosts.len() >= concurrency {
                (worker..hosts.len()).step_by(concurrency).collect()
            } else {
                vec![worker % hosts.len()]
            };
            let mut stats = Stats::default();
            let mut turn = 0;
            while Instant::now() < deadline {
                let host = &hosts[mine[turn % mine.len()]];
                turn += 1;
                let findings = mix.findings(counter.fetch_add(1, Ordering::Relaxed));
                one_request(&mut stats, host, &payload, &url, findings, None, epoch).await;
            }
            stats
        });
    }
    join_stats(workers).await
}

/// Requests due at fixed times, `per_sec` of them per second, host after host, each
/// sent whatever happened to the ones before; latency counts from when each was due.
async fn open_loop(
    hosts: &Arc<Vec<Host>>,
    payload: &Arc<Payload>,
    url: &Arc<str>,
    mix: Mix,
    per_sec: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Stats {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let total = (duration.as_secs_f64() * per_sec).floor() as u64;
    let start = Instant::now();
    let mut requests = JoinSet::new();
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / per_sec);
        tokio::time::sleep_until(due).await;
        while requests.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            if let Ok(mut stats) = stats.lock() {
                stats.error(
                    "not sent: in-flight limit".into(),
                    format!("{max_in_flight} requests were still unanswered"),
                );
            }
            continue;
        };
        let (hosts, payload, url, stats) = (
            Arc::clone(hosts),
            Arc::clone(payload),
            Arc::clone(url),
            Arc::clone(&stats),
        );
        let host = (n % hosts.len() as u64) as usize;
        requests.spawn(async move {
            let _permit = permit;
            let mut one = Stats::default();
            let findings = mix.findings(n);
            one_request(
                &mut one,
                &hosts[host],
                &payload,
                &url,
                findings,
                Some(due),
                start,
            )
            .await;
            if let Ok(mut stats) = stats.lock() {
                stats.merge(one);
            }
        });
    }
    while requests.join_next().await.is_some() {}
    let mut total = Stats::default();
    if let Ok(mut stats) = stats.lock() {
        total = std::mem::take(&mut *stats);
    }
    total
}

/// `driftwatch-loadgen register`.
pub async fn register(
    identity: IdentityArgs,
    connection: ConnectionArgs,
    options: RegisterOptions,
) -> Result<()> {
    let setup = setup(&identity, &connection).await?;
    let payload = Arc::new(Payload::new(setup.image.clone(), options.interval_secs));
    let identities = Arc::new(setup.identities);
    let tls = Arc::new(setup.tls);
    let next = Arc::new(AtomicU64::new(0));
    let concurrency = connection.concurrency.max(1);
    eprintln!(
        "driftwatch-loadgen: registering {} hosts ({} at once)…",
        identities.len(),
        concurrency
    );
    let meter = Resources::start(connection.collector_pid);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(identities.len()) {
        let (identities, tls, payload, url, next) = (
            Arc::clone(&identities),
            Arc::clone(&tls),
            Arc::clone(&payload),
            Arc::clone(&setup.url),
            Arc::clone(&next),
        );
        let keep = options.keep_connections;
        workers.spawn(async move {
            let mut stats = Stats::default();
            let mut kept = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(identity) = identities.get(index) else {
                    break;
                };
                match Host::new(&tls, identity) {
                    Ok(host) => {
                        one_request(&mut stats, &host, &payload, &url, 0, None, started).await;
                        if keep {
                            kept.push(host);
                        }
                    }
                    Err(err) => stats.error("client".into(), err.to_string()),
                }
            }
            (stats, kept)
        });
    }
    let mut stats = Stats::default();
    let mut kept = Vec::new();
    while let Some(result) = workers.join_next().await {
        match result {
            Ok((one, hosts)) => {
                stats.merge(one);
                kept.extend(hosts);
            }
            Err(err) => stats.error("worker failed".into(), err.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let resources = meter.stop();
    let settle = Duration::from_secs_f64(options.settle_secs.max(0.0));
    tokio::time::sleep(settle).await;
    let pid = connection.collector_pid.map(|p| p.to_string());
    let memory = |pid: &Option<String>| pid.as_deref().and_then(crate::procfs::memory_kib);
    let registered_memory = memory(&pid);
    let closed_memory = if kept.is_empty() {
        None
    } else {
        drop(kept);
        tokio::time::sleep(settle).await;
        memory(&pid)
    };

    let percentiles = stats.percentiles_ms();
    println!(
        "register — {} hosts, one heartbeat each (interval {} s), {concurrency} at once: {:.1} s, {} hosts/s",
        thousands(identities.len() as u64),
        options.interval_secs,
        elapsed,
        rate_text(stats.requests as f64 / elapsed)
    );
    println!(
        "  requests    {} acknowledged, {} failed",
        thousands(stats.requests),
        thousands(stats.failed())
    );
    if let Some([p50, _, p99, _, max]) = percentiles {
        println!("  latency     p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (new connection + TLS handshake + first batch)");
    }
    print_errors(&stats);
    print_resources(&resources, elapsed);
    let connections = if options.keep_connections {
        "open"
    } else {
        "closed"
    };
    if let Some((rss, hwm)) = registered_memory {
        println!(
            "  collector   after {:.0} s, connections {connections}: VmRSS {}, VmHWM {}",
            settle.as_secs_f64(),
            mib(rss),
            mib(hwm)
        );
    }
    if let Some((rss, hwm)) = closed_memory {
        println!(
            "  collector   after closing them: VmRSS {}, VmHWM {}",
            mib(rss),
            mib(hwm)
        );
    }
    if let Some(path) = &connection.json {
        let value = json!({
            "command": "register",
            "hosts": identities.len(),
            "registered": stats.requests,
            "failed": stats.failed(),
            "elapsed_secs": elapsed,
            "errors": error_counts(&stats),
            "keep_connections": options.keep_connections,
            "collector_rss_kib": registered_memory.map(|m| m.0),
            "collector_hwm_kib": registered_memory.map(|m| m.1),
            "collector_rss_closed_kib": closed_memory.map(|m| m.0),
            "collector_hwm_closed_kib": closed_memory.map(|m| m.1),
            "resources": resources_json(&resources, elapsed),
        });
        write_json(path, &value)?;
    }
    if stats.failed() > 0 {
        return Err(Error::new(format!(
            "{} hosts were not registered: {}",
            stats.failed(),
            error_summary(&stats)
        )));
    }
    Ok(())
}

fn rate_text(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        rate(value)
    }
}

fn print_errors(stats: &Stats) {
    for (kind, (count, message)) in &stats.errors {
        println!(
            "  error       {kind}: {} (first: {message})",
            thousands(*count)
        );
    }
}

fn error_summary(stats: &Stats) -> String {
    stats
        .errors
        .iter()
        .map(|(kind, (count, message))| format!("{kind} ×{count} ({message})"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn error_counts(stats: &Stats) -> serde_json::Value {
    stats
        .errors
        .iter()
        .map(|(kind, (count, _))| (kind.clone(), json!(count)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn print_resources(resources: &Resources, elapsed: f64) {
    let cores = |secs: Option<f64>| secs.map_or("?".into(), |s| format!("{:.2}", s / elapsed));
    print!(
        "  CPU         load generator {} cores",
        cores(resources.loadgen_cpu_secs)
    );
    if resources.collector_cpu_secs.is_some() {
        print!(", collector {} cores", cores(resources.collector_cpu_secs));
    }
    if resources.other_cpu_secs.is_some() {
        print!(
            ", other processes {} cores",
            cores(resources.other_cpu_secs)
        );
    }
    println!();
    if let Some((rss, hwm)) = resources.collector_memory_kib {
        println!("  collector   VmRSS {}, VmHWM {}", mib(rss), mib(hwm));
    }
    if let Some((_, hwm)) = crate::procfs::memory_kib("self") {
        println!("  loadgen     VmHWM {}", mib(hwm));
    }
}

fn resources_json(resources: &Resources, elapsed: f64) -> serde_json::Value {
    json!({
        "loadgen_cpu_secs": resources.loadgen_cpu_secs,
        "loadgen_cpu_cores": resources.loadgen_cpu_secs.map(|s| s / elapsed),
        "collector_cpu_secs": resources.collector_cpu_secs,
        "collector_cpu_cores": resources.collector_cpu_secs.map(|s| s / elapsed),
        "collector_rss_kib": resources.collector_memory_kib.map(|m| m.0),
        "collector_hwm_kib": resources.collector_memory_kib.map(|m| m.1),
        "other_cpu_cores": resources.other_cpu_secs.map(|s| s / elapsed),
    })
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, format!("{value}\n"))
        .map_err(Error::context(format!("cannot write {}", path.display())))
}
