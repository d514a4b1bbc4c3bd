//! One way to write a timestamp: RFC 3339, UTC, to the second — in reports, wire
//! events, the collector's API and its tables alike, so that the same instant always
//! reads the same.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as RFC 3339 (UTC, seconds): `2026-01-01T00:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Milliseconds since the epoch as [`rfc3339`]; instants before the epoch (never
/// written by driftwatch, but a hostile row may hold one) read as the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_read_to_the_second_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_767_225_600_999), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00Z");
        assert!(now_rfc3339().ends_with('Z'));
    }
}
