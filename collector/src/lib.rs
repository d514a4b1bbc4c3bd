//! The driftwatch collector: where a fleet's drift comes together and turns into
//! replacements.
//!
//! Agents on every host report findings and heartbeats over mutual TLS ([`api::ingest`]);
//! the collector stores them durably ([`store`]), keeps each host's lifecycle
//! (`clean` → `drifted` → `marked` → `gone`, or `silent`), checks every host against the
//! baseline its image was registered with, and decides — by policy and within a budget
//! per image — which hosts to mark for replacement ([`fleet`]). A marked host learns it
//! in the answer to its next report and fails its own health check; webhooks and a
//! command carry the decision to autoscalers and people ([`actions`], [`alerts`]).
//!
//! Read first: [`app::app`] (the router), [`fleet::Fleet`] (the decisions), and
//! [`store::Store`] (what is kept).

pub mod actions;
pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod delivery;
pub mod error;
pub mod fleet;
pub mod identity;
pub mod leases;
pub mod limiter;
pub mod metrics;
pub mod pki;
pub mod store;
pub mod tls;
pub mod ui;
