//! What each fuzz target does with one input, kept apart from libFuzzer so that the
//! same code runs in two places: the cargo-fuzz targets in `fuzz/fuzz_targets/`
//! (nightly, coverage-guided) and `tests/replay.rs`, which replays every committed
//! corpus file on the stable toolchain under `cargo test` — so an input that once
//! crashed a parser stays a test even where no nightly toolchain is installed.
//!
//! Every target feeds hostile bytes to the real parser: bytes-level entry points that
//! the path-based readers call themselves. Nothing here may panic, hang or allocate
//! without bound on any input; that is what is being tested.

pub mod agent_config_toml;
pub mod apk;
pub mod baseline;
pub mod collector_toml;
pub mod dpkg;
pub mod enroll;
pub mod hash_cache;
pub mod ingest;
pub mod policy_toml;
pub mod rpm_bdb;
pub mod rpm_header;
pub mod spool;

/// A target's name (its directory in `fuzz/corpus/` and its binary) and its run.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("agent_config_toml", agent_config_toml::run),
    ("apk", apk::run),
    ("baseline", baseline::run),
    ("collector_toml", collector_toml::run),
    ("dpkg", dpkg::run),
    ("enroll", enroll::run),
    ("hash_cache", hash_cache::run),
    ("ingest", ingest::run),
    ("policy_toml", policy_toml::run),
    ("rpm_bdb", rpm_bdb::run),
    ("rpm_header", rpm_header::run),
    ("spool", spool::run),
];
