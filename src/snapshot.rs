//! Writing configuration snapshots of a running server (`startup`, `snapshot` after every
//! management change, `shutdown`); the format is `config::snapshot`'s.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::snapshot::{ModelSnapshot, SnapshotVersion};
use crate::registry::canaries::Canaries;
use crate::registry::Registry;

/// Writes snapshots for a running server.
pub struct Snapshots {
    pub dir: PathBuf,
    /// The effective configuration file's properties (`model_snapshot` is replaced).
    pub properties: BTreeMap<String, String>,
}

impl Snapshots {
    pub fn write(&self, kind: &str, registry: &Registry, canaries: &Canaries) {
        if let Err(e) = self.try_write(kind, registry, canaries) {
            tracing::error!(
                "cannot write the {kind} snapshot into {}: {e}",
                self.dir.display()
            );
        }
    }

    fn try_write(
        &self,
        kind: &str,
        registry: &Registry,
        canaries: &Canaries,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let now = chrono::Local::now();
        let name = format!("{}-{kind}.cfg", now.format("%Y%m%d%H%M%S%3f"));
        let mut models: BTreeMap<String, BTreeMap<String, SnapshotVersion>> = BTreeMap::new();
        let mut count = 0;
        for (model, default, versions) in registry.snapshot_view() {
            // Workflows are not snapshotted (as TorchServe), nor are their nodes' models.
            for m in versions.into_iter().filter(|m| m.workflow.is_none()) {
                let (min, max) = m.pool.limits();
                count += 1;
                models.entry(model.clone()).or_default().insert(
                    m.version.clone(),
                    SnapshotVersion {
                        default_version: m.version == default,
                        mar_name: m.url().rsplit('/').next().unwrap_or(m.url()).to_string(),
                        min_workers: min,
                        max_workers: max,
                        batch_size: m.params.batch_size,
                        max_batch_delay: m.params.max_batch_delay_ms,
                        response_timeout: m.params.response_timeout_s,
                        startup_timeout: m.params.startup_timeout_s,
                        runtime_type: Some(m.runtime.clone()),
                        drift_reference: m
                            .drift
                            .as_ref()
                            .and_then(|d| d.kept_reference())
                            .and_then(|r| serde_json::to_value(r).ok()),
                    },
                );
            }
        }
        let snapshot = ModelSnapshot {
            name: name.clone(),
            model_count: count,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            models,
            canaries: canaries.specs(),
        };
        let mut props: std::collections::HashMap<String, String> =
            self.properties.clone().into_iter().collect();
        props.insert(
            "model_snapshot".into(),
            serde_json::to_string_pretty(&snapshot).expect("snapshot serializes"),
        );
        let path = self.dir.join(&name);
        let mut out = Vec::new();
        {
            let mut w = java_properties::PropertiesWriter::new(&mut out);
            w.write_comment("Saving snapshot")
                .map_err(std::io::Error::other)?;
            w.write_comment(&now.to_rfc2822())
                .map_err(std::io::Error::other)?;
            let mut keys: Vec<_> = props.keys().cloned().collect();
            keys.sort();
            for k in keys {
                w.write(&k, &props[&k]).map_err(std::io::Error::other)?;
            }
            w.finish().map_err(std::io::Error::other)?;
        }
        std::fs::write(&path, out)?;
        tracing::info!("{kind} snapshot written: {}", path.display());
        Ok(path)
    }
}
