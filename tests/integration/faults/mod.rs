//! Faults (issue 4, "no click lost under faults"): the real `linkpulse` binary, started as a
//! child process on 127.0.0.1:0 with its own temporary data directory, is killed with SIGKILL
//! under load (default and strict durability, once and five times over one directory), stopped
//! with SIGTERM under load with thousands of open streams, and started on a damaged journal, on
//! damaged tables and on a directory another linkpulse holds.
//!
//! After every fault the store opens and each code's stored count equals its number of stored
//! click events; nothing panics; and a start on a damaged directory either recovers what is
//! intact (and then serves and counts on) or exits non-zero saying what is wrong. The figures
//! (clicks lost per kill, time to stop) are printed with `eprintln!`; run with `--nocapture` to
//! see them.
//!
//! One file per fault: `kill` (SIGKILL under load), `shutdown` (SIGTERM with thousands of open
//! streams), `damage` (damaged journals and tables, and the long sweep of flipped words),
//! `held` (a data directory another linkpulse holds), `screen` (what a viewer saw survives
//! SIGKILL), `disk` (the disk fills up while serving). `process` (the child process, talking to
//! it, redirect load) and `store_files` (prepared, copied and damaged data directories) hold
//! what they share.

mod damage;
mod disk;
mod held;
mod kill;
pub(crate) mod process;
mod screen;
mod shutdown;
mod store_files;
