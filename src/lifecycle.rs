//! Keeping model versions healthy and letting them go: the supervisor replaces workers stuck
//! past their response timeout and moves canary splits on; retiring drains a removed version
//! and frees it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::registry::canaries::Canaries;
use crate::registry::{ModelVersion, Registry};

/// How often stuck workers and canary guards are checked.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);

/// How long a retired version's workers get to finish their batch once the queue drained.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Supervises on `runtime` for as long as the registry lives.
pub fn spawn_supervisor(
    runtime: &tokio::runtime::Handle,
    registry: Weak<Registry>,
    canaries: Weak<Canaries>,
) {
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let (Some(registry), Some(canaries)) = (registry.upgrade(), canaries.upgrade()) else {
                return;
            };
            for m in registry.all() {
                m.pool
                    .replace_stuck(m.response_timeout(), &|| registry.next_worker_id());
            }
            canaries.tick();
        }
    });
}

/// Lets a version no request can reach any more go: its queue drains (bounded by the
/// response timeout), its workers finish their batch and exit, and the pages its model held
/// go back to the system.
pub fn retire(version: Arc<ModelVersion>) {
    let name = format!("drain-{}", version.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        version
            .queue
            .wait_empty(Instant::now() + version.response_timeout());
        let _ = version.pool.scale(0, 0, &|| 0);
        version.pool.wait_exited(Instant::now() + EXIT_GRACE);
        drop(version);
        release_freed_memory();
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start draining a removed model version: {e}");
    }
}

/// Returns free heap pages to the system (glibc keeps them otherwise, and RSS creeps up over
/// many load/unload cycles).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
