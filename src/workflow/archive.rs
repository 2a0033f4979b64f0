//! Workflow archives (`.war`, made by `torch-workflow-archiver`): a zip of the spec, the
//! handler file and `WAR-INF/MANIFEST.json`, extracted with the same limits as `.mar` files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::WorkflowError;
use crate::archive::{extract_zip, extraction_dir, read_small_file, safe_join};

const MANIFEST: &str = "WAR-INF/MANIFEST.json";
/// A spec is a few dozen lines; a large one is an attack on the YAML parser.
const MAX_SPEC: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub created_on: Option<String>,
    pub description: Option<String>,
    pub archiver_version: Option<String>,
    /// Absent means empty (so the name check speaks); only an explicit `null` is missing.
    #[serde(default = "empty_workflow")]
    pub workflow: Option<ManifestWorkflow>,
}

fn empty_workflow() -> Option<ManifestWorkflow> {
    Some(ManifestWorkflow::default())
}

/// A missing manifest reads as an empty one, as in TorchServe.
impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            created_on: None,
            description: None,
            archiver_version: None,
            workflow: empty_workflow(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestWorkflow {
    pub workflow_name: Option<String>,
    pub spec_file: Option<String>,
    pub handler: Option<String>,
}

/// An extracted workflow archive.
#[derive(Debug)]
pub struct WorkflowArchive {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The extraction directory, shared with the function nodes' models.
    pub extracted: Arc<tempfile::TempDir>,
}

impl WorkflowArchive {
    /// Extracts `entry` (a file of the workflow store) and checks its manifest as TorchServe
    /// does; `name` overrides the manifest's workflow name.
    pub fn open(
        store: &Path,
        entry: &str,
        name: Option<&str>,
        max_size: u64,
    ) -> Result<Self, WorkflowError> {
        let file = store.join(entry);
        if !file.is_file() {
            return Err(WorkflowError::NotFound(format!(
                "Workflow not found in workflow store: {entry}"
            )));
        }
        let tmp = extraction_dir().map_err(|e| WorkflowError::Io(e.to_string()))?;
        extract_zip(&file, tmp.path(), max_size)
            .map_err(|e| WorkflowError::Invalid(e.to_string()))?;
        let manifest = match std::fs::read_to_string(tmp.path().join(MANIFEST)) {
            Ok(text) => serde_json::from_str::<Manifest>(&text)
                .map_err(|e| WorkflowError::Invalid(format!("Failed to parse {MANIFEST}: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(WorkflowError::Io(e.to_string())),
        };
        let invalid = |m: &str| WorkflowError::Invalid(m.to_string());
        let workflow = manifest
            .workflow
            .as_ref()
            .ok_or_else(|| invalid("Missing Workflow entry in manifest file."))?;
        let name = name
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .or_else(|| workflow.workflow_name.clone())
            .ok_or_else(|| invalid("Workflow name is not defined."))?;
        if manifest.archiver_version.is_none() {
            return Err(invalid("Workflow archive version is not defined."));
        }
        if manifest.created_on.is_none() {
            return Err(invalid("Workflow archive createdOn is not defined."));
        }
        Ok(WorkflowArchive {
            name,
            dir: tmp.path().to_path_buf(),
            manifest,
            extracted: Arc::new(tmp),
        })
    }

    fn workflow(&self) -> ManifestWorkflow {
        self.manifest.workflow.clone().unwrap_or_default()
    }

    /// The spec file's text.
    pub fn spec(&self) -> Result<String, WorkflowError> {
        let file = self
            .workflow()
            .spec_file
            .ok_or_else(|| WorkflowError::Invalid("The manifest names no specFile.".into()))?;
        read_small_file(&self.dir, &file, MAX_SPEC)
            .map_err(|e| WorkflowError::Invalid(format!("Spec file {file}: {e}.")))
    }

    /// The handler file, checked to be in the archive (function nodes need it).
    pub fn handler(&self) -> Result<PathBuf, WorkflowError> {
        let file = self
            .workflow()
            .handler
            .ok_or_else(|| WorkflowError::Invalid("The manifest names no handler.".into()))?;
        let path = safe_join(&self.dir, &file).ok_or_else(|| {
            WorkflowError::Invalid(format!("handler {file:?} escapes the archive"))
        })?;
        if !path.is_file() {
            return Err(WorkflowError::Invalid(format!(
                "Handler file {file} is missing from the archive."
            )));
        }
        Ok(path)
    }
}
