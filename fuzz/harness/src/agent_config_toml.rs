//! The agent's configuration (`/etc/driftwatch/agent.toml`), parsed and validated as
//! the daemon loads it.

use driftwatch_agent::config::AgentConfig;
use std::path::Path;

/// Runs the `agent_config_toml` target on one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = AgentConfig::parse(text, Path::new("agent.toml"));
}
