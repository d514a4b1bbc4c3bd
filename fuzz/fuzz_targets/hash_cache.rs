//! The daemon's hash cache (`state_dir/hash-cache`). The first byte picks a file as
//! found, or records sealed here (a forged cache with a valid digest).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::hash_cache::run(data));
