//! Sinks deliver results: reports for people and machines, progress on a terminal,
//! and findings to the collector (through a durable spool).

pub mod collector;
pub mod progress;
pub mod renew;
pub mod report;
pub mod spool;
