//! `POST /v1/enroll` from an unauthenticated client: the request JSON, the host id and
//! the certificate signing request, signed by a real CA as the handler does (the token
//! check in between compares a hash and parses nothing).
//!
//! The first byte picks the input: a whole request (JSON), a CSR as PEM text, or a
//! CSR's DER bytes (wrapped in PEM here, so that the fuzzer mutates the ASN.1 itself).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::enroll::run(data));
