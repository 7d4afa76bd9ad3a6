//! The store's background threads (the writer, fjall's flush and compaction workers, the
//! keeper of the checked listing) run at a lower CPU priority than the threads that answer
//! requests, so on a busy CPU a redirect does not wait behind a memtable insert or a
//! compaction. Set once at start (`--background-nice`); 0 leaves every thread as it is.
//!
//! Measured with the server on one core (`load-tests/open-model.sh`, see
//! `docs/performance.md`): redirect p99 at half the maximum rate, median over ten rounds,
//! 5.0 ms against 6.1 ms at niceness 0, the worst round 7.1 ms against 20.7 ms; the maximum
//! rate did not change. Clicks are never dropped for it: a writer that falls behind fills the
//! click backlog, and redirects then wait for places (`--click-backlog-wait`), which gives the
//! writer the CPU back.

use std::sync::atomic::{AtomicI32, Ordering};

/// The niceness background threads take, or [`UNCHANGED`].
static NICE: AtomicI32 = AtomicI32::new(UNCHANGED);
const UNCHANGED: i32 = i32::MIN;

/// Background threads started from now on run `nice` steps below the calling thread (the
/// server's own niceness plus `nice`, at most 19); 0 leaves them as they are.
pub fn set_background_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    let base = rustix::process::getpriority_process(None).unwrap_or(0);
    #[cfg(not(target_os = "linux"))]
    let base = 0;
    let target = if nice > 0 {
        (base + nice).min(19)
    } else {
        UNCHANGED
    };
    NICE.store(target, Ordering::Relaxed);
}

/// Lowers the calling thread's priority to the background niceness.
pub(super) fn background_thread() {
    #[cfg(target_os = "linux")]
    renice(rustix::thread::gettid(), NICE.load(Ordering::Relaxed));
}

/// Runs `f` on a thread of its own at the background niceness, so the threads it starts (a
/// library's workers, such as fjall's) inherit that niceness from their first instruction on.
/// Inline when there is no niceness to take; an error only when no thread can be started.
pub(super) fn spawning_in_background<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    if NICE.load(Ordering::Relaxed) == UNCHANGED {
        return Ok(f());
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("linkpulse-open".into())
            .spawn_scoped(scope, || {
                background_thread();
                f()
            })?;
        Ok(thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// On Linux a thread's niceness is its own: `PRIO_PROCESS` with a thread id sets that thread's.
#[cfg(target_os = "linux")]
fn renice(tid: rustix::process::Pid, nice: i32) {
    if nice == UNCHANGED {
        return;
    }
    // Lowering one's own priority is always allowed; should it fail, the thread runs as
    // before, which costs latency, not correctness.
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(cause = %e, nice, "cannot lower the priority of the store's background threads");
        });
    }
}
