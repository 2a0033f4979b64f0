//! ferroserve: a drop-in replacement for TorchServe 0.12.

pub mod api;
pub mod archive;
pub mod auth;
pub mod backend;
pub mod batching;
pub mod canary;
pub mod config;
pub mod device;
pub mod drift;
pub mod error;
pub mod fetch;
pub mod handler;
pub mod lifecycle;
pub mod loader;
pub mod logging;
pub mod metrics;
pub mod registry;
pub mod serve;
pub mod signal;
pub mod snapshot;
pub mod startup;
pub mod worker;
pub mod workflow;
