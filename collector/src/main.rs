//! `driftwatch-collector`: serve the fleet, and the operator's commands.
//!
//! `serve` runs the collector; `init` writes a working configuration with its CA,
//! server certificate and tokens; `issue-host-cert` provisions a host without
//! enrollment; the other subcommands are clients of a running collector's operator API
//! ([`driftwatch_collector::cli`]).

use clap::{Parser, Subcommand};
use driftwatch_collector::actions::Actions;
use driftwatch_collector::alerts::Alerter;
use driftwatch_collector::api::RateLimiter;
use driftwatch_collector::app::{app, AppState, Enrollment};
use driftwatch_collector::auth::Credentials;
use driftwatch_collector::cli::{emit, ConfigArg, Failure, OperatorCommand};
use driftwatch_collector::config::CollectorConfig;
use driftwatch_collector::fleet::Fleet;
use driftwatch_collector::metrics::Metrics;
use driftwatch_collector::pki::{cert_info, first_certificate, read_text, CertificateAuthority};
use driftwatch_collector::store::trust::Source;
use driftwatch_collector::store::{now_ms, Binding};
use driftwatch_collector::tls;
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
    /// server's certificates), server.pem and server.key, the API's bearer tokens
    /// admin.token (every right, tokens included), operator.token (read and act on
    /// hosts) and pipeline.token (register images), enrollment.token (what agents
    /// exchange for a certificate), and pipeline.key and pipeline.pub, the key pair
    /// that signs baselines (the configuration trusts pipeline.pub).
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
    /// Write a new CA and a server certificate it signed into DIR (ca.pem, ca.key,
    /// server.pem, server.key), for rotating the collector's CA: trust it beside the
    /// old one on both sides, switch the server certificate and the issuing key to it,
    /// let the hosts renew, then drop the old one (README, "Rotating the CA").
    /// Existing files are never overwritten.
    NewCa {
        /// The directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// Names agents use to reach the collector, put in the server certificate
        /// besides `localhost` and `127.0.0.1`. Repeat for several.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// A group that may read the keys (mode 0640 instead of 0600).
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
        /// The host runs no daemon (only `check --report`, a CI scan): it is never
        /// silent. Declared here, at the collector; a host cannot say it of itself.
        #[arg(long)]
        no_daemon: bool,
    },
    #[command(flatten)]
    Operator(OperatorCommand),
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
        Command::NewCa {
            out_dir,
            names,
            group,
        } => {
            let group = group.as_deref().map(group_id).transpose()?;
            refuse_existing(&out_dir, &CA_FILES)?;
            write_ca(&out_dir, &names, Access::Secret(group))?;
            emit(&format!(
                "Wrote a new CA and server certificate to {}.\n",
                out_dir.display()
            ))
        }
        Command::IssueHostCert {
            config,
            host_id,
            out_dir,
            no_daemon,
        } => issue_host_cert(&config.config, &host_id, &out_dir, !no_daemon).await,
        Command::Operator(command) => command.run().await,
    }
}

async fn serve(path: &Path) -> Result<(), Failure> {
    init_logging();
    let config = Arc::new(CollectorConfig::load(path)?);
    let store = driftwatch_collector::store::open(&config).await?;
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
    let credentials = Credentials::new(Credentials::read(&config.auth)?);
    let enrollment = load_enrollment(&config)?;
    let (tls_reload, tls_config) = tokio::sync::watch::channel(load_tls(&config)?);
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        fleet: Arc::clone(&fleet),
        metrics,
        credentials,
        enrollment: std::sync::RwLock::new(enrollment),
        limiter: RateLimiter::new(config.ingest.rate_per_sec, config.ingest.burst),
        event_limiter: driftwatch_collector::limiter::EventLimiter::new(
            config.ingest.events_per_sec,
            config.ingest.event_burst,
        ),
    });
    fleet.spawn_sweeper();
    spawn_reloader(Arc::clone(&state), tls_reload);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure::from(format!("cannot listen on {}: {e}", config.listen)))?;
    info!(listen = %config.listen, database = %config.database.display(), "Collector listening.");
    tls::serve_reloadable(listener, tls_config, app(state), shutdown_signal()).await;
    info!("Collector stopped.");
    Ok(())
}

/// The issuing CA and the enrollment token file, when `tls.client_ca_key_file` is set.
fn load_enrollment(config: &CollectorConfig) -> Result<Option<Arc<Enrollment>>, Failure> {
    let Some(ca_key) = &config.tls.client_ca_key_file else {
        if config.auth.enrollment_token_file.is_some() {
            return Err(Failure::from(
                "auth.enrollment_token_file needs tls.client_ca_key_file to sign certificates",
            ));
        }
        return Ok(None);
    };
    let token = match &config.auth.enrollment_token_file {
        Some(file) => Some(blake3::hash(read_text(file)?.trim().as_bytes())),
        None => None,
    };
    let ca =
        CertificateAuthority::load(&read_text(&config.tls.client_ca_file)?, &read_text(ca_key)?)
            .map_err(|e| {
                Failure::from(format!(
                    "{} with {}: {e}",
                    config.tls.client_ca_file.display(),
                    ca_key.display()
                ))
            })?;
    Ok(Some(Arc::new(Enrollment { token, ca })))
}

/// The server's TLS configuration from `[tls]`.
fn load_tls(config: &CollectorConfig) -> Result<Arc<rustls::ServerConfig>, Failure> {
    Ok(tls::server_config(
        &config.tls.cert_file,
        &config.tls.key_file,
        &config.tls.client_ca_file,
    )?)
}

/// On SIGHUP, re-reads the token files of `[auth]` (a token replaced in its file works
/// at once, and the one it replaced stops) and the certificate files of `[tls]`: the
/// server certificate and key and the client CA bundle, for new connections, and the
/// issuing CA (the certificate of the bundle that is the CA key's). What cannot be read
/// keeps what is in use (and says why): a half-copied file never takes a collector down.
fn spawn_reloader(
    state: Arc<AppState>,
    tls_reload: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "Cannot listen for SIGHUP; token and certificate files are read at start only."
        );
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match Credentials::read(&state.config.auth) {
                Ok(files) => {
                    state.credentials.replace(files);
                    info!("SIGHUP: token files read again.");
                }
                Err(err) => {
                    tracing::error!(error = %err, "SIGHUP: cannot read the token files; keeping the ones in use.");
                }
            }
            match (load_tls(&state.config), load_enrollment(&state.config)) {
                (Ok(tls), Ok(enrollment)) => {
                    let _ = tls_reload.send(tls);
                    *state.enrollment.write().unwrap_or_else(|p| p.into_inner()) = enrollment;
                    info!("SIGHUP: certificates read again.");
                }
                (Err(err), _) | (_, Err(err)) => {
                    tracing::error!(error = %err.message, "SIGHUP: cannot read the certificate files; keeping the ones in use.");
                }
            }
        }
    });
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
    driftwatch_protocol::random::hex(32).map_err(|e| Failure::from(format!("no randomness: {e}")))
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

/// The files of a CA and its server certificate.
const CA_FILES: [&str; 4] = ["ca.pem", "ca.key", "server.pem", "server.key"];

/// Creates `dir`; refuses when one of `names` exists in it.
fn refuse_existing(dir: &Path, names: &[&str]) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::from(format!("cannot create {}: {e}", dir.display())))?;
    match names.iter().map(|name| dir.join(name)).find(|p| p.exists()) {
        Some(path) => Err(Failure::from(format!(
            "{} exists; it is never overwritten",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Writes a new CA (named with the time it was made, to tell it from the one it may
/// replace) and a server certificate it signed for `extra_names`, `localhost` and
/// `127.0.0.1`.
fn write_ca(dir: &Path, extra_names: &[String], secret: Access) -> Result<(), Failure> {
    let mut names: Vec<String> = extra_names.to_vec();
    for name in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    // The time alone is not enough: two CAs made in one second (a scripted rotation)
    // would share a name, and CAs are told apart by name (`CertificateAuthority::issued`).
    let made = driftwatch_protocol::time::now_rfc3339();
    let nonce = driftwatch_protocol::random::hex(6)
        .map_err(|e| Failure::from(format!("no randomness for the CA's name: {e}")))?;
    let ca =
        CertificateAuthority::generate(&format!("driftwatch collector CA {made} {nonce}"), 3650)?;
    let (server_pem, server_key) = ca.server_certificate(&names, 825)?;
    write_new(&dir.join("ca.pem"), &ca.cert_pem, Access::Public)?;
    write_new(&dir.join("ca.key"), &ca.key_pem(), secret)?;
    write_new(&dir.join("server.pem"), &server_pem, Access::Public)?;
    write_new(&dir.join("server.key"), &server_key, secret)
}

fn init(
    dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
    database: &Path,
    group: Option<u32>,
) -> Result<(), Failure> {
    refuse_existing(dir, &CA_FILES)?;
    refuse_existing(
        dir,
        &[
            "collector.toml",
            "admin.token",
            "operator.token",
            "pipeline.token",
            "enrollment.token",
            "pipeline.key",
            "pipeline.pub",
        ],
    )?;
    let secret = Access::Secret(group);
    write_ca(dir, extra_names, secret)?;
    for token in [
        "admin.token",
        "operator.token",
        "pipeline.token",
        "enrollment.token",
    ] {
        write_new(&dir.join(token), &(random_token()? + "\n"), secret)?;
    }
    let (pipeline_key, pipeline_pub) = pipeline_key_pair()?;
    write_new(&dir.join("pipeline.key"), &pipeline_key, secret)?;
    write_new(&dir.join("pipeline.pub"), &pipeline_pub, Access::Public)?;
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
# Roles: admin (everything, tokens too), operator (read, mark, unmark, approve, revoke,
# retire, scrape), pipeline (register images). More, scoped and named, with
# `driftwatch-collector token create`.
admin_token_file = "admin.token"
operator_token_file = "operator.token"
pipeline_token_file = "pipeline.token"
enrollment_token_file = "enrollment.token"
# Public keys of the bake pipelines; images are registered only with baselines they
# signed (`driftwatch baseline create --sign-key pipeline.key`). Unsigned baselines are
# refused unless allow_unsigned_baselines = true.
trusted_keys = ["pipeline.pub"]

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
    emit(&format!(
        "Wrote a collector configuration to {}.\nStart it with: driftwatch-collector serve --config {}\n",
        dir.display(),
        dir.join("collector.toml").display()
    ))
}

/// A new pipeline signing key: (private PEM, public PEM).
fn pipeline_key_pair() -> Result<(String, String), Failure> {
    let mut seed = [0u8; 32];
    driftwatch_protocol::random::fill(&mut seed)
        .map_err(|e| Failure::from(format!("no randomness: {e}")))?;
    let key = driftwatch_protocol::sign::PrivateKey::from_seed(seed);
    Ok((key.to_pem()?, key.public_key().to_pem()?))
}

/// Issues a certificate for `host_id` and binds the id to its key in the store: a
/// provisioned id is never enrolled.
async fn issue_host_cert(
    config: &Path,
    host_id: &str,
    out_dir: &Path,
    daemon: bool,
) -> Result<(), Failure> {
    let config = CollectorConfig::load(config)?;
    let key_file = config.tls.client_ca_key_file.as_ref().ok_or_else(|| {
        Failure::from("tls.client_ca_key_file is not set: this collector cannot issue certificates")
    })?;
    let ca = CertificateAuthority::load(
        &read_text(&config.tls.client_ca_file)?,
        &read_text(key_file)?,
    )?;
    let (cert, key) = ca.host_certificate(host_id, config.tls.host_cert_validity())?;
    let info = first_certificate(&cert, "issued certificate")
        .ok()
        .as_ref()
        .and_then(cert_info)
        .ok_or_else(|| Failure::from("cannot read the issued certificate"))?;
    let store = driftwatch_collector::store::open(&config).await?;
    store
        .bind(Binding {
            host_id: host_id.to_string(),
            key_fingerprint: info.key_fingerprint,
            serial: info.serial,
            not_after_ms: info.not_after_ms,
            source: Source::Provisioned,
            token: None,
            images: None,
            daemon,
            bound_ms: now_ms(),
        })
        .await
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot provision host {host_id}: {e}"),
        })?;
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
    emit(&format!(
        "Wrote {0}/{1}.pem and {0}/{1}.key.\n",
        out_dir.display(),
        host_id
    ))
}
