//! `driftwatch-collector`: serve the fleet, and the operator's commands.
//!
//! `serve` runs the collector; `init` writes a working configuration with its CA,
//! server certificate and tokens; `issue-host-cert` provisions a host without
//! enrollment; the other subcommands are clients of a running collector's operator API.

use clap::{Args, Parser, Subcommand, ValueEnum};
use driftwatch_collector::actions::Actions;
use driftwatch_collector::alerts::Alerter;
use driftwatch_collector::api::operator::HostDetail;
use driftwatch_collector::api::rfc3339;
use driftwatch_collector::api::RateLimiter;
use driftwatch_collector::app::{app, AppState, Enrollment};
use driftwatch_collector::client::OperatorClient;
use driftwatch_collector::config::CollectorConfig;
use driftwatch_collector::fleet::Fleet;
use driftwatch_collector::metrics::Metrics;
use driftwatch_collector::pki::{read_text, CertificateAuthority};
use driftwatch_collector::store::sqlite::SqliteStore;
use driftwatch_collector::store::{ActionRecord, HostRecord, ImageRecord};
use driftwatch_collector::tls;
use driftwatch_protocol::wire::HostState;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tracing::info;

/// The driftwatch collector: fleet state, image registry and budgeted replacement.
///
/// Agents report findings and heartbeats over mutual TLS; the collector checks each
/// host against the baseline registered for its image, marks drifted hosts for
/// replacement within a budget per image, tells them (their health check turns 503),
/// and sends grouped alerts to webhooks.
///
/// Exit codes: 0 success; 1 the collector refused the call (the message says why);
/// 2 an operational error (bad arguments, unreadable files, collector unreachable).
#[derive(Parser)]
#[command(name = "driftwatch-collector", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Serve {
        /// The configuration file (TOML; see `init` and the README for every key).
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/driftwatch-collector/collector.toml"
        )]
        config: PathBuf,
    },
    /// Write a working configuration, a CA, a server certificate and tokens into DIR,
    /// for a first try on one machine.
    ///
    /// DIR gets collector.toml, ca.pem and ca.key (the CA that signs agents' and the
    /// server's certificates), server.pem and server.key, operator.token (the API's
    /// bearer token) and enrollment.token (what agents exchange for a certificate).
    /// Existing files are never overwritten.
    Init {
        /// The directory to write into (created if missing).
        dir: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Names agents use to reach the collector (DNS names or IP addresses), put in
        /// the server certificate besides `localhost` and `127.0.0.1` (which the
        /// operator CLI on this machine uses). Repeat for several.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// The database file, written into the configuration (relative paths are
        /// relative to DIR). A packaged collector keeps it in its state directory.
        #[arg(long, value_name = "FILE", default_value = "collector.db")]
        database: PathBuf,
        /// A group that may read the keys and tokens (mode 0640 instead of 0600), e.g.
        /// the service's own group when `init` runs as root.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
    },
    /// Issue a client certificate for a host (provisioning without enrollment).
    IssueHostCert {
        #[command(flatten)]
        config: ConfigArg,
        /// The host id the certificate names.
        #[arg(long)]
        host_id: String,
        /// Where to write HOST_ID.pem and HOST_ID.key.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// List hosts.
    Hosts {
        #[command(flatten)]
        server: ServerArgs,
        /// Only hosts in this state (clean, drifted, marked, silent, gone).
        #[arg(long)]
        state: Option<String>,
        /// Only hosts on this image.
        #[arg(long)]
        image: Option<String>,
    },
    /// Show one host and its findings.
    Host {
        #[command(flatten)]
        server: ServerArgs,
        /// The host id.
        host_id: String,
    },
    /// Images: list, or register a baked image's baseline.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The action log (marks, holds, webhooks, commands…), newest first.
    Actions {
        #[command(flatten)]
        server: ServerArgs,
        /// Only actions about this host.
        #[arg(long)]
        host: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Approve a held replacement (budget, manual approval or dry run): mark the host now.
    Approve(HostCall),
    /// Mark a host for replacement, whatever its findings.
    Mark {
        #[command(flatten)]
        call: HostCall,
        /// Why, for the action log and the host.
        #[arg(long, default_value = "requested by an operator")]
        reason: String,
    },
    /// Lift a host's mark (or held decision); its current findings stop selecting it.
    Unmark(HostCall),
    /// Refuse a host's reports from now on (lost or compromised credentials).
    Revoke(HostCall),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// List registered images.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Register an image: its hosts must verify against exactly this baseline. The
    /// baseline's seal is verified, and its signature against the collector's
    /// trusted pipeline keys.
    Register {
        #[command(flatten)]
        server: ServerArgs,
        /// The image id (must match the one recorded in the baseline, if any).
        #[arg(long)]
        image_id: Option<String>,
        /// The baseline file made by `driftwatch baseline create`.
        #[arg(long, value_name = "FILE")]
        baseline: PathBuf,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The collector's configuration file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/driftwatch-collector/collector.toml",
        env = "DRIFTWATCH_COLLECTOR_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct ServerArgs {
    /// The collector's configuration: the URL, CA and token default from it.
    #[command(flatten)]
    config: ConfigArg,
    /// The collector's URL (default: the configuration's `listen` address, or
    /// https://127.0.0.1:PORT when it listens on all addresses).
    #[arg(long, env = "DRIFTWATCH_COLLECTOR_URL")]
    url: Option<String>,
    /// The CA that signed the collector's certificate (default: the configuration's
    /// client CA, which `init` uses for both).
    #[arg(long, value_name = "FILE", env = "DRIFTWATCH_COLLECTOR_CA")]
    ca: Option<PathBuf>,
    /// A file holding the operator token (default: the configuration's).
    #[arg(long, value_name = "FILE", env = "DRIFTWATCH_COLLECTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args)]
struct HostCall {
    #[command(flatten)]
    server: ServerArgs,
    /// The host id.
    host_id: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// A failure, with the exit code it ends the process with.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Failure {
        Failure {
            code: 2,
            message: err.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("driftwatch-collector: cannot start: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("driftwatch-collector: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve { config } => serve(&config).await,
        Command::Init {
            dir,
            listen,
            names,
            database,
            group,
        } => {
            let group = group.as_deref().map(group_id).transpose()?;
            init(&dir, listen, &names, &database, group)
        }
        Command::IssueHostCert {
            config,
            host_id,
            out_dir,
        } => issue_host_cert(&config.config, &host_id, &out_dir),
        Command::Hosts {
            server,
            state,
            image,
        } => {
            let mut path = String::from("/v1/hosts?");
            for (key, value) in [("state", state), ("image", image)] {
                if let Some(value) = value {
                    let _ = write!(path, "{key}={}&", encode(&value));
                }
            }
            let hosts: Vec<HostRecord> = connect(&server)?.get(&path).await.map_err(refused)?;
            print(server.format, &hosts, |out| host_table(out, &hosts))
        }
        Command::Host { server, host_id } => {
            let detail: HostDetail = connect(&server)?
                .get(&format!("/v1/hosts/{}", encode(&host_id)))
                .await
                .map_err(refused)?;
            print(server.format, &detail, |out| {
                host_table(out, std::slice::from_ref(&detail.host));
                let host = &detail.host;
                for (key, value) in [
                    ("mark_reason", &host.mark_reason),
                    ("hold", &host.hold),
                    ("hold_reason", &host.hold_reason),
                ] {
                    if let Some(value) = value {
                        let _ = writeln!(out, "{key}: {value}");
                    }
                }
                let _ = writeln!(out, "\n{} findings", detail.findings.len());
                for f in &detail.findings {
                    let _ = writeln!(
                        out,
                        "  {:<8} {:<13} {}  (first {})",
                        f.severity.name(),
                        f.kind,
                        f.subject,
                        rfc3339(f.first_seen_ms)
                    );
                }
                if let Some(delta) = &detail.provisioning {
                    provisioning_lines(out, delta);
                }
            })
        }
        Command::Image { command } => match command {
            ImageCommand::List { server } => {
                let images: Vec<ImageRecord> =
                    connect(&server)?.get("/v1/images").await.map_err(refused)?;
                print(server.format, &images, |out| {
                    for i in &images {
                        let _ = writeln!(
                            out,
                            "{}  {}  {} entries  {}  registered {}",
                            i.image_id,
                            i.baseline_digest,
                            i.entries,
                            i.signer.as_deref().unwrap_or("unsigned"),
                            rfc3339(i.registered_ms)
                        );
                    }
                })
            }
            ImageCommand::Register {
                server,
                image_id,
                baseline,
            } => {
                let bytes = std::fs::read(&baseline).map_err(|e| Failure {
                    code: 2,
                    message: format!("cannot read {}: {e}", baseline.display()),
                })?;
                let path = match &image_id {
                    Some(id) => format!("/v1/images?image_id={}", encode(id)),
                    None => "/v1/images".to_string(),
                };
                let image: ImageRecord = connect(&server)?
                    .post_bytes(&path, bytes)
                    .await
                    .map_err(refused)?;
                print(server.format, &image, |out| {
                    let _ = writeln!(
                        out,
                        "Registered image {} with baseline {} ({}).",
                        image.image_id,
                        image.baseline_digest,
                        image
                            .signer
                            .as_deref()
                            .map_or("unsigned".into(), |s| format!("signed by {s}"))
                    );
                })
            }
        },
        Command::Actions {
            server,
            host,
            limit,
        } => {
            let mut path = format!("/v1/actions?limit={limit}");
            if let Some(host) = host {
                let _ = write!(path, "&host={}", encode(&host));
            }
            let actions: Vec<ActionRecord> = connect(&server)?.get(&path).await.map_err(refused)?;
            print(server.format, &actions, |out| {
                for a in &actions {
                    let _ = writeln!(
                        out,
                        "{}  {:<14} {:<18} {:<10} {}",
                        rfc3339(a.at_ms),
                        a.action,
                        a.host_id
                            .as_deref()
                            .or(a.image_id.as_deref())
                            .unwrap_or("-"),
                        a.outcome,
                        a.detail
                    );
                }
            })
        }
        Command::Approve(call) => host_call(call, "approve", None).await,
        Command::Mark { call, reason } => host_call(call, "mark", Some(reason)).await,
        Command::Unmark(call) => host_call(call, "unmark", None).await,
        Command::Revoke(call) => host_call(call, "revoke", None).await,
    }
}

/// Percent-encodes a query or path value (ids are plain, but input is input).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn refused(err: driftwatch_collector::client::ClientError) -> Failure {
    let code = match err {
        driftwatch_collector::client::ClientError::Refused { .. } => 1,
        _ => 2,
    };
    Failure {
        code,
        message: err.to_string(),
    }
}

fn print<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce(&mut String),
) -> Result<(), Failure> {
    let out = match format {
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Text => {
            let mut out = String::new();
            text(&mut out);
            out
        }
    };
    print!("{out}");
    Ok(())
}

fn host_table(out: &mut String, hosts: &[HostRecord]) {
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<20} {:>4} {:>4} {:>4} {:>4}  LAST SEEN",
        "HOST", "STATE", "IMAGE", "CRIT", "HIGH", "MED", "LOW"
    );
    // Colour only for people at a terminal; pipes and files get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    for h in hosts {
        let [critical, high, medium, low] = h.findings_by_severity;
        let state = format!("{:<8}", h.state.name());
        let state = match (colour, h.state) {
            (true, HostState::Marked) => format!("\x1b[1;31m{state}\x1b[0m"),
            (true, HostState::Drifted | HostState::Silent) => format!("\x1b[33m{state}\x1b[0m"),
            (true, HostState::Clean) => format!("\x1b[32m{state}\x1b[0m"),
            _ => state,
        };
        let _ = writeln!(
            out,
            "{:<24} {state} {:<20} {critical:>4} {high:>4} {medium:>4} {low:>4}  {}{}",
            h.host_id,
            h.image_id.as_deref().unwrap_or("-"),
            rfc3339(h.last_seen_ms),
            h.hold
                .as_deref()
                .map(|hold| format!("  (held: {hold})"))
                .unwrap_or_default()
        );
    }
}

async fn host_call(call: HostCall, action: &str, reason: Option<String>) -> Result<(), Failure> {
    let client = connect(&call.server)?;
    let body = serde_json::json!({ "reason": reason });
    let host: HostRecord = client
        .post_json(
            &format!("/v1/hosts/{}/{action}", encode(&call.host_id)),
            &body,
        )
        .await
        .map_err(refused)?;
    print(call.server.format, &host, |out| {
        let _ = writeln!(out, "Host {} is now {}.", host.host_id, host.state.name());
    })
}

fn connect(server: &ServerArgs) -> Result<OperatorClient, Failure> {
    let config = CollectorConfig::load(&server.config.config);
    let from_config = |what: &str| {
        Failure::from(format!(
            "no --{what} given and the configuration cannot supply it: {}",
            config
                .as_ref()
                .err()
                .map_or(String::new(), |e| e.to_string())
        ))
    };
    let url = match (&server.url, &config) {
        (Some(url), _) => url.clone(),
        // The listener's own address, or loopback when it listens on all of them.
        (None, Ok(config)) if config.listen.ip().is_unspecified() => {
            format!("https://127.0.0.1:{}", config.listen.port())
        }
        (None, Ok(config)) => format!("https://{}", config.listen),
        (None, Err(_)) => return Err(from_config("url")),
    };
    let ca = match (&server.ca, &config) {
        (Some(ca), _) => ca.clone(),
        (None, Ok(config)) => config.tls.client_ca_file.clone(),
        (None, Err(_)) => return Err(from_config("ca")),
    };
    let token_file = match (&server.token_file, &config) {
        (Some(file), _) => file.clone(),
        (None, Ok(config)) => config.auth.operator_token_file.clone(),
        (None, Err(_)) => return Err(from_config("token-file")),
    };
    let token = read_text(&token_file)?.trim().to_string();
    Ok(OperatorClient::new(&url, &ca, token)?)
}

async fn serve(path: &Path) -> Result<(), Failure> {
    init_logging();
    let config = Arc::new(CollectorConfig::load(path)?);
    let store: driftwatch_collector::store::DynStore =
        Arc::new(SqliteStore::open(&config.database)?);
    let metrics = Arc::new(Metrics::new());
    let alerter = Alerter::start(&config, Arc::clone(&store), Arc::clone(&metrics))?;
    let actions = Actions::start(
        &config,
        Arc::clone(&store),
        alerter.clone(),
        Arc::clone(&metrics),
    );
    let fleet = Arc::new(Fleet::new(
        Arc::clone(&config),
        Arc::clone(&store),
        alerter,
        actions,
        Arc::clone(&metrics),
    )?);
    let operator_token = blake3::hash(
        read_text(&config.auth.operator_token_file)?
            .trim()
            .as_bytes(),
    );
    let enrollment = match (
        &config.auth.enrollment_token_file,
        &config.tls.client_ca_key_file,
    ) {
        (Some(token), Some(ca_key)) => Some(Enrollment {
            token: blake3::hash(read_text(token)?.trim().as_bytes()),
            ca: CertificateAuthority::load(
                &read_text(&config.tls.client_ca_file)?,
                &read_text(ca_key)?,
            )?,
        }),
        (Some(_), None) => {
            return Err(Failure::from(
                "auth.enrollment_token_file needs tls.client_ca_key_file to sign certificates",
            ))
        }
        _ => None,
    };
    let tls_config = tls::server_config(
        &config.tls.cert_file,
        &config.tls.key_file,
        &config.tls.client_ca_file,
    )?;
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        fleet: Arc::clone(&fleet),
        metrics,
        operator_token,
        enrollment,
        limiter: RateLimiter::new(config.ingest.rate_per_sec, config.ingest.burst),
    });
    fleet.spawn_sweeper();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure::from(format!("cannot listen on {}: {e}", config.listen)))?;
    info!(listen = %config.listen, database = %config.database.display(), "Collector listening.");
    tls::serve(listener, tls_config, app(state), shutdown_signal()).await;
    info!("Collector stopped.");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("driftwatch_collector=info,tower_http=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn random_token() -> Result<String, Failure> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Failure::from(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Who may read a file `init` writes.
#[derive(Clone, Copy)]
enum Access {
    /// Anyone (certificates, the configuration).
    Public,
    /// The owner, and the group when one is given (keys, tokens).
    Secret(Option<u32>),
}

/// Writes `contents` to a new file (never over an existing one).
fn write_new(path: &Path, contents: &str, access: Access) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = match access {
        Access::Public => 0o644,
        Access::Secret(None) => 0o600,
        Access::Secret(Some(_)) => 0o640,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Failure::from(format!("cannot create {}: {e}", path.display())))?;
    if let Access::Secret(Some(gid)) = access {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(|e| {
            Failure::from(format!(
                "cannot give {} to group {gid}: {e}",
                path.display()
            ))
        })?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::from(format!("cannot write {}: {e}", path.display())))
}

/// The id of group `name`, from /etc/group (no NSS: a service group is a local one).
fn group_id(name: &str) -> Result<u32, Failure> {
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| Failure::from(format!("cannot read /etc/group: {e}")))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let group = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (group == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| Failure::from(format!("no group {name:?} in /etc/group")))
}

fn init(
    dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
    database: &Path,
    group: Option<u32>,
) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::from(format!("cannot create {}: {e}", dir.display())))?;
    for name in [
        "collector.toml",
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "operator.token",
        "enrollment.token",
    ] {
        if dir.join(name).exists() {
            return Err(Failure::from(format!(
                "{} exists; init never overwrites",
                dir.join(name).display()
            )));
        }
    }
    let mut names: Vec<String> = extra_names.to_vec();
    for name in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let secret = Access::Secret(group);
    let ca = CertificateAuthority::generate("driftwatch collector CA", 3650)?;
    let (server_pem, server_key) = ca.server_certificate(&names, 825)?;
    write_new(&dir.join("ca.pem"), &ca.cert_pem, Access::Public)?;
    write_new(&dir.join("ca.key"), &ca.key_pem(), secret)?;
    write_new(&dir.join("server.pem"), &server_pem, Access::Public)?;
    write_new(&dir.join("server.key"), &server_key, secret)?;
    write_new(
        &dir.join("operator.token"),
        &(random_token()? + "\n"),
        secret,
    )?;
    write_new(
        &dir.join("enrollment.token"),
        &(random_token()? + "\n"),
        secret,
    )?;
    let database = database
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let config = format!(
        r#"# driftwatch collector configuration (see the README for every key).
listen = "{listen}"
database = "{database}"

[tls]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
client_ca_key_file = "ca.key"

[auth]
operator_token_file = "operator.token"
enrollment_token_file = "enrollment.token"
# Public keys of the bake pipelines; images are registered only with baselines they signed.
trusted_keys = []

[replacement]
mode = "auto"          # auto | dry_run | manual_approve
max_hosts = 5          # per image and window
max_percent = 10.0     # of an image's hosts per window; the smaller limit applies
window_secs = 3600

[[replacement.rule]]
min_severity = "critical"

# [[webhook]]
# url = "https://hooks.example.org/driftwatch"
# format = "json"      # or "chat"
"#
    );
    write_new(&dir.join("collector.toml"), &config, Access::Public)?;
    println!(
        "Wrote a collector configuration to {}.\nStart it with: driftwatch-collector serve --config {}",
        dir.display(),
        dir.join("collector.toml").display()
    );
    Ok(())
}

fn issue_host_cert(config: &Path, host_id: &str, out_dir: &Path) -> Result<(), Failure> {
    let config = CollectorConfig::load(config)?;
    let key_file = config.tls.client_ca_key_file.as_ref().ok_or_else(|| {
        Failure::from("tls.client_ca_key_file is not set: this collector cannot issue certificates")
    })?;
    let ca = CertificateAuthority::load(
        &read_text(&config.tls.client_ca_file)?,
        &read_text(key_file)?,
    )?;
    let (cert, key) = ca.host_certificate(host_id, config.tls.host_cert_days)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Failure::from(format!("cannot create {}: {e}", out_dir.display())))?;
    write_new(
        &out_dir.join(format!("{host_id}.pem")),
        &cert,
        Access::Public,
    )?;
    write_new(
        &out_dir.join(format!("{host_id}.key")),
        &key,
        Access::Secret(None),
    )?;
    println!(
        "Wrote {0}/{1}.pem and {0}/{1}.key.",
        out_dir.display(),
        host_id
    );
    Ok(())
}

/// The provisioning delta of `host`, one line per change: what the first boot changed
/// and the host is not blamed for.
fn provisioning_lines(out: &mut impl std::fmt::Write, delta: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let changes = delta["changes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\nprovisioning delta (not drift): {} changes, sealed {}",
        changes.len(),
        text(&delta["sealed"])
    );
    for change in &changes {
        let _ = writeln!(
            out,
            "  {:<8} {}  {}",
            text(&change["change"]),
            text(&change["path"]),
            text(&change["observed"]["blake3"])
        );
    }
}
