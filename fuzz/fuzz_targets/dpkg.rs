//! dpkg's database: the status file (packages and their conffiles), `info/*.md5sums`
//! and `diversions`. The first byte picks the file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::dpkg::run(data));
