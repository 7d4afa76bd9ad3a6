//! A disk that fills up while serving (a small tmpfs): redirects go on, /healthz says 503 with
//! the reason, the failure is logged once (not once per group commit), and SIGTERM still ends
//! the process within `--shutdown-timeout`, non-zero, saying what could not be saved. Needs
//! root (to mount the tmpfs), as CI has.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use super::process::{Res, create_code, serving, start_load};
use crate::support::{TestResult, client};

/// `--shutdown-timeout` of the test's server.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// What the process may take past its shutdown timeout to exit (the signal's delivery, the
/// runtime's end, a busy machine); a stop that waited on the failed disk, or spent the timeout
/// twice, takes longer.
const EXIT_SLACK: Duration = Duration::from_secs(2);

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Res<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}); this test needs root").into());
        }
        Ok(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_once_and_sigterm_still_ends_the_process() -> TestResult {
    let disk = Tmpfs::mount("16m")?;
    let data = disk.0.path().join("data");
    let timeout = format!("{}s", SHUTDOWN_TIMEOUT.as_secs());
    let mut server = serving(&data, &["--shutdown-timeout", &timeout]).await?;
    let http = client();
    create_code(&http, &server.base, "full").await?;
    // Leave the store a little room, then fill it with clicks.
    let free = fs_free(disk.0.path())?;
    let filler = vec![0u8; usize::try_from(free.saturating_sub(256 * 1024))?];
    std::fs::write(disk.0.path().join("filler"), filler)?;
    let load = start_load(&server.base, &["full"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let health = loop {
        let res = http.get(format!("{}/healthz", server.base)).send().await?;
        if res.status() == 503 {
            break res.json::<serde_json::Value>().await?;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the disk never filled up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Redirects go on after the failure.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tallies = load.finish().await?;
    assert!(tallies[0].found > 0 && tallies[0].other == 0, "{tallies:?}");
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the store failed")),
        "{health}"
    );
    let res = http.get(format!("{}/full", server.base)).send().await?;
    assert_eq!(res.status(), 302, "still redirecting");

    let sent = Instant::now();
    server.signal("TERM")?;
    // The limit here only keeps a hang from stalling the suite; the stop's time is checked
    // below.
    let status = server.wait_exit(Duration::from_secs(15)).await?;
    let took = sent.elapsed();
    eprintln!("SIGTERM on a full disk: the process ended after {took:?}");
    let log = server.log();
    assert!(
        took <= SHUTDOWN_TIMEOUT + EXIT_SLACK,
        "the process ended {took:?} after SIGTERM, past its shutdown timeout of \
         {SHUTDOWN_TIMEOUT:?}:\n{log}"
    );
    assert_ne!(
        status.code(),
        Some(0),
        "a stop that lost clicks is not clean:\n{log}"
    );
    assert!(log.contains("could not be saved"), "{log}");
    assert_eq!(
        log.matches("the store failed: no more clicks").count(),
        1,
        "the failure is logged once:\n{log}"
    );
    drop(server);
    Ok(())
}

/// Free bytes on the file system holding `path`.
fn fs_free(path: &std::path::Path) -> Res<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .nth(1)
        .ok_or("df printed nothing")?
        .trim()
        .parse()?)
}
