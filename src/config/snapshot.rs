//! The `model_snapshot` document, as TorchServe writes and restores it, and where snapshots
//! are found: `${LOG_LOCATION:-logs}/config/<yyyyMMddHHmmssSSS>-<startup|snapshot|shutdown>.cfg`.
//! At start, without a named config file, the newest snapshot is the configuration; a
//! `model_snapshot` key (from a snapshot or a user's file, as KServe's) replaces `load_models`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One version in `model_snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotVersion {
    pub default_version: bool,
    pub mar_name: String,
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: u64,
    #[serde(default = "default_timeout")]
    pub response_timeout: u64,
    #[serde(default = "default_timeout")]
    pub startup_timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_type: Option<String>,
    /// A drift reference captured from traffic (ferroserve's addition; TorchServe ignores
    /// the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_reference: Option<serde_json::Value>,
}

fn default_timeout() -> u64 {
    120
}

/// The `model_snapshot` document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSnapshot {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub model_count: usize,
    #[serde(default)]
    pub created: u128,
    pub models: BTreeMap<String, BTreeMap<String, SnapshotVersion>>,
    /// Traffic splits by model (ferroserve's addition; TorchServe ignores the key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub canaries: BTreeMap<String, crate::canary::SplitSpec>,
}

/// `${LOG_LOCATION:-logs}/config`.
pub fn directory(env_log_location: Option<&str>) -> PathBuf {
    Path::new(env_log_location.unwrap_or("logs")).join("config")
}

/// The newest snapshot file, by the timestamp its name starts with.
pub fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let stamp: u64 = name.split('-').next()?.parse().ok()?;
            name.ends_with(".cfg").then_some((stamp, e.path()))
        })
        .max_by_key(|(stamp, _)| *stamp)
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_by_timestamp_and_snapshot_json() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "20260101000000000-startup.cfg",
            "20260102000000000-snapshot.cfg",
            "junk.cfg",
            "20270101000000000-x.txt",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        assert_eq!(
            newest(dir.path()).unwrap().file_name().unwrap(),
            "20260102000000000-snapshot.cfg"
        );
        let json = r#"{"name": "s", "modelCount": 1, "created": 1, "models": {"m": {"1.0": {"defaultVersion": true, "marName": "m.mar", "minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 50}}}}"#;
        let s: ModelSnapshot = serde_json::from_str(json).unwrap();
        let v = &s.models["m"]["1.0"];
        assert_eq!(
            (v.max_workers, v.batch_size, v.response_timeout),
            (2, 4, 120)
        );
    }
}
