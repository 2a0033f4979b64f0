//! Workflows: TorchServe's pipelines of models and Python functions (`.war` archives).
//! Registering one registers every DAG node as a model named `{workflow}__{node}` (archives
//! from the model store, functions of the archive's handler file run by TorchServe's Python
//! worker); unregistering removes them again. Running one is the API's business
//! (`api::workflow`): it calls the nodes' models in DAG order.

pub mod archive;
pub mod dag;
pub mod executor;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::archive::ModelArchive;
use crate::error::{ServeError, WorkflowFault};
use crate::fetch;
use crate::loader::Loader;
use crate::registry::Registration;
use archive::WorkflowArchive;
use spec::{NodeKind, Spec, SpecError};

/// How many of a workflow's nodes register at once.
const PARALLEL_NODES: usize = 8;

/// Why a workflow call failed; each maps to TorchServe's status and exception type.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{0}")]
    NotFound(String),
    /// The archive or its manifest or spec is not a usable workflow.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Dag(#[from] dag::DagError),
    #[error("Workflow {0} is already registered.")]
    Conflict(String),
    #[error("Workflow {name} has failed to register. Failures: [{}]", failures.join(", "))]
    Nodes { name: String, failures: Vec<String> },
    #[error("Error while unregistering the workflow {name}. Details: [{}]", failures.join(", "))]
    Unregister { name: String, failures: Vec<String> },
    #[error("{0}")]
    Io(String),
    /// An error of the registration machinery shared with models (download, allowed_urls).
    #[error("{0}")]
    Serve(ServeError),
}

impl From<SpecError> for WorkflowError {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::Dag(d) => WorkflowError::Dag(d),
            other => WorkflowError::Invalid(other.to_string()),
        }
    }
}

impl From<WorkflowError> for ServeError {
    fn from(e: WorkflowError) -> Self {
        let fault = match e {
            // A store entry that is not there is a missing workflow, not a missing model.
            WorkflowError::Serve(ServeError::ArchiveNotFound(m)) => {
                return ServeError::Workflow(m, WorkflowFault::NotFound)
            }
            WorkflowError::Serve(e) => return e,
            ref e => fault_of(e),
        };
        ServeError::Workflow(e.to_string(), fault)
    }
}

fn fault_of(e: &WorkflowError) -> WorkflowFault {
    match e {
        WorkflowError::Serve(_) => WorkflowFault::Internal,
        WorkflowError::NotFound(_) => WorkflowFault::NotFound,
        WorkflowError::Invalid(_) => WorkflowFault::Invalid,
        WorkflowError::Dag(_) => WorkflowFault::Dag,
        WorkflowError::Conflict(_) => WorkflowFault::Conflict,
        WorkflowError::Nodes { .. } => WorkflowFault::Nodes,
        WorkflowError::Unregister { .. } | WorkflowError::Io(_) => WorkflowFault::Internal,
    }
}

/// A registered workflow.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    /// The `url` it was registered with.
    pub url: String,
    pub spec: Spec,
    pub archive: WorkflowArchive,
    /// A `.war` fetched into the store by registration; deleted when the workflow goes.
    pub downloaded: Option<PathBuf>,
}

/// `POST /workflows`'s parameters.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub url: String,
    pub workflow_name: Option<String>,
    pub response_timeout_s: u64,
    pub startup_timeout_s: u64,
}

/// Every registered workflow.
#[derive(Default)]
pub struct Workflows {
    map: RwLock<BTreeMap<String, Arc<Workflow>>>,
    /// Names being registered, so two registrations of one name cannot both proceed.
    pending: Mutex<BTreeSet<String>>,
}

/// Releases a pending name when registration ends, however it ends.
struct Pending<'a>(&'a Workflows, String);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.pending.lock() {
            p.remove(&self.1);
        }
    }
}

impl Workflows {
    pub fn get(&self, name: &str) -> Result<Arc<Workflow>, WorkflowError> {
        self.map
            .read()
            .expect("workflow lock")
            .get(name)
            .cloned()
            .ok_or_else(|| WorkflowError::NotFound(format!("Workflow not found: {name}")))
    }

    /// Every workflow, sorted by name.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        self.map
            .read()
            .expect("workflow lock")
            .values()
            .cloned()
            .collect()
    }

    fn reserve(&self, name: &str) -> Result<Pending<'_>, WorkflowError> {
        // The map is read under the pending lock: a registration finishing meanwhile has put
        // its name in the map before it leaves `pending`, so one of the two checks sees it.
        let mut pending = self.pending.lock().expect("pending lock");
        let taken = self.map.read().expect("workflow lock").contains_key(name);
        if taken || !pending.insert(name.to_string()) {
            return Err(WorkflowError::Conflict(name.to_string()));
        }
        Ok(Pending(self, name.to_string()))
    }

    /// Opens the archive, registers every node's model (in parallel, each waiting for its
    /// workers), and keeps the workflow; when a node fails, the nodes registered so far are
    /// removed again. Blocking. Returns the workflow's name.
    pub fn register(&self, cx: &Loader, req: RegisterRequest) -> Result<String, WorkflowError> {
        let store = cx.settings().workflow_store().ok_or_else(|| {
            WorkflowError::NotFound("Workflow store has not been configured.".into())
        })?;
        let resolved = fetch::resolve(
            &req.url,
            &store,
            &cx.settings().allowed_urls,
            cx.settings().max_archive_size,
        )
        .map_err(WorkflowError::Serve)?;
        let result =
            self.register_resolved(cx, &req, &store, &resolved.entry, &resolved.downloaded);
        if result.is_err() {
            if let Some(file) = &resolved.downloaded {
                let _ = std::fs::remove_file(file);
            }
        }
        result
    }

    fn register_resolved(
        &self,
        cx: &Loader,
        req: &RegisterRequest,
        store: &std::path::Path,
        entry: &str,
        downloaded: &Option<PathBuf>,
    ) -> Result<String, WorkflowError> {
        let archive = WorkflowArchive::open(
            store,
            entry,
            req.workflow_name.as_deref(),
            cx.settings().max_archive_size,
        )?;
        let name = archive.name.clone();
        let spec = Spec::parse(&archive.spec()?, &name)?;
        let _pending = self.reserve(&name)?;
        let handler = if spec.has_functions() {
            Some(archive.handler()?)
        } else {
            None
        };
        // Nodes start in parallel (each waits for its workers), a bounded number at a time:
        // a spec may name thousands.
        let mut outcomes = Vec::new();
        for (nodes, functions) in spec
            .nodes
            .chunks(PARALLEL_NODES)
            .zip(spec.dag.names().chunks(PARALLEL_NODES))
        {
            let at_once = nodes.iter().zip(functions);
            outcomes.extend(register_together(
                cx,
                req,
                &name,
                at_once,
                &archive,
                handler.as_deref(),
            ));
        }
        let (ok, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(_, r)| r.is_ok());
        if !failed.is_empty() {
            for (model, _) in &ok {
                let _ = cx.unregister(model, None);
            }
            let failures = failed
                .into_iter()
                .filter_map(|(model, r)| r.err().map(|e| e.message(&model)))
                .collect();
            return Err(WorkflowError::Nodes { name, failures });
        }
        let workflow = Workflow {
            name: name.clone(),
            url: req.url.clone(),
            spec,
            archive,
            downloaded: downloaded.clone(),
        };
        self.map
            .write()
            .expect("workflow lock")
            .insert(name.clone(), Arc::new(workflow));
        tracing::info!(workflow = %name, url = %req.url, "workflow registered");
        Ok(name)
    }

    /// Removes a workflow and its nodes' models.
    pub fn unregister(&self, loader: &Loader, name: &str) -> Result<(), WorkflowError> {
        let workflow = self
            .map
            .write()
            .expect("workflow lock")
            .remove(name)
            .ok_or_else(|| WorkflowError::NotFound(format!("Workflow not found: {name}")))?;
        let failures: Vec<String> = workflow
            .spec
            .nodes
            .iter()
            .filter_map(|node| {
                loader.unregister(&node.model, None).err().map(|e| {
                    format!(
                        "Error while unregistering workflow node {}: {e}",
                        node.model
                    )
                })
            })
            .collect();
        if let Some(file) = &workflow.downloaded {
            let _ = std::fs::remove_file(file);
        }
        tracing::info!(workflow = %name, "workflow unregistered");
        if failures.is_empty() {
            Ok(())
        } else {
            Err(WorkflowError::Unregister {
                name: name.to_string(),
                failures,
            })
        }
    }
}

/// Why a node's model did not register.
#[derive(Debug)]
enum NodeError {
    /// The model was refused (archive, handler, name).
    Refused(String),
    /// Registered, but its workers did not come up.
    NoWorkers(String),
}

impl NodeError {
    /// The failure as TorchServe lists it in the registration's answer.
    fn message(self, model: &str) -> String {
        match self {
            NodeError::Refused(reason) => {
                format!("Workflow Node {model} failed to register. Details: {reason}")
            }
            NodeError::NoWorkers(status) => status,
        }
    }
}

impl From<String> for NodeError {
    fn from(reason: String) -> Self {
        NodeError::Refused(reason)
    }
}

impl From<&str> for NodeError {
    fn from(reason: &str) -> Self {
        NodeError::Refused(reason.to_string())
    }
}

/// Registers one node's model and waits for its workers (TorchServe registers workflow
/// nodes synchronously, with `max-workers` workers).
/// Registers `nodes` (with their function names) each on its own thread; every node's outcome.
fn register_together<'a>(
    cx: &Loader,
    req: &RegisterRequest,
    workflow: &str,
    nodes: impl Iterator<Item = (&'a spec::Node, &'a String)>,
    archive: &WorkflowArchive,
    handler: Option<&std::path::Path>,
) -> Vec<(String, Result<(), NodeError>)> {
    std::thread::scope(|scope| {
        let started: Vec<_> = nodes
            .map(|(node, function)| {
                let handle = std::thread::Builder::new()
                    .name(format!("register-{}", node.model))
                    .spawn_scoped(scope, move || {
                        register_node(cx, req, workflow, node, function, archive, handler)
                    });
                (node.model.clone(), handle)
            })
            .collect();
        started
            .into_iter()
            .map(|(model, handle)| {
                let outcome = match handle {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(NodeError::Refused("registration panicked".into()))
                    }),
                    Err(e) => Err(NodeError::Refused(format!("no thread to register it: {e}"))),
                };
                (model, outcome)
            })
            .collect()
    })
}

fn register_node(
    cx: &Loader,
    req: &RegisterRequest,
    workflow: &str,
    node: &spec::Node,
    function: &str,
    archive: &WorkflowArchive,
    handler: Option<&std::path::Path>,
) -> Result<(), NodeError> {
    let s = node.settings;
    let reg = Registration {
        model_name: Some(node.model.clone()),
        batch_size: Some(s.batch_size.max(1) as usize),
        max_batch_delay_ms: Some(s.max_batch_delay_ms as u64),
        initial_workers: Some(s.max_workers as usize),
        response_timeout_s: Some(req.response_timeout_s),
        startup_timeout_s: Some(req.startup_timeout_s),
        workflow: Some(workflow.to_string()),
        ..Registration::default()
    };
    let model = match &node.kind {
        NodeKind::Model { url } => cx.register_url(url, &reg).map_err(|e| e.to_string())?,
        NodeKind::Function => {
            // TorchServe runs `handler.py:function` from the handler file's folder.
            let path = handler.ok_or("the manifest names no handler")?;
            let dir = path.parent().map_or(archive.dir.clone(), PathBuf::from);
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let model = ModelArchive::function(
                dir,
                archive.extracted.clone(),
                &node.model,
                format!("{file}:{function}"),
            );
            let loaded = cx
                .load_archive(model, &reg, false)
                .map_err(|e| e.to_string())?;
            cx.add(loaded).map_err(|e| e.to_string())?
        }
    };
    if model.pool.limits().0 == 0 {
        return Ok(());
    }
    cx.await_workers(&model)
        .map_err(|e| NodeError::NoWorkers(e.to_string()))
}
