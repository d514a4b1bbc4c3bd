//! One rpm header blob (as both rpm database backends store it), read into its package
//! and files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::rpm_header::run(data));
