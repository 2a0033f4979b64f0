//! Every registered model by name and version: which version is the default, which split
//! routes between them. The map is here; split administration is `canaries`' (over the map's
//! narrow `update`), loading is `crate::loader`'s, supervision and draining
//! `crate::lifecycle`'s.

pub mod canaries;
pub mod params;
pub mod version;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use crate::error::ServeError;
pub use params::{ModelParams, Registration};
pub use version::{ModelVersion, SharedSplit};

/// A model: its versions, the default one, and the split between them.
pub struct Model {
    default: String,
    versions: BTreeMap<String, Arc<ModelVersion>>,
    split: Option<SharedSplit>,
}

impl Model {
    pub fn default_version(&self) -> &str {
        &self.default
    }

    pub fn has_version(&self, version: &str) -> bool {
        self.versions.contains_key(version)
    }

    pub fn split(&self) -> Option<&SharedSplit> {
        self.split.as_ref()
    }

    /// Replaces the split; the old one is returned.
    pub fn replace_split(&mut self, split: Option<SharedSplit>) -> Option<SharedSplit> {
        std::mem::replace(&mut self.split, split)
    }

    /// Makes `version` (which must exist) the default; the old default is returned.
    pub fn make_default(&mut self, version: &str) -> String {
        let old = std::mem::replace(&mut self.default, version.to_string());
        // The new default cannot also be a canary of itself.
        self.leave_split(version);
        old
    }

    /// Takes `version` out of the split (gone, or now the default); an empty split goes.
    fn leave_split(&mut self, version: &str) {
        let Some(split) = &self.split else { return };
        let mut s = split.lock().expect("split lock");
        s.drop_version(version);
        let empty = s.is_empty();
        drop(s);
        if empty {
            self.split = None;
        }
    }
}

/// Where a request goes: its version, the split that chose it, and a shadow copy's version.
pub struct Routed {
    pub version: Arc<ModelVersion>,
    pub split: Option<SharedSplit>,
    pub shadow: Option<Arc<ModelVersion>>,
}

/// Every registered model. Lookups take a read lock; (un)registration is rare.
pub struct Registry {
    models: RwLock<BTreeMap<String, Model>>,
    next_worker_id: AtomicU32,
}

impl Registry {
    pub fn new(first_worker_id: u32) -> Self {
        Self {
            models: RwLock::new(BTreeMap::new()),
            next_worker_id: AtomicU32::new(first_worker_id),
        }
    }

    /// The requested version, or the default one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, ServeError> {
        let models = self.models.read().expect("registry lock");
        let model = models
            .get(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        let v = version.unwrap_or(&model.default);
        model
            .versions
            .get(v)
            .cloned()
            .ok_or_else(|| ServeError::version_not_found(name, v))
    }

    /// An inference request's version: the named one, else the split's choice for `key` (the
    /// routing key), else the default.
    pub fn route(
        &self,
        name: &str,
        version: Option<&str>,
        key: Option<&str>,
    ) -> Result<Routed, ServeError> {
        let models = self.models.read().expect("registry lock");
        let model = models
            .get(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        let find = |v: &str| {
            model
                .versions
                .get(v)
                .cloned()
                .ok_or_else(|| ServeError::version_not_found(name, v))
        };
        let (Some(split), None) = (&model.split, version) else {
            return Ok(Routed {
                version: find(version.unwrap_or(&model.default))?,
                split: None,
                shadow: None,
            });
        };
        let route = split.lock().expect("split lock").route(key);
        Ok(Routed {
            version: find(route.version.as_deref().unwrap_or(&model.default))?,
            split: Some(split.clone()),
            shadow: route.shadow.and_then(|v| model.versions.get(&v).cloned()),
        })
    }

    /// Runs `f` on a model under the read lock.
    pub fn inspect<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Model) -> Result<T, ServeError>,
    ) -> Result<T, ServeError> {
        let models = self.models.read().expect("registry lock");
        let model = models
            .get(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        f(model)
    }

    /// Runs `f` on a model under the write lock (split administration).
    pub fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Model) -> Result<T, ServeError>,
    ) -> Result<T, ServeError> {
        let mut models = self.models.write().expect("registry lock");
        let model = models
            .get_mut(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        f(model)
    }

    /// Every model's split, with its default version.
    pub fn splits(&self) -> Vec<(String, String, SharedSplit)> {
        let models = self.models.read().expect("registry lock");
        models
            .iter()
            .filter_map(|(n, m)| Some((n.clone(), m.default.clone(), m.split.clone()?)))
            .collect()
    }

    /// A fresh worker id (TorchServe numbers workers like ports, from `initial_worker_port`).
    pub fn next_worker_id(&self) -> u32 {
        self.next_worker_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Every loaded version of every model.
    pub fn all(&self) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read().expect("registry lock");
        models
            .values()
            .flat_map(|m| m.versions.values().cloned())
            .collect()
    }

    /// Every model with its default version and all its versions, for snapshots.
    pub fn snapshot_view(&self) -> Vec<(String, String, Vec<Arc<ModelVersion>>)> {
        let models = self.models.read().expect("registry lock");
        models
            .iter()
            .map(|(name, m)| {
                (
                    name.clone(),
                    m.default.clone(),
                    m.versions.values().cloned().collect(),
                )
            })
            .collect()
    }

    /// Every version of a model (default first).
    pub fn all_versions(&self, name: &str) -> Result<Vec<Arc<ModelVersion>>, ServeError> {
        let models = self.models.read().expect("registry lock");
        let model = models
            .get(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        let mut all: Vec<_> = model.versions.values().cloned().collect();
        all.sort_by_key(|m| m.version != model.default);
        Ok(all)
    }

    /// Default versions, sorted by name.
    pub fn defaults(&self) -> Vec<Arc<ModelVersion>> {
        let models = self.models.read().expect("registry lock");
        models
            .values()
            .filter_map(|m| m.versions.get(&m.default).cloned())
            .collect()
    }

    /// Adds a loaded version (the default when it is the model's first); a version already
    /// there is a conflict, as in TorchServe.
    pub fn insert(&self, version: ModelVersion) -> Result<Arc<ModelVersion>, ServeError> {
        let mut models = self.models.write().expect("registry lock");
        let model = models.entry(version.name.clone()).or_insert_with(|| Model {
            default: version.version.clone(),
            versions: BTreeMap::new(),
            split: None,
        });
        if model.versions.contains_key(&version.version) {
            return Err(ServeError::Conflict(format!(
                "Model version {} is already registered for model {}",
                version.version, version.name
            )));
        }
        let version = Arc::new(version);
        model
            .versions
            .insert(version.version.clone(), version.clone());
        Ok(version)
    }

    /// Takes a version out (the default one when none is named): no new request reaches it.
    /// The default version cannot go while others remain, as in TorchServe.
    pub fn remove(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ModelVersion>, ServeError> {
        let mut models = self.models.write().expect("registry lock");
        let model = models
            .get_mut(name)
            .ok_or_else(|| ServeError::model_not_found(name))?;
        let v = version.unwrap_or(&model.default).to_string();
        if !model.versions.contains_key(&v) {
            return Err(ServeError::version_not_found(name, &v));
        }
        if v == model.default && model.versions.len() > 1 {
            return Err(ServeError::DefaultVersionInUse(name.to_string()));
        }
        let removed = model.versions.remove(&v).expect("checked above");
        model.leave_split(&v);
        if model.versions.is_empty() {
            models.remove(name);
        }
        Ok(removed)
    }

    pub fn set_default(&self, name: &str, version: &str) -> Result<(), ServeError> {
        self.update(name, |model| {
            if !model.has_version(version) {
                return Err(ServeError::DefaultVersionNotFound {
                    model: name.to_string(),
                    version: version.to_string(),
                });
            }
            model.make_default(version);
            Ok(())
        })
    }
}
