//! The spool as the daemon opens it after a crash: `acked.json` and a segment file are
//! the input (split at the first NUL byte; without one, all of it is the segment), and
//! the real `Spool::open` reads, repairs and resumes them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| driftwatch_fuzz_harness::spool::run(data));
