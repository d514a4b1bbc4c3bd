//! dpkg's database: the status file (packages and their conffiles), `info/*.md5sums`
//! and `diversions`. The first byte picks the file.

use driftwatch_agent::source::packages::dpkg;

/// Runs the `dpkg` target on one input.
pub fn run(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = dpkg::parse_status(bytes);
            let _ = dpkg::status_conffiles(bytes);
        }
        1 => {
            let _ = dpkg::parse_md5sums(bytes);
        }
        _ => {
            let _ = dpkg::parse_diversions(bytes);
        }
    }
}
