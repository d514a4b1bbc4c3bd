//! Timestamps as every output of the agent writes them: RFC 3339, to the second, UTC.

use std::time::SystemTime;

/// RFC 3339, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Now, as [`rfc3339`].
pub fn now() -> String {
    rfc3339(SystemTime::now())
}
