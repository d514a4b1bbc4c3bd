//! `driftwatch-loadgen`: simulated agents for measuring the collector.
//!
//! Why a program of its own and not `wrk` or `h2load`: what the collector costs depends
//! on *who* sends. Each host is identified by its client certificate, rate-limited per
//! host, stored per host, and its findings are grouped across hosts — so a benchmark
//! that sends everything over one connection with one certificate measures a
//! collector nobody runs. Here every simulated host has its own certificate from the
//! collector's CA and its own HTTP client, which handles its connection as the agent
//! does (HTTP/2, kept while in use, let go after 5 s idle, TLS resumed with the
//! collector's ticket), and sends what the agent sends: gzip'd JSON
//! [`Batch`](driftwatch_protocol::wire::Batch)es with a heartbeat in each, file
//! findings with unique event ids and distinct paths, for a registered image.
//!
//! Two ways of loading:
//!
//! - **closed loop** (`--concurrency C`): C workers each send, wait for the answer, and
//!   send again, over their share of the hosts. This finds the most the collector
//!   sustains, but a slow answer also slows the senders, so its latencies are not
//!   those of a fleet.
//! - **open loop** (`--rate R`): requests leave at fixed times whatever happens to the
//!   earlier ones, and latency is measured from the time a request was *due*, not from
//!   when it was sent. Stalls then show in the percentiles instead of hiding as fewer
//!   requests ("coordinated omission").
//!
//! Certificates are issued once (in parallel threads) and cached per CA, so 10,000 hosts
//! cost their key generation only the first time. `register` makes N hosts known with
//! one heartbeat each, for measuring the collector's memory per registered host.
//!
//! The load generator runs on the same machine as the collector in `bench/collector.sh`;
//! it reports its own CPU time next to the collector's so that the share of the machine
//! each had is visible.

mod agents;
mod body;
mod certs;
mod error;
mod fill;
mod procfs;
mod run;
mod stats;

use clap::{Args, Parser, Subcommand, ValueEnum};
use error::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Load generator for the driftwatch collector: simulated agents over real mutual TLS.
///
/// Every simulated host has its own client certificate, issued from the collector's CA
/// and cached, and its own connection, handled as the agent handles its own; batches are
/// the agent's (gzip'd JSON, a heartbeat in each, file findings with unique ids and
/// distinct paths).
#[derive(Parser)]
#[command(
    name = "driftwatch-loadgen",
    version,
    max_term_width = 100,
    after_help = "Examples:
  driftwatch-collector init /tmp/c --listen 127.0.0.1:8443
  driftwatch-collector serve --config /tmp/c/collector.toml &
  driftwatch-loadgen run --collector /tmp/c --scenario heartbeats
  driftwatch-loadgen run --collector /tmp/c --scenario findings --rate 2500 --timeline
  driftwatch-loadgen register --collector /tmp/c --hosts 10000 --collector-pid $!

bench/collector.sh runs the whole benchmark; docs/performance.md has its results."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Issue (or find in the cache) the certificates of N hosts, and stop.
    ///
    /// `run` and `register` do this themselves; this is for paying the cost up front.
    Certs {
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Make N hosts known to the collector: one heartbeat each, then stop.
    ///
    /// For measuring the collector's memory per registered host (give
    /// `--collector-pid`). Heartbeats announce a long interval (`--interval-secs`) so
    /// that the hosts do not turn silent while the measurement runs.
    Register {
        #[command(flatten)]
        identity: IdentityArgs,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// The heartbeat interval the hosts announce, in seconds.
        #[arg(long, default_value_t = 86_400)]
        interval_secs: u64,
        /// Keep every host's connection open after its heartbeat (for as long as the
        /// collector keeps it: `--pool-idle-secs` does not apply), read the
        /// collector's memory, then close them all and read it again. All hosts
        /// connecting within seconds is what a collector restart brings.
        #[arg(long)]
        keep_connections: bool,
        /// Seconds to wait before reading the collector's memory.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
    },
    /// Fill the collector's store directly (no TLS): N hosts with their findings and
    /// one host with many, for benchmarks that read a large fleet.
    Fill {
        /// The collector's collector.toml (its `database` is filled).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Hosts to make.
        #[arg(long, default_value_t = 100_000)]
        hosts: u64,
        /// File findings of each host.
        #[arg(long, default_value_t = 10)]
        findings: u64,
        /// File findings of the host `fill-big`.
        #[arg(long, default_value_t = 1000)]
        big_host_findings: u64,
    },
    /// Send a scenario's load for a while and report throughput and latency.
    ///
    /// Every host first sends one heartbeat (connecting, and registering it); then the
    /// measured run starts. Closed loop by default (`--concurrency` workers); open loop
    /// at a fixed rate with `--rate`.
    Run {
        #[command(flatten)]
        identity: IdentityArgs,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// What the simulated hosts send.
        #[arg(long, value_enum, default_value_t = Scenario::Findings)]
        scenario: Scenario,
        /// Seconds of measured load.
        #[arg(long, default_value_t = 30.0)]
        duration_secs: f64,
        /// Open loop: the target rate, in findings per second for `findings`,
        /// heartbeats per second for `heartbeats`, requests per second for `mixed`.
        /// Requests go out at fixed times, spread evenly over the hosts, and latency is
        /// counted from when each was due. Without it: closed loop.
        #[arg(long, value_name = "PER_SEC")]
        rate: Option<f64>,
        /// File findings in each findings batch (each batch also carries a heartbeat,
        /// as the agent's do).
        #[arg(long, default_value_t = 10)]
        findings_per_batch: usize,
        /// In `mixed`, the share of requests that carry findings, in percent; the rest
        /// are heartbeats alone.
        #[arg(long, default_value_t = 10)]
        findings_percent: u32,
        /// The heartbeat interval the hosts announce, in seconds (the agent's default).
        #[arg(long, default_value_t = 30)]
        interval_secs: u64,
        /// Open loop: requests due while this many are still unanswered are not sent
        /// and are counted as errors (`not sent: in-flight limit`).
        #[arg(long, default_value_t = 20_000)]
        max_in_flight: usize,
        /// Do not connect every host before the measured run: each host's first
        /// request opens its connection (and registers it) inside the run, as a fleet
        /// that is already running does, instead of all hosts at once beforehand.
        #[arg(long)]
        no_warmup: bool,
        /// Also print, per second of the run, the requests started and their p99 and
        /// maximum latency: shows whether slow answers are spread out or come in
        /// stalls.
        #[arg(long)]
        timeline: bool,
    },
}

/// What the simulated hosts send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Heartbeat-only batches, as an idle agent sends every interval.
    Heartbeats,
    /// Batches of `--findings-per-batch` file findings plus a heartbeat.
    Findings,
    /// Heartbeat-only batches, with `--findings-percent` of requests carrying findings.
    Mixed,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Heartbeats => "heartbeats",
            Scenario::Findings => "findings",
            Scenario::Mixed => "mixed",
        }
    }
}

/// Who the simulated hosts are.
#[derive(Args, Clone, Debug)]
pub struct IdentityArgs {
    /// The collector's directory as written by `driftwatch-collector init`: its
    /// collector.toml names the CA (certificate and key) that issues the hosts'
    /// certificates and that the collector's own certificate is checked against, the
    /// listen address and the operator token.
    #[arg(long, value_name = "DIR")]
    collector: PathBuf,
    /// Where host certificates are cached, per CA [default: DIR/loadgen-certs].
    #[arg(long, value_name = "DIR")]
    cert_cache: Option<PathBuf>,
    /// How many hosts to simulate. Mind the collector's per-host rate limit
    /// (`[ingest] rate_per_sec`, 10 by default): spread the load over enough hosts.
    #[arg(long, default_value_t = 2000)]
    hosts: usize,
    /// Host ids are this prefix and a five-digit number.
    #[arg(long, default_value = "loadgen-")]
    host_prefix: String,
}

/// How to reach and load the collector.
#[derive(Args, Clone, Debug)]
pub struct ConnectionArgs {
    /// The collector's base URL [default: https://127.0.0.1:PORT with the port of
    /// collector.toml's `listen`].
    #[arg(long)]
    url: Option<String>,
    /// Closed loop: concurrent workers, each waiting for its answer before sending
    /// again. Also the concurrency of connecting and registering hosts.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Seconds a host keeps its idle connection before letting it go, as the agent
    /// does (its next report resumes the TLS session); 0: keep it for as long as the
    /// collector does.
    #[arg(long, default_value_t = 5)]
    pool_idle_secs: u64,
    /// The collector's process id: its CPU time and memory (VmRSS, VmHWM) are read
    /// from /proc and reported with the load.
    #[arg(long, value_name = "PID")]
    collector_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Claim no image (the hosts' batches carry no image id and digest). By default an
    /// image is registered with the collector (operator API) and every host claims it,
    /// as a fleet baked from one image does.
    #[arg(long)]
    no_image: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("driftwatch-loadgen: {err}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::new(format!("cannot start the runtime: {e}")))
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Certs { identity } => {
            let collector = agents::CollectorFiles::load(&identity.collector)?;
            let started = std::time::Instant::now();
            let (identities, issued) = certs::load_or_issue(&collector, &identity)?;
            println!(
                "{} host certificates ready ({} issued now) in {:.1} s",
                identities.len(),
                issued,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Register {
            identity,
            mut connection,
            interval_secs,
            keep_connections,
            settle_secs,
        } => {
            if keep_connections {
                connection.pool_idle_secs = 0;
            }
            let options = run::RegisterOptions {
                interval_secs,
                keep_connections,
                settle_secs,
            };
            runtime(connection.threads)?.block_on(run::register(identity, connection, options))
        }
        Command::Fill {
            config,
            hosts,
            findings,
            big_host_findings,
        } => runtime(2)?.block_on(fill::fill(
            &config,
            fill::FillOptions {
                hosts,
                findings,
                big_host_findings,
            },
        )),
        Command::Run {
            identity,
            connection,
            scenario,
            duration_secs,
            rate,
            findings_per_batch,
            findings_percent,
            interval_secs,
            max_in_flight,
            no_warmup,
            timeline,
        } => {
            if !(duration_secs > 0.0 && duration_secs.is_finite()) {
                return Err(Error::new("--duration-secs must be positive"));
            }
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return Err(Error::new("--rate must be positive"));
            }
            if scenario != Scenario::Heartbeats && findings_per_batch == 0 {
                return Err(Error::new("--findings-per-batch must be at least 1"));
            }
            if findings_percent > 100 {
                return Err(Error::new("--findings-percent is at most 100"));
            }
            let options = run::RunOptions {
                scenario,
                duration_secs,
                rate,
                findings_per_batch,
                findings_percent,
                interval_secs,
                max_in_flight: max_in_flight.max(1),
                warmup: !no_warmup,
                timeline,
            };
            runtime(connection.threads)?.block_on(run::run(identity, connection, options))
        }
    }
}
