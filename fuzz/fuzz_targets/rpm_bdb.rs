//! A BerkeleyDB `Packages` file (EL7/EL8 rpm databases): its pages walked for records,
//! each record read as a header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::rpm_bdb::run(data));
