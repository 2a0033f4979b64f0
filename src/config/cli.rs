//! TorchServe's command line (`torchserve --start ...`), accepted as is.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "ferroserve",
    version,
    about = "A drop-in replacement for TorchServe 0.12: same APIs, same archives, native execution."
)]
pub struct Cli {
    /// Start the model server (the default action).
    #[arg(long, conflicts_with = "stop")]
    pub start: bool,
    /// Stop the model server started earlier (its PID file is read).
    #[arg(long)]
    pub stop: bool,
    /// Stay in the foreground instead of detaching.
    #[arg(long)]
    pub foreground: bool,
    /// Model store directory (`model_store`).
    #[arg(long = "model-store", alias = "model_store")]
    pub model_store: Option<PathBuf>,
    /// Configuration file (`TS_CONFIG_FILE` wins over this, as in TorchServe).
    #[arg(long = "ts-config", alias = "ts-config-file", short = 'f')]
    pub ts_config: Option<PathBuf>,
    /// Models to load at start-up: `all`, or `[name=]archive` entries.
    #[arg(long, num_args = 1.., value_delimiter = ' ')]
    pub models: Vec<String>,
    /// Workflow store directory (`workflow_store`; the model store when unset).
    #[arg(long = "workflow-store")]
    pub workflow_store: Option<PathBuf>,
    /// log4j2 configuration (accepted and ignored: ferroserve logs through `RUST_LOG`).
    #[arg(long = "log-config")]
    pub log_config: Option<PathBuf>,
    /// C++ backend log configuration (accepted and ignored).
    #[arg(long = "cpp-log-config")]
    pub cpp_log_config: Option<PathBuf>,
    /// Do not write or read configuration snapshots.
    #[arg(long = "ncs", alias = "no-config-snapshots")]
    pub no_config_snapshots: bool,
    /// Disable token authorization.
    #[arg(long = "disable-token-auth", alias = "dt")]
    pub disable_token_auth: bool,
    /// Allow registering and unregistering models through the management API.
    #[arg(long = "enable-model-api")]
    pub enable_model_api: bool,
    /// Python interpreter for custom Python handlers (needs `pip install torchserve==0.12.0`).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Plugins path: refused (Java plugins cannot be loaded), as `plugins_path` is.
    #[arg(long = "plugins-path", alias = "ppath")]
    pub plugins_path: Option<PathBuf>,
}
