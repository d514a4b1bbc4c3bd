//! What the user typed: clap's view of the command line (DESIGN.md §3, a contract).
//!
//! Only parsing lives here; turning arguments into policies, keys and scans happens in
//! `command/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
EXIT STATUS
    0  no drift (or: the baseline verifies)
    1  drift found (for `baseline diff`: the baselines differ)
    2  operational error: bad arguments, unreadable files, I/O failure; also when
       entries could not be examined and no drift was found; for `check --report`,
       also when the report could not be delivered to the collector, drift or not
    3  baseline integrity failure: truncated, corrupted, tampered with, or not
       signed by the trusted key

ENVIRONMENT
    SOURCE_DATE_EPOCH  creation time recorded by `baseline create` (reproducible
                       builds); without it, the current time
    NO_COLOR           disables colour in text reports

EXAMPLES
    Bake: record an image's state and sign it
        driftwatch key generate --private pipeline.key --public pipeline.pub
        driftwatch baseline create --root /mnt/image --image-id web-2026.11.27 \\
            --sign-key pipeline.key --out /mnt/image/usr/lib/driftwatch/baseline

    Check a host against its image
        driftwatch check --pubkey /etc/driftwatch/pipeline.pub
        driftwatch check --format json | jq '.findings[] | select(.severity==\"critical\")'

    Check once and report to the collector (hosts without the daemon, CI)
        driftwatch check --report --config /etc/driftwatch/agent.toml

    See what changed between two image builds
        driftwatch baseline diff old.baseline new.baseline";

/// Drift detection for immutable infrastructure.
///
/// driftwatch records, when a machine image is built, a signed baseline of the image's
/// files; `check` compares a host (or a mounted image) with it and reports every
/// deviation: added, removed and modified files, graded by the policy.
#[derive(Debug, Parser)]
#[command(name = "driftwatch", version, about, long_about, after_long_help = AFTER_HELP)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, verify, inspect and compare baselines.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// Compare the host (or --root) with its baseline and report drift.
    ///
    /// Walks the paths the policy names, hashes what the policy compares, and reports
    /// every entry that was added, removed or modified, grouped by severity. The
    /// baseline is verified first (digest, and signature when --pubkey is given): a
    /// baseline that fails verification is never used (exit status 3).
    ///
    /// With --report, the findings also go to the collector of the agent
    /// configuration's [collector] section once the report is printed.
    #[command(after_long_help = AFTER_HELP)]
    Check(CheckArgs),
    /// List the running containers with their image and drift.
    ///
    /// Finds the containers of Docker, containerd (Kubernetes) and podman/CRI-O from
    /// the kernel's mount tables and the runtimes' state on disk (no runtime socket
    /// needed), and checks each against its image: what its writable overlay layer
    /// holds beyond the image (volumes, bind mounts, tmpfs and the policy's expected
    /// paths aside), and processes running executables the image does not hold.
    /// `check` of / reports the same findings.
    ///
    /// Exit status: 0 no container has drifted, 1 drift found, 2 something could not
    /// be examined.
    Containers(ContainersArgs),
    /// Manage the pipeline's signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the agent daemon (what the systemd unit starts).
    ///
    /// Verifies the baseline, checks the host, then watches the policy's critical paths
    /// in real time and verifies everything on a schedule. Findings are remembered
    /// under the state directory and, with a [collector] section, spooled on disk and
    /// reported to the collector over mutual TLS. The host is marked for replacement
    /// when the collector says so, or (without a collector, or with `[replacement]
    /// mark_severity` set) once a finding reaches `mark_severity`: /healthz on the
    /// loopback endpoint answers 503, a marker file appears under the run directory and
    /// the configured command runs. SIGHUP reloads the configuration and policy;
    /// SIGTERM stops within seconds, leaving unsent events in the spool.
    Run(RunArgs),
    /// Show what the running daemon knows (from its loopback endpoint).
    ///
    /// Exit status: 0 clean, 1 drifted or marked for replacement, 2 the daemon cannot
    /// be reached.
    Status(StatusArgs),
}

/// `run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration [default: /etc/driftwatch/agent.toml; a missing default file
    /// means all defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `containers`
#[derive(Debug, Args)]
pub struct ContainersArgs {
    /// Policy file whose [containers] section applies [default: the built-in policy].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Output format (JSON: `driftwatch.containers/v1`, each container with its
    /// findings).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's configuration, to find its endpoint [default:
    /// /etc/driftwatch/agent.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `driftwatch baseline …`
#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Record the state of a tree (usually an image at bake time) into a baseline.
    ///
    /// The baseline is deterministic: the same tree and policy give the same bytes
    /// (set SOURCE_DATE_EPOCH for the creation time). The policy used is stored in the
    /// baseline, so hosts check exactly what the image was baked with.
    #[command(after_long_help = AFTER_HELP)]
    Create(CreateArgs),
    /// Verify a baseline's digest and signature.
    Verify(VerifyArgs),
    /// Show a baseline's metadata and, with --entries, its entries.
    Show(ShowArgs),
    /// Show what changed between two baselines (e.g. two builds of an image).
    Diff(DiffArgs),
}

/// `driftwatch key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 key pair for signing baselines.
    ///
    /// The private key (PKCS#8 PEM, mode 0600) stays in the build pipeline; the public
    /// key (SPKI PEM) goes to hosts and to the collector. Existing files are never
    /// overwritten.
    Generate(KeyGenerateArgs),
}

/// Output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: grouped by severity, coloured on a terminal.
    #[default]
    Text,
    /// One JSON document on stdout (driftwatch.report/v1 for `check`).
    Json,
}

/// Options shared by commands that scan.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Treat DIR as / (a mounted image, a chroot). Paths in baselines and reports are
    /// always absolute paths inside it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Policy file (TOML). `baseline create` defaults to the built-in policy; `check`
    /// defaults to the policy recorded in the baseline.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Hashing threads; 0 means one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Read-ahead threads, apart from hashing: each opens files ahead of the hashing
    /// threads and asks the kernel to start reading them, which is what a cold page
    /// cache (a boot check) needs; on a warm cache it costs CPU. Default 0 (off); the
    /// daemon's boot check uses 16.
    #[arg(long, value_name = "N")]
    pub readers: Option<usize>,
}

/// `baseline create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub scan: ScanArgs,
    /// An identifier of the image (AMI id, build number…), recorded in the baseline.
    #[arg(long, value_name = "ID")]
    pub image_id: Option<String>,
    /// Sign the baseline with this ed25519 private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Where to write the baseline (written atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Also record the runtime state of this running system — its listeners and the
    /// processes no baseline can explain (memory-backed executables, executables in
    /// mutable paths) — so that hosts accept them. For images baked on a running
    /// builder; needs --root /.
    #[arg(long)]
    pub capture_runtime: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `baseline verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The baseline.
    pub file: PathBuf,
    /// Require a signature by this public key (SPKI PEM).
    #[arg(long, value_name = "FILE")]
    pub pubkey: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `baseline show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The baseline.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Also list every entry.
    #[arg(long)]
    pub entries: bool,
}

/// `baseline diff`
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older baseline.
    pub old: PathBuf,
    /// The newer baseline; its policy grades the differences.
    pub new: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub scan: ScanArgs,
    /// The baseline [default: ROOT/usr/lib/driftwatch/baseline].
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Require the baseline to be signed by this public key (SPKI PEM).
    #[arg(long, value_name = "FILE")]
    pub pubkey: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Skip runtime state (processes, modules, listeners, mounts). Runtime state is only
    /// read when the root is /.
    #[arg(long)]
    pub no_runtime: bool,
    /// Also deliver the findings to the collector.
    ///
    /// After the report is printed, every finding is sent to the collector named by the
    /// [collector] section of the agent configuration (--config), as the daemon would,
    /// with the same identity (a provisioned client certificate, or one obtained with
    /// the enrollment token and kept in the state directory), together with one
    /// heartbeat that tells the collector this host reports once and will not send
    /// heartbeats (so it is never called silent). Requests are gzip-compressed JSON over
    /// mutual TLS. Connection failures, 5xx and 429 answers are retried with backoff
    /// (honouring Retry-After) for up to three times `timeout_secs` in all; a refusal
    /// (400, 401, 403) ends it at once, and a 413 is retried with smaller batches.
    /// Nothing is spooled: what is not delivered now is reported by the next run.
    ///
    /// Once delivered, one line on stderr gives the host's state at the collector and,
    /// when the collector marked it for replacement, the mark. When the report cannot be
    /// delivered, one sentence on stderr says why and the exit status is 2 — also when
    /// drift was found, since nobody else will hear of it. The configuration is read
    /// before the scan, so a missing [collector] section fails at once.
    #[arg(long)]
    pub report: bool,
    /// The agent configuration [default: /etc/driftwatch/agent.toml]: the [collector]
    /// section --report uses and, when the checked root is the one it watches (its
    /// `root`, default /), the state directory whose sealed provisioning delta explains
    /// the host's first-boot changes, as it does for the daemon (read for a check of /
    /// without this option too).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `key generate`
#[derive(Debug, Args)]
pub struct KeyGenerateArgs {
    /// Where to write the private key (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub private: PathBuf,
    /// Where to write the public key.
    #[arg(long, value_name = "FILE")]
    pub public: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
