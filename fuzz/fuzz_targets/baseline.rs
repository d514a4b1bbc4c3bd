//! The baseline decoder: seal, signature and structure (`driftwatch_protocol::baseline`).
//!
//! A random file almost never carries a matching BLAKE3 digest, so the first byte picks
//! what the rest is: a whole file as found on disk; content that is sealed here (as an
//! attacker who rewrites an unsigned baseline can); content signed with a key the
//! reader trusts; or content with a seal whose key and signature are the input's own.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::baseline::run(data));
