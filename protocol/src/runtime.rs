//! Runtime state recorded in a baseline.

use serde::{Deserialize, Serialize};

/// A listening socket seen when the baseline was made with `--capture-runtime` (for
/// images baked on a running builder): listeners like it are allowed on hosts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CapturedListener {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub protocol: String,
    /// Local address (`0.0.0.0`, `::`, `127.0.0.1`…).
    pub address: String,
    /// Local port.
    pub port: u16,
    /// The owning executable, when it could be read.
    pub program: Option<String>,
}

/// Runtime state accepted at bake time with `baseline create --capture-runtime`, for
/// images baked on a running builder and platforms that run their own agents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedRuntime {
    /// Listeners seen; listeners like them are allowed on hosts.
    pub listeners: Vec<CapturedListener>,
    /// Executables of processes that no baseline can explain (deleted or memory-backed
    /// executables, executables in mutable paths) seen running; processes running them
    /// are not reported. Spelled as reports spell `exe`.
    pub executables: Vec<String>,
}
