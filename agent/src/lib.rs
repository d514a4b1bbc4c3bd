//! `driftwatch-agent` as a library: the modules behind the `driftwatch` binary.
//!
//! The agent is a small pipeline: **sources** observe the host ([`source::files`]: the
//! scan engine), **diff** compares observations with the image's baseline
//! ([`diff`], graded by [`policy`]), and **sinks** deliver the findings
//! ([`sink::report`]: text and `driftwatch.report/v1` JSON). `baseline create` runs the
//! same scan into a [`baseline`] file instead of a diff; [`daemon`] schedules the same
//! pipeline on a host.
//!
//! Modules import only from layers below them, never upward and never in a cycle:
//!
//! 1. [`host`], [`cli`], [`logging`]: small helpers with no agent imports (time, retry
//!    waits, error chains and random ids come from `driftwatch_protocol`);
//! 2. [`config`] (`agent.toml`) and [`policy`] (with [`policy::runtime`]);
//! 3. the sources ([`source`]), [`diff`], [`watch`] and the sinks ([`sink`]), which
//!    depend on configuration only (the reporter shows its state through the
//!    [`sink::collector::StatusBoard`] trait, not through the daemon);
//! 4. [`error`], which wraps the errors of the layers below;
//! 5. [`baseline`], [`attribution`] and [`pipeline`]; then [`command`] and [`daemon`], which run it.
//!
//! The binary (`src/main.rs`) only parses the command line and maps the outcome to an
//! exit status; the library exists so that the fuzz targets and benchmarks can drive the
//! parsers of hostile input (baselines, package databases, the spool, configs) directly.

pub mod attribution;
pub mod baseline;
pub mod cli;
pub mod command;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod error;
pub mod host;
pub mod logging;
pub mod pipeline;
pub mod policy;
pub mod sink;
pub mod source;
pub mod watch;
