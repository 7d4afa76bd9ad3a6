//! A data directory another linkpulse holds: a second server and `check` refuse it with a
//! message naming the problem (`keys create` goes through the holder's control socket), and
//! the holder serves on undisturbed.

use std::process::Command;

use super::{
    process::{BIN, Started, assert_no_panic, known_counts, serving, start, stored_counts},
    store_files::{CLICKS, prepared_dir},
};
use crate::support::{TestResult, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_held_by_another_linkpulse_is_refused_and_the_holder_serves_on() -> TestResult {
    let codes = ["h1"];
    let dir = prepared_dir(&codes).await?;
    let http = client();
    let mut holder = serving(dir.path(), &[]).await?;

    let second = start(dir.path(), &[]).await?;
    let Started::Exited { status, log } = second else {
        return Err("a second linkpulse served on a held data directory".into());
    };
    assert_no_panic(&log, "second start");
    assert!(!status.success(), "second start exited with {status}");
    assert!(
        log.contains("in use by another process"),
        "the message names the problem:\n{log}"
    );
    let message = log.split_once("Error: ").map_or("", |(_, m)| m.trim());
    eprintln!(
        "second linkpulse on a held dir: {status}: {}",
        message.replace('\n', " ")
    );

    // `check` opens the store itself and is refused; `keys` goes through the holder.
    let check = Command::new(BIN)
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LIB_BACKTRACE", "0")
        .output()?;
    let check_log = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "check on a held dir");
    assert_no_panic(&check_log, "check");
    assert!(
        check_log.contains("in use by another process"),
        "check names the problem:\n{check_log}"
    );
    let keys = Command::new(BIN)
        .args(["keys", "create", "--data-dir"])
        .arg(dir.path())
        .output()?;
    assert!(
        keys.status.success(),
        "keys create through the holder: {keys:?}"
    );

    // The holder was not disturbed.
    for _ in 0..5 {
        let res = http.get(format!("{}/h1", holder.base)).send().await?;
        assert_eq!(res.status(), 302);
    }
    assert_eq!(
        known_counts(&http, &holder.base, &codes).await?,
        [CLICKS + 5]
    );
    holder.terminate().await?;
    assert_eq!(
        stored_counts(dir.path(), &codes)?,
        [(CLICKS + 5, CLICKS + 5)]
    );
    Ok(())
}
