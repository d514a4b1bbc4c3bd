//! One rpm header blob (as both rpm database backends store it), read into its package
//! and files.

use driftwatch_agent::source::packages::rpm;

/// Runs the `rpm_header` target on one input.
pub fn run(data: &[u8]) {
    let _ = rpm::read_header(data);
}
