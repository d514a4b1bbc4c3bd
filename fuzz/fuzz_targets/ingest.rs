//! The collector's ingest decoder: `Content-Encoding` (gzip or none) within the decoded
//! size bound, then the batch JSON and its checks, as `POST /v1/ingest` runs them for an
//! authenticated host. The first byte picks the encoding; small bounds let the fuzzer
//! reach them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::ingest::run(data));
