//! The scan policy (`policy.toml`), parsed and compiled as `--policy` does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::policy_toml::run(data));
