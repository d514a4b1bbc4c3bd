//! A BerkeleyDB `Packages` file (EL7/EL8 rpm databases): its pages walked for records,
//! each record read as a header.

use driftwatch_agent::source::packages::rpm;

/// Runs the `rpm_bdb` target on one input.
pub fn run(data: &[u8]) {
    if let Ok(records) = rpm::read_berkeley_db(data) {
        for (_, blob) in records {
            let _ = rpm::read_header(&blob);
        }
    }
}
