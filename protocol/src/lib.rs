//! The vocabulary shared by the driftwatch agent and collector.
//!
//! driftwatch records, at image bake time, a signed *baseline* of an image's files and
//! compares live hosts with it. Both sides of that loop — the agent that writes and reads
//! baselines and the collector that registers and verifies them — must agree byte for
//! byte on what a baseline is, how it is digested and signed, and what a report says.
//! That agreement lives here, and only here.
//!
//! Read first:
//! - [`Entry`]: one filesystem object as recorded (type, mode, owner, hashes, xattrs…).
//! - [`baseline`]: the on-disk baseline format — deterministic, sorted, indexed, sealed
//!   with a BLAKE3 digest and an optional ed25519 signature.
//! - [`report::Report`]: the `driftwatch.report/v1` JSON document that `check` prints.
//!
//! This crate does no filesystem walking and no network I/O; it reads baselines through
//! the small [`baseline::ReadAt`] trait so that the agent can read from a file and the
//! collector from an uploaded buffer. Besides the vocabulary it holds the few helpers
//! both sides need the same way: [`time`] (RFC 3339), [`backoff`] (retry waits),
//! [`errors`] (an error and its causes on one line) and [`random`] (tokens and jitter,
//! the only host facility used here).
#![deny(missing_docs)]

pub mod backoff;
pub mod baseline;
pub mod codec;
pub mod entry;
pub mod errors;
pub mod package;
pub mod path;
pub mod random;
pub mod report;
pub mod runtime;
pub mod sign;
pub mod time;
pub mod wire;

pub use entry::{Entry, FileType, Timestamp};
