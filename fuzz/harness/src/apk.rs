//! Alpine's `lib/apk/db/installed`.

use driftwatch_agent::source::packages::apk;

/// Runs the `apk` target on one input.
pub fn run(data: &[u8]) {
    let _ = apk::parse_installed(data);
}
