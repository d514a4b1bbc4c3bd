//! Alpine's `lib/apk/db/installed`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::apk::run(data));
