//! The operator's subcommands of `driftwatch-collector` (hosts, host, image, actions,
//! approve, mark, unmark, revoke, retire, token): clients of a running collector's operator API,
//! so that nobody needs curl. Each call goes through [`crate::client::OperatorClient`];
//! what it prints is JSON (`--format json`) or the tables of [`tables`].
//!
//! Output goes through [`emit`], which treats a closed pipe
//! (`driftwatch-collector hosts | head`) as the reader having had enough, not as a
//! crash.

pub mod tables;

use crate::api::operator::HostDetail;
use crate::api::tokens::{CreateToken, CreatedToken};
use crate::client::{ClientError, OperatorClient};
use crate::config::CollectorConfig;
use crate::pki::read_text;
use crate::store::{ActionRecord, HostRecord, ImageRecord, TokenRecord};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

/// A failure, with the exit code it ends the process with: 1 the collector refused
/// the call, 2 an operational error.
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// One sentence for stderr.
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Failure {
        Failure {
            code: 2,
            message: err.to_string(),
        }
    }
}

/// The operator's subcommands.
#[derive(Subcommand)]
pub enum OperatorCommand {
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
    /// End a host that was scaled in: gone now, without a silence alert (not revoked).
    Retire(HostCall),
    /// Named, scoped tokens: create, list, revoke (with the admin token).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `token create`, `token list` and `token revoke`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it, once (only its hash is kept).
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// Its unique name, as the action log records what it does.
        #[arg(long)]
        name: String,
        /// viewer, operator, pipeline, metrics, enroll or admin.
        #[arg(long)]
        role: String,
        /// How long it works (e.g. 30d, 12h; default: until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Enrollments it may make (enroll tokens; default: any number).
        #[arg(long)]
        uses: Option<u64>,
        /// Host ids it may enroll, a glob such as 'web-*' (enroll tokens).
        #[arg(long, value_name = "GLOB")]
        host_ids: Option<String>,
        /// Images its hosts may claim, a glob (enroll tokens).
        #[arg(long, value_name = "GLOB")]
        images: Option<String>,
        /// The hosts it enrolls run no daemon (only `check --report`, a CI scan): they
        /// are never silent. Declared here, at the collector (enroll tokens).
        #[arg(long)]
        no_daemon: bool,
    },
    /// List tokens (names, roles, scopes; never secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The token's name.
        name: String,
    },
}

/// `image list` and `image register`.
#[derive(Subcommand)]
pub enum ImageCommand {
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

/// `--config`, shared by every subcommand that reads the configuration.
#[derive(Args)]
pub struct ConfigArg {
    /// The collector's configuration file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/driftwatch-collector/collector.toml",
        env = "DRIFTWATCH_COLLECTOR_CONFIG"
    )]
    pub config: PathBuf,
}

/// Where the collector is and how to prove the operator is who they say.
#[derive(Args)]
pub struct ServerArgs {
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
    /// A file holding the bearer token (default: the configuration's: the admin's for
    /// `token`, the pipeline's for `image register`, the operator's for the rest).
    #[arg(long, value_name = "FILE", env = "DRIFTWATCH_COLLECTOR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// A call about one host.
#[derive(Args)]
pub struct HostCall {
    #[command(flatten)]
    server: ServerArgs,
    /// The host id.
    host_id: String,
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables and sentences for people.
    Text,
    /// The API's JSON, for scripts.
    Json,
}

impl OperatorCommand {
    /// Calls the collector and prints the answer.
    pub async fn run(self) -> Result<(), Failure> {
        match self {
            OperatorCommand::Hosts {
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
                let hosts: Vec<HostRecord> = connect(&server, Credential::Operator)?
                    .get(&path)
                    .await
                    .map_err(refused)?;
                print(server.format, &hosts, |out| tables::hosts(out, &hosts))
            }
            OperatorCommand::Host { server, host_id } => {
                let detail: HostDetail = connect(&server, Credential::Operator)?
                    .get(&format!("/v1/hosts/{}", encode(&host_id)))
                    .await
                    .map_err(refused)?;
                print(server.format, &detail, |out| {
                    tables::host_detail(out, &detail)
                })
            }
            OperatorCommand::Image { command } => command.run().await,
            OperatorCommand::Actions {
                server,
                host,
                limit,
            } => {
                let mut path = format!("/v1/actions?limit={limit}");
                if let Some(host) = host {
                    let _ = write!(path, "&host={}", encode(&host));
                }
                let actions: Vec<ActionRecord> = connect(&server, Credential::Operator)?
                    .get(&path)
                    .await
                    .map_err(refused)?;
                print(server.format, &actions, |out| {
                    tables::actions(out, &actions)
                })
            }
            OperatorCommand::Approve(call) => host_call(call, "approve", None).await,
            OperatorCommand::Mark { call, reason } => host_call(call, "mark", Some(reason)).await,
            OperatorCommand::Unmark(call) => host_call(call, "unmark", None).await,
            OperatorCommand::Revoke(call) => host_call(call, "revoke", None).await,
            OperatorCommand::Retire(call) => host_call(call, "retire", None).await,
            OperatorCommand::Token { command } => command.run().await,
        }
    }
}

impl ImageCommand {
    async fn run(self) -> Result<(), Failure> {
        match self {
            ImageCommand::List { server } => {
                let images: Vec<ImageRecord> = connect(&server, Credential::Operator)?
                    .get("/v1/images")
                    .await
                    .map_err(refused)?;
                print(server.format, &images, |out| tables::images(out, &images))
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
                let image: ImageRecord = connect(&server, Credential::Pipeline)?
                    .post_bytes(&path, bytes)
                    .await
                    .map_err(refused)?;
                print(server.format, &image, |out| tables::registered(out, &image))
            }
        }
    }
}

impl TokenCommand {
    async fn run(self) -> Result<(), Failure> {
        match self {
            TokenCommand::Create {
                server,
                name,
                role,
                expires,
                uses,
                host_ids,
                images,
                no_daemon,
            } => {
                let request = CreateToken {
                    name,
                    role,
                    expires_secs: expires.map(|d| d.as_secs().max(1)),
                    uses,
                    host_ids,
                    images,
                    no_daemon,
                };
                let created: CreatedToken = connect(&server, Credential::Admin)?
                    .post_json("/v1/tokens", &serde_json::to_value(&request)?)
                    .await
                    .map_err(refused)?;
                if server.format == Format::Text {
                    eprintln!(
                        "Token {:?} ({}) made; it is shown once and not stored: keep it now.",
                        created.record.name, created.record.role
                    );
                }
                print(server.format, &created, |out| {
                    out.push_str(&created.token);
                    out.push('\n');
                })
            }
            TokenCommand::List { server } => {
                let tokens: Vec<TokenRecord> = connect(&server, Credential::Admin)?
                    .get("/v1/tokens")
                    .await
                    .map_err(refused)?;
                print(server.format, &tokens, |out| tables::tokens(out, &tokens))
            }
            TokenCommand::Revoke { server, name } => {
                let token: TokenRecord = connect(&server, Credential::Admin)?
                    .post_json(
                        &format!("/v1/tokens/{}/revoke", encode(&name)),
                        &serde_json::json!({}),
                    )
                    .await
                    .map_err(refused)?;
                print(server.format, &token, |out| {
                    tables::tokens(out, std::slice::from_ref(&token))
                })
            }
        }
    }
}

async fn host_call(call: HostCall, action: &str, reason: Option<String>) -> Result<(), Failure> {
    let client = connect(&call.server, Credential::Operator)?;
    let body = serde_json::json!({ "reason": reason });
    let host: HostRecord = client
        .post_json(
            &format!("/v1/hosts/{}/{action}", encode(&call.host_id)),
            &body,
        )
        .await
        .map_err(refused)?;
    print(call.server.format, &host, |out| {
        tables::host_now(out, &host)
    })
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

fn refused(err: ClientError) -> Failure {
    let code = match err {
        ClientError::Refused { .. } => 1,
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
    emit(&out)
}

/// Writes `out` to stdout. A closed pipe means the reader (`head`, a pager) has what it
/// wanted: success, silently. Any other write error is an operational failure.
pub fn emit(out: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::from(format!("cannot write the output: {err}")))
        }
        _ => Ok(()),
    }
}

/// Which of the configuration's token files a call uses by default.
#[derive(Clone, Copy)]
enum Credential {
    /// `operator_token_file`.
    Operator,
    /// `admin_token_file`, else the operator's.
    Admin,
    /// `pipeline_token_file`, else the operator's.
    Pipeline,
}

fn connect(server: &ServerArgs, credential: Credential) -> Result<OperatorClient, Failure> {
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
        (None, Ok(config)) => {
            let auth = &config.auth;
            let chosen = match credential {
                Credential::Operator => None,
                Credential::Admin => auth.admin_token_file.as_ref(),
                Credential::Pipeline => auth.pipeline_token_file.as_ref(),
            };
            chosen.unwrap_or(&auth.operator_token_file).clone()
        }
        (None, Err(_)) => return Err(from_config("token-file")),
    };
    let token = read_text(&token_file)?.trim().to_string();
    Ok(OperatorClient::new(&url, &ca, token)?)
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(encode("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode("a b/../c?&"), "a%20b%2F..%2Fc%3F%26");
    }
}
