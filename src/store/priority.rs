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

static NICE: AtomicI32 = AtomicI32::new(0);

/// The niceness background threads take from now on (0: none).
pub fn set_background_nice(nice: i32) {
    NICE.store(nice.clamp(0, 19), Ordering::Relaxed);
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
    if NICE.load(Ordering::Relaxed) == 0 {
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
    if nice == 0 {
        return;
    }
    // A thread that has ended meanwhile is no error worth more than a debug line.
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(tid = tid.as_raw_nonzero().get(), cause = %e, "cannot lower the priority of a background thread");
    }
}
