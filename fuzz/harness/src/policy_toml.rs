//! The scan policy (`policy.toml`), parsed and compiled as `--policy` does.

use driftwatch_agent::policy::Policy;

/// Runs the `policy_toml` target on one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text) {
        // The compiled rules must answer for any path without panicking.
        for path in [&b"/"[..], b"/etc/passwd", b"/usr/lib/x/../y", b"/var//log/"] {
            let state = policy.state_for(path);
            let _ = policy.rule(&state);
            let _ = policy.in_scope(path);
            let _ = policy.may_include_below(path);
        }
    }
}
