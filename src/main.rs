//! `ferroserve`: starts, or stops, the model server, accepting TorchServe's command line.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ferroserve::api::{self, AppState};
use ferroserve::backend::RuntimeOptions;
use ferroserve::config::{Cli, Settings};
use ferroserve::device::{self, DeviceRequest, LibtorchProbe};
use ferroserve::loader::Loader;
use ferroserve::registry::canaries::Canaries;
use ferroserve::registry::Registry;
use ferroserve::serve::Service;
use ferroserve::startup;

/// The token key file, in the working directory as TorchServe writes it.
const KEY_FILE: &str = "key_file.json";

/// Where `--start` records the server's PID for `--stop` (TorchServe's location).
fn pid_file() -> PathBuf {
    std::env::temp_dir().join(".model_server.pid")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.stop || !cli.foreground {
        ferroserve::logging::init_console();
        return if cli.stop { stop() } else { detach() };
    }
    // Flushes the log files when the server returns.
    let _logs = ferroserve::logging::init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferroserve: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `--start` without `--foreground`: start the server in the background and return, as the
/// `torchserve` launcher does.
fn detach() -> ExitCode {
    if let Some(pid) = running_pid() {
        eprintln!(
            "ferroserve is already running (pid {pid}), please use ferroserve --stop to stop it."
        );
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ferroserve: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    match std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
    {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferroserve: cannot start the server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn running_pid() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn stop() -> ExitCode {
    match running_pid() {
        Some(pid) => {
            // SAFETY: plain kill(2) on the recorded server PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = std::fs::remove_file(pid_file());
            // As `torchserve --stop`: the key file in the current directory goes too.
            let _ = std::fs::remove_file(KEY_FILE);
            println!("ferroserve has stopped.");
            ExitCode::SUCCESS
        }
        None => {
            println!("ferroserve is not currently running.");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let settings = Settings::load(cli).map_err(|e| e.to_string())?;
    let store = settings
        .model_store
        .clone()
        .ok_or("Missing mandatory parameter --model-store")?;
    if !store.is_dir() {
        return Err(format!(
            "--model-store directory not found: {}",
            store.display()
        ));
    }
    if let Some(wf) = settings.workflow_store.as_ref().filter(|d| !d.is_dir()) {
        return Err(format!(
            "--workflow-store directory not found: {}",
            wf.display()
        ));
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let request = DeviceRequest::from_env(&env).map_err(|e| e.to_string())?;
    let device =
        device::select(request, &mut LibtorchProbe::new(&env)).map_err(|e| e.to_string())?;
    tracing::info!(%device, ?request, "device selected");
    tch::set_num_threads(settings.intra_op_threads as i32);
    tch::set_num_interop_threads(1);
    if let Some(file) = &settings.config_file {
        tracing::info!("Config file: {}", file.display());
    }
    tracing::info!("Model Store: {}", store.display());
    if let Some(wf) = settings.workflow_store() {
        tracing::info!("Workflow Store: {}", wf.display());
    }
    for (key, why) in &settings.no_effect {
        tracing::warn!("config.properties: {key} has no effect in ferroserve: {why}");
    }
    for key in settings.extra.keys() {
        tracing::debug!(key, "configuration key not used by ferroserve");
    }

    let runtime = RuntimeOptions {
        device,
        intra_op_threads: settings.intra_op_threads,
        onnxruntime_library: settings.onnxruntime_library.clone(),
    };
    let metrics = Arc::new(ferroserve::metrics::Metrics::new(
        settings.metrics_mode,
        ferroserve::metrics::MetricsConfig::load(settings.metrics_config.as_deref()),
        settings.model_metrics_auto_detect,
    ));
    let models = startup::plan(&settings, &store)?;
    // gRPC, supervision and the timers of streamed answers run here, on every core; the HTTP
    // listeners run on actix's own per-core runtimes.
    let tasks = tokio::runtime::Builder::new_multi_thread()
        .thread_name("tasks")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the task runtime: {e}"))?;
    if !settings.disable_system_metrics {
        ferroserve::metrics::system::spawn(
            tasks.handle(),
            metrics.clone(),
            Duration::from_secs(settings.metric_time_interval.max(1)),
            matches!(device, device::Device::Cuda(_)),
        );
    }

    std::fs::write(pid_file(), std::process::id().to_string()).ok();
    let registry = Arc::new(Registry::new(settings.initial_worker_port));
    let canaries = Arc::new(Canaries::new(registry.clone(), metrics.clone()));
    ferroserve::lifecycle::spawn_supervisor(
        tasks.handle(),
        Arc::downgrade(&registry),
        Arc::downgrade(&canaries),
    );
    let tokens = if settings.disable_token_authorization {
        None
    } else {
        let file = std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(KEY_FILE);
        let tokens = ferroserve::auth::Tokens::create(file, settings.token_expiration_min)
            .map_err(|e| format!("cannot write {KEY_FILE}: {e}"))?;
        tracing::info!(
            "Token authorization is on: keys are in {} (disable with --disable-token-auth)",
            tokens.file().display()
        );
        Some(tokens)
    };
    let snapshots = settings
        .snapshot_dir
        .clone()
        .map(|dir| ferroserve::snapshot::Snapshots {
            dir,
            properties: settings.properties.clone(),
        });
    let settings = Arc::new(settings);
    let loader = Arc::new(Loader::new(
        registry.clone(),
        canaries.clone(),
        metrics.clone(),
        settings.clone(),
        runtime,
        tasks.handle().clone(),
    ));
    let state = actix_web::web::Data::new(AppState {
        service: Arc::new(Service::new(registry.clone(), metrics.clone())),
        metrics,
        settings,
        registry,
        loader,
        canaries,
        tokens,
        snapshots,
        workflows: Default::default(),
        startup: Default::default(),
        tasks: tasks.handle().clone(),
    });
    // The listeners open while the start-up models load.
    let loading = state.clone();
    let loader = std::thread::Builder::new()
        .name("startup-load".into())
        .spawn(move || {
            let s = &loading;
            startup::load(&s.loader, &s.canaries, models, &s.startup);
            // A load cut short by a shutdown must not become the newest snapshot.
            if !s.startup.is_cancelled() {
                s.snapshot("startup");
            }
        })
        .map_err(|e| format!("cannot start loading the models: {e}"))?;
    let result = actix_web::rt::System::new()
        .block_on(api::serve(state.clone()))
        .map_err(|e| e.to_string());
    // The process must not exit while a model is being loaded: the runtimes' static
    // destructors would run under the loading thread (a crash at exit).
    state.startup.cancel();
    let _ = loader.join();
    if running_pid() == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(pid_file());
    }
    result
}
