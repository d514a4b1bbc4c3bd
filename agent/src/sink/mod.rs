//! Sinks deliver results: reports for people and machines, and progress on a terminal.

pub mod progress;
pub mod report;
