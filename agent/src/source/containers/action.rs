//! "Replace, don't repair" for containers: a local command per finding severity,
//! run once per container with the container's identity in its environment, so that
//! the orchestrator recreates the container from its image (`docker rm -f`,
//! `podman rm -f`, `kubectl delete pod`). Without one (the default) drift is only
//! reported. Configured in the agent configuration's `[containers]` section.

use driftwatch_protocol::report::{ContainerRef, Finding, Severity};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use tracing::{error, info};

/// `[containers]` in the agent configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// A command (program and arguments, no shell unless you name one) per severity:
    /// a container with a new finding of that severity has it run once.
    #[serde(default)]
    pub actions: BTreeMap<Severity, Vec<String>>,
}

/// The environment a container action runs with.
pub fn environment(container: &ContainerRef, severity: Severity) -> Vec<(&'static str, String)> {
    let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        ("DRIFTWATCH_CONTAINER_ID", container.id.clone()),
        ("DRIFTWATCH_CONTAINER_NAME", or_empty(&container.name)),
        ("DRIFTWATCH_CONTAINER_RUNTIME", container.runtime.clone()),
        ("DRIFTWATCH_CONTAINER_IMAGE", or_empty(&container.image)),
        ("DRIFTWATCH_POD", or_empty(&container.pod)),
        ("DRIFTWATCH_NAMESPACE", or_empty(&container.namespace)),
        ("DRIFTWATCH_SEVERITY", severity.name().to_string()),
    ]
}

/// Runs the configured actions for new findings; each (container, severity) at most
/// once per daemon run.
#[derive(Debug, Default)]
pub struct Actions {
    done: HashSet<(String, Severity)>,
}

impl Actions {
    /// Runs what `config` asks for the containers named in `findings`.
    pub async fn run(&mut self, config: &ActionsConfig, findings: &[Finding]) {
        if config.actions.is_empty() {
            return;
        }
        let mut due: BTreeMap<(String, Severity), &ContainerRef> = BTreeMap::new();
        for finding in findings {
            if let Some(container) = finding.container() {
                let key = (container.id.clone(), finding.severity());
                if config.actions.contains_key(&key.1) && !self.done.contains(&key) {
                    due.insert(key, container);
                }
            }
        }
        for ((id, severity), container) in due {
            let Some((program, args)) = config.actions[&severity].split_first() else {
                continue;
            };
            self.done.insert((id.clone(), severity));
            let outcome = tokio::process::Command::new(program)
                .args(args)
                .envs(environment(container, severity))
                .status()
                .await;
            match outcome {
                Ok(status) if status.success() => {
                    info!(program, container = %id, "Container action succeeded.")
                }
                Ok(status) => {
                    error!(program, container = %id, status = %status, "Container action failed.")
                }
                Err(err) => {
                    error!(program, container = %id, error = %err, "Cannot run the container action.")
                }
            }
        }
    }
}
