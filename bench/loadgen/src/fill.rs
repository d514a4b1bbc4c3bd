//! `fill`: a store with a fleet's worth of hosts and findings, written straight through
//! the collector's [`Store`](driftwatch_collector::store::Store) (no TLS, no HTTP), for
//! benchmarks that read a large fleet (the dashboard's pages) rather than ingest one.
//!
//! Each host is ingested as the collector would ingest its first batch: a heartbeat and
//! `findings` file findings (the same paths on every host, so drift repeats across the
//! fleet), none critical, in one transaction with its decision. One more host,
//! `BIG_HOST`, has `big_host_findings` findings. The image the hosts claim is
//! registered first.

use crate::body::file_finding;
use crate::error::{Error, Result};
use driftwatch_collector::config::CollectorConfig;
use driftwatch_collector::store::{
    now_ms, DynStore, ImageRecord, IngestBody, IngestEvent, IngestRecord, Policy,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The image every filled host claims.
pub const IMAGE_ID: &str = "fill-image-1";
/// The host with many findings.
pub const BIG_HOST: &str = "fill-big";
/// Hosts ingested at once.
const CONCURRENCY: usize = 8;

/// What to fill.
pub struct FillOptions {
    pub hosts: u64,
    pub findings: u64,
    pub big_host_findings: u64,
}

/// Fills the store of the collector configured at `config`.
pub async fn fill(config: &Path, options: FillOptions) -> Result<()> {
    let config = CollectorConfig::load(config).map_err(Error::context("collector.toml"))?;
    let store = driftwatch_collector::store::open(&config)
        .await
        .map_err(Error::context("open the store"))?;
    let policy = Arc::new(Policy::new(&config).map_err(Error::context("the policy"))?);
    store
        .register_image(ImageRecord {
            image_id: IMAGE_ID.into(),
            baseline_digest: format!("blake3:{}", blake3::hash(IMAGE_ID.as_bytes()).to_hex()),
            signer: None,
            entries: 1000,
            created_at: "2026-11-27T00:00:00Z".into(),
            registered_ms: now_ms(),
        })
        .await
        .map_err(Error::context("register the image"))?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let ids = (0..options.hosts)
        .map(|n| (format!("fill-{n:06}"), options.findings))
        .chain(std::iter::once((
            BIG_HOST.to_string(),
            options.big_host_findings,
        )));
    for (done, (host, findings)) in ids.enumerate() {
        if tasks.len() >= CONCURRENCY {
            join_one(&mut tasks).await?;
        }
        let (store, policy) = (Arc::clone(&store), Arc::clone(&policy));
        tasks.spawn(async move { ingest(&store, policy, host, findings).await });
        if done % 10_000 == 0 && done > 0 {
            eprintln!(
                "fill: {done} hosts in {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    while !tasks.is_empty() {
        join_one(&mut tasks).await?;
    }
    println!(
        "filled {} hosts with {} findings each and {BIG_HOST} with {} in {:.1} s",
        options.hosts,
        options.findings,
        options.big_host_findings,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn join_one(tasks: &mut tokio::task::JoinSet<Result<()>>) -> Result<()> {
    match tasks.join_next().await {
        Some(result) => result.map_err(Error::context("a fill task"))?,
        None => Ok(()),
    }
}

/// One host's first batch: a heartbeat and its findings.
async fn ingest(store: &DynStore, policy: Arc<Policy>, host: String, findings: u64) -> Result<()> {
    let mut events: Vec<IngestEvent> = (0..findings)
        .map(|k| IngestEvent {
            id: format!("fill:{k}"),
            body: IngestBody::Finding(Box::new(file_finding("fill", k))),
        })
        .collect();
    events.push(IngestEvent {
        id: "fill:heartbeat".into(),
        body: IngestBody::Heartbeat {
            agent_version: "driftwatch-loadgen fill".into(),
            interval_secs: 86_400,
        },
    });
    let record = IngestRecord {
        hostname: format!("{host}.example"),
        host_id: host,
        image_id: Some(IMAGE_ID.into()),
        baseline_digest: Some(format!(
            "blake3:{}",
            blake3::hash(IMAGE_ID.as_bytes()).to_hex()
        )),
        events,
        collector_findings: Vec::new(),
        received_ms: now_ms(),
    };
    store
        .ingest(record, policy)
        .await
        .map_err(Error::context("ingest"))?;
    Ok(())
}
