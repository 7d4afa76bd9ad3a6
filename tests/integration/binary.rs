//! The `linkpulse` binary itself: first start prints a key once, `keys create` makes keys that
//! own their links, SIGTERM stops it cleanly with exit code 0.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::support::{KEY, TestResult, client, spawn_with};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

#[tokio::test]
async fn keys_create_prints_a_key_that_owns_its_links() -> TestResult {
    let dir = tempfile::tempdir()?;
    let make_key = |admin: bool| -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let mut cmd = Command::new(BIN);
        cmd.args(["keys", "create", "--name", "ci", "--data-dir"])
            .arg(dir.path());
        if admin {
            cmd.arg("--admin");
        }
        let out = cmd.output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout.lines().last().unwrap_or_default().to_owned())
    };
    let alice = make_key(false)?;
    let bob = make_key(false)?;
    assert!(alice.starts_with("lp_") && bob.starts_with("lp_") && alice != bob);

    let app = spawn_with(Some(dir), |_| {}).await;
    let create = |key: &str, code: &str| {
        app.client
            .post(app.url("/api/links"))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/", "code": code}))
            .send()
    };
    assert_eq!(create(&alice, "alices").await?.status(), 201);
    assert_eq!(create(&bob, "bobs").await?.status(), 201);
    let read = |key: &str, code: &str| {
        app.client
            .get(app.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(read(&alice, "alices").await?.status(), 200);
    assert_eq!(
        read(&alice, "bobs").await?.status(),
        404,
        "another key's link is hidden"
    );
    assert_eq!(read(&bob, "alices").await?.status(), 404);
    assert_eq!(
        read(KEY, "alices").await?.status(),
        200,
        "the admin key sees all"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn first_start_prints_a_key_once_and_sigterm_stops_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let start = || {
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("LINKPULSE_INITIAL_API_KEY")
            .env("LINKPULSE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let mut child = start()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut key = None;
    for line in lines.by_ref().take(5) {
        let line = line?;
        if line.starts_with("lp_") {
            key = Some(line);
            break;
        }
    }
    let key = key.ok_or("no key printed")?;
    let addr = listening_address(&mut child)?;
    let res = client()
        .post(format!("http://{addr}/api/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201, "the printed key works");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "linkpulse did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exit.code(), Some(0));

    // A second start has a key already: nothing is printed.
    let mut again = start()?;
    let stdout = again.stdout.take().ok_or("no stdout")?;
    listening_address(&mut again)?;
    Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status()?;
    let out: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(again.wait()?.success());
    assert!(
        out.iter().all(|l| !l.starts_with("lp_")),
        "the key is shown only once: {out:?}"
    );
    Ok(())
}

/// The niceness of each of a process's threads, by thread name, from `/proc`.
#[cfg(target_os = "linux")]
fn thread_niceness(
    pid: u32,
) -> Result<Vec<(String, i64)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path();
        let name = std::fs::read_to_string(path.join("comm"))?
            .trim()
            .to_owned();
        let stat = std::fs::read_to_string(path.join("stat"))?;
        // The fields after the name, which is in parentheses and may hold spaces: state is
        // field 3, nice field 19.
        let after = stat.rsplit_once(") ").ok_or("odd stat")?.1;
        let nice = after.split(' ').nth(16).ok_or("no nice field")?.parse()?;
        threads.push((name, nice));
    }
    Ok(threads)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_store_works_in_the_background_at_the_niceness_asked_and_requests_do_not() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--background-nice",
            "7",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("LINKPULSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let addr = listening_address(&mut child)?;
    let threads = thread_niceness(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let threads = threads?;
    let nice_of = |prefix: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| *nice)
            .collect()
    };
    // Relative to the server's own niceness (a test run may itself be niced).
    let base = *nice_of("linkpulse").first().ok_or("no main thread")?;
    let background = (base + 7).min(19);
    assert_eq!(
        nice_of("linkpulse-write"),
        [background],
        "the writer: {threads:?}"
    );
    assert_eq!(
        nice_of("linkpulse-check"),
        [background],
        "the file checks: {threads:?}"
    );
    let fjall = nice_of("fjall:");
    assert!(
        !fjall.is_empty() && fjall.iter().all(|&n| n == background),
        "fjall's workers: {threads:?}"
    );
    let workers = nice_of("tokio-rt-worker");
    assert!(
        !workers.is_empty() && workers.iter().all(|&n| n == base),
        "the threads that answer requests keep their priority: {threads:?}"
    );
    assert!(
        child.wait()?.success(),
        "served at {addr} and stopped cleanly"
    );
    Ok(())
}

/// Reads the log until the line "linkpulse listening address=..." and returns the address. The
/// signal handler is in place once this line is out.
fn listening_address(
    child: &mut std::process::Child,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref().take(100) {
        let line = line?;
        if line.contains("linkpulse listening")
            && let Some(rest) = line.split("address=").nth(1)
            && let Some(addr) = rest.split_whitespace().next()
        {
            let addr = addr.to_owned();
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(addr);
        }
    }
    Err("no listening address logged".into())
}
