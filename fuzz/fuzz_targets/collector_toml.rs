//! The collector's configuration (`collector.toml`), parsed, resolved and validated as
//! `driftwatch-collector` loads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::collector_toml::run(data));
