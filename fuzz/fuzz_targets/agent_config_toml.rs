//! The agent's configuration (`/etc/driftwatch/agent.toml`), parsed and validated as
//! the daemon loads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::agent_config_toml::run(data));
