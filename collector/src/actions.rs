//! What happens when a host is marked for replacement.
//!
//! Marking is a decision recorded in the store; the agent learns it from its next
//! answer. The operators learn it from a `marked` alert (grouped per image like every
//! alert, so a bad image gives one message, not one per host), and their automation
//! from `alerts.mark_command`: a program run once per marked host — typically a cloud
//! CLI call that terminates the instance so its auto-scaling group replaces it. The
//! command runs without a shell, with the host in its environment
//! (`DRIFTWATCH_HOST_ID`, `DRIFTWATCH_IMAGE_ID`, `DRIFTWATCH_REASON`,
//! `DRIFTWATCH_HOSTNAME`, and `DRIFTWATCH_ACTION_ID`, the same for every run of one
//! decision's command: automation can use it as its own idempotency key), is killed
//! after `alerts.command_timeout_secs`, and its outcome goes to the action log,
//! because an instance terminated by automation must be traceable to a decision.
//!
//! The command is owed in the store's outbox, written with the decision itself, and
//! run by whichever replica claims it first ([`crate::delivery`]): at least once,
//! after a restart too.

use crate::alerts::Alerter;
use crate::config::CollectorConfig;
use crate::delivery::Deliverer;
use crate::metrics::Metrics;
use crate::store::outbox::{Claim, CommandJob, OutboxItem};
use crate::store::{
    now_ms, ActionRecord, DynStore, Finish, HostRecord, Outcome, Policy, StoreResult,
};
use async_trait::async_trait;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Commands running at once: enough to replace a handful of hosts in parallel, few
/// enough that a burst does not fork a cloud CLI per host on the collector's machine.
const MAX_CONCURRENT_COMMANDS: usize = 4;

/// How much of a command's standard error is kept in the action log.
const STDERR_TAIL_BYTES: usize = 500;

/// How long to wait for the rest of standard error once the command exited (a child it
/// left behind may hold the pipe open).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// A command's claim on its outbox row outlasts its timeout by this much (time to kill
/// it and record its outcome): a replica that died while the command ran delays its
/// re-run by no more than the timeout and this.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// Carries out what follows a host's marking; cheap to clone.
#[derive(Clone)]
pub struct Actions {
    store: DynStore,
    policy: Arc<Policy>,
}

/// Runs the configured command for `command` rows of the outbox.
struct Runner {
    program: String,
    args: Vec<String>,
    timeout: Duration,
}

impl Actions {
    /// Spawns this replica's command worker (when `alerts.mark_command` is set) on the
    /// current tokio runtime (panics outside one). Commands are counted in the action
    /// log and the outbox's queue depth, not in metrics of their own.
    pub fn start(
        config: &CollectorConfig,
        store: DynStore,
        alerter: Alerter,
        _metrics: Arc<Metrics>,
    ) -> Actions {
        if let Some((program, args)) = config.alerts.mark_command.split_first() {
            let runner = Runner {
                program: program.clone(),
                args: args.to_vec(),
                // A timeout of 0 would kill every command before it starts.
                timeout: Duration::from_secs(config.alerts.command_timeout_secs.max(1)),
            };
            crate::delivery::spawn(
                Arc::clone(&store),
                crate::delivery::replica_id().to_string(),
                Arc::new(runner),
            );
        }
        Actions {
            store,
            policy: Arc::clone(alerter.policy()),
        }
    }

    /// Queues what follows a mark taken outside a decision (tools, tests): the
    /// `marked` alert and the mark command. A decision queues them itself, in its
    /// own transaction.
    pub async fn host_marked(&self, host: &HostRecord, reason: &str) -> StoreResult<()> {
        self.store
            .announce_mark(host.clone(), reason.to_string(), Arc::clone(&self.policy))
            .await
    }
}

#[async_trait]
impl Deliverer for Runner {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn concurrency(&self) -> usize {
        MAX_CONCURRENT_COMMANDS
    }

    fn claim_lease(&self) -> Duration {
        self.timeout + CLAIM_MARGIN
    }

    /// Runs the command once. A command that ran is final, whatever its exit status:
    /// re-running a terminate call is the automation's own decision. Only a command
    /// whose replica died while it ran is run again (by another replica, with the same
    /// `DRIFTWATCH_ACTION_ID`).
    async fn deliver(&self, claim: &Claim) -> Finish {
        let OutboxItem::Command(job) = &claim.item else {
            return Finish::Retry {
                at_ms: claim.give_up_ms,
                error: "not a command row".into(),
            };
        };
        let (outcome, detail) = match self.execute(job, &claim.idempotency_key).await {
            Ok(detail) => {
                tracing::info!(host_id = %job.host_id, program = %self.program, "Mark command completed.");
                (Outcome::Ok, detail)
            }
            Err(detail) => {
                tracing::error!(host_id = %job.host_id, program = %self.program, %detail, "The mark command failed; the host may not be replaced.");
                (Outcome::Failed, detail)
            }
        };
        Finish::Done(ActionRecord {
            id: 0,
            at_ms: now_ms(),
            host_id: Some(job.host_id.clone()),
            image_id: job.image_id.clone(),
            action: "command".to_string(),
            target: Some(self.program.clone()),
            outcome,
            detail,
        })
    }
}

impl Runner {
    /// Runs the command for one host; the sentence says how it ended.
    async fn execute(&self, job: &CommandJob, action_id: &str) -> Result<String, String> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env("DRIFTWATCH_HOST_ID", &job.host_id)
            .env("DRIFTWATCH_IMAGE_ID", job.image_id.as_deref().unwrap_or(""))
            .env("DRIFTWATCH_REASON", &job.reason)
            .env("DRIFTWATCH_HOSTNAME", &job.hostname)
            .env("DRIFTWATCH_ACTION_ID", action_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Also kills it should this task be dropped (runtime shutdown).
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", self.program))?;
        let mut stderr = child.stderr.take();
        let mut tail = Tail::default();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let status = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                Some(n) = read_some(&mut stderr, &mut buf) => tail.push(&buf[..n]),
                () = &mut deadline => break None,
            }
        };
        let status = match status {
            Some(status) => status,
            None => {
                // The program's own children are not killed: without a process group
                // API here, only the program itself is.
                if let Err(error) = child.kill().await {
                    tracing::warn!(%error, program = %self.program, "Cannot kill a timed-out mark command.");
                }
                return Err(format!(
                    "timed out after {} s and was killed{}",
                    self.timeout.as_secs(),
                    tail.render()
                ));
            }
        };
        // Collect what it wrote just before exiting.
        let _ = tokio::time::timeout(STDERR_GRACE, async {
            while let Some(n) = read_some(&mut stderr, &mut buf).await {
                tail.push(&buf[..n]);
            }
        })
        .await;
        match status {
            Ok(status) if status.success() => Ok(format!("{status}{}", tail.render())),
            Ok(status) => Err(format!("{status}{}", tail.render())),
            Err(error) => Err(format!("cannot wait for {}: {error}", self.program)),
        }
    }
}

/// Reads from the pipe while it is open: `Some(n)` bytes, or `None` at its end (or an
/// error), after which the pipe is dropped and never read again. Pending forever on a
/// closed pipe, so the caller's `select!` waits for the other branches.
async fn read_some(
    pipe: &mut Option<tokio::process::ChildStderr>,
    buf: &mut [u8],
) -> Option<usize> {
    let Some(reader) = pipe else {
        return std::future::pending().await;
    };
    match reader.read(buf).await {
        Ok(0) | Err(_) => {
            *pipe = None;
            None
        }
        Ok(n) => Some(n),
    }
}

/// The last [`STDERR_TAIL_BYTES`] bytes of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        let excess = self.0.len().saturating_sub(STDERR_TAIL_BYTES);
        self.0.drain(..excess);
    }

    /// `; stderr: …`, or nothing when it wrote nothing.
    fn render(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; stderr: {text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::tests::{
        config, fast_alerter, store_with_hosts, wait_for_actions, webhook, TestReceiver, IMAGE,
    };
    use crate::config::WebhookFormat;

    /// Starts the actions with this command (and a webhook for `marked` alerts, if
    /// given) on a store holding host `h1`; returns them with the store and `h1`.
    async fn setup(
        command: &[&str],
        timeout_secs: u64,
        webhook_url: Option<&str>,
    ) -> (Actions, DynStore, HostRecord) {
        let store = store_with_hosts(&["h1"]).await;
        let hooks = webhook_url
            .map(|url| webhook(url, WebhookFormat::Json, &["marked"]))
            .into_iter()
            .collect();
        let mut config = config(hooks);
        config.alerts.mark_command = command.iter().map(|s| s.to_string()).collect();
        config.alerts.command_timeout_secs = timeout_secs;
        let metrics = Arc::new(Metrics::new());
        let alerter = fast_alerter(&config, store.clone(), metrics.clone());
        let actions = Actions::start(&config, store.clone(), alerter, metrics);
        let host = store.host("h1").await.unwrap().unwrap();
        (actions, store, host)
    }

    #[tokio::test]
    async fn mark_command_gets_the_host_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let script = r#"printf '%s|%s|%s|%s' "$DRIFTWATCH_HOST_ID" "$DRIFTWATCH_IMAGE_ID" "$DRIFTWATCH_REASON" "$DRIFTWATCH_HOSTNAME" > "$0""#;
        let receiver = TestReceiver::start(&[]).await;
        let (actions, store, host) = setup(
            &["sh", "-c", script, out.to_str().unwrap()],
            10,
            Some(&receiver.url),
        )
        .await;
        actions
            .host_marked(&host, "critical finding: modified /usr/bin/ssh")
            .await
            .unwrap();

        let logged = wait_for_actions(&store, "command", 1).await;
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].outcome, "ok", "{}", logged[0].detail);
        assert_eq!(logged[0].target.as_deref(), Some("sh"));
        assert_eq!(logged[0].host_id.as_deref(), Some("h1"));
        assert_eq!(logged[0].image_id.as_deref(), Some(IMAGE));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "h1|img-1|critical finding: modified /usr/bin/ssh|h1.example"
        );

        let bodies = receiver.wait_for(1).await;
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["kind"], "marked");
        assert_eq!(bodies[0]["hosts"], serde_json::json!(["h1"]));
        assert_eq!(
            bodies[0]["text"],
            "[driftwatch] HIGH marked: 1 of 1 host of image img-1 was marked for replacement: \
             h1 (h1.example): critical finding: modified /usr/bin/ssh"
        );
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed() {
        let (actions, store, host) = setup(&["sleep", "30"], 1, None).await;
        let started = std::time::Instant::now();
        actions.host_marked(&host, "test").await.unwrap();
        let logged = wait_for_actions(&store, "command", 1).await;
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].outcome, "failed");
        assert_eq!(logged[0].detail, "timed out after 1 s and was killed");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_failing_command_keeps_the_end_of_its_stderr() {
        let script = "head -c 2000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; exit 3";
        let (actions, store, host) = setup(&["sh", "-c", script], 10, None).await;
        actions.host_marked(&host, "test").await.unwrap();
        let logged = wait_for_actions(&store, "command", 1).await;
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].outcome, "failed");
        let detail = &logged[0].detail;
        assert!(
            detail.starts_with("exit status: 3; stderr: xxx"),
            "{detail}"
        );
        assert!(detail.ends_with("x the end"), "{detail}");
        assert!(detail.len() < STDERR_TAIL_BYTES + 50, "{detail}");
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_logged() {
        let (actions, store, host) = setup(&["/nonexistent/terminate-instance"], 10, None).await;
        actions.host_marked(&host, "test").await.unwrap();
        let logged = wait_for_actions(&store, "command", 1).await;
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].outcome, "failed");
        assert!(
            logged[0]
                .detail
                .starts_with("could not start /nonexistent/terminate-instance: "),
            "{}",
            logged[0].detail
        );
    }
}
