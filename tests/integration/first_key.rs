//! The first API key is never lost (issue 7, item 6), with the real `linkpulse` binary: a first
//! start that cannot listen (its port taken) fails saying so and stores no key, so the next
//! start makes one and prints it, with how to make another; a later start, with keys stored,
//! says in its log how to make one.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use linkpulse::store::Store;
use serde_json::json;

use crate::support::{TestResult, client};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");
const LIMIT: Duration = Duration::from_secs(30);

/// Starts `linkpulse` on `dir` listening on `listen`, with no `LINKPULSE_*` setting from the
/// environment running the tests (so no initial key).
pub fn spawn(dir: &std::path::Path, listen: &str) -> std::io::Result<Child> {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LINKPULSE_") {
            command.env_remove(name);
        }
    }
    command
        .args(["--listen", listen, "--data-dir"])
        .arg(dir)
        .env("LINKPULSE_LOG", "info")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// Every line of a pipe, as it comes, on a channel.
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one satisfies `done` (returned with all before it), or the deadline.
pub fn read_until(rx: &mpsc::Receiver<String>, done: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let stop = done(&line);
                seen.push(line);
                if stop {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    seen
}

fn wait(
    child: &mut Child,
) -> Result<std::process::ExitStatus, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("linkpulse did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sign-up link for the first owner that a first start prints on standard output.
pub fn first_signup_link(
    stdout: &mpsc::Receiver<String>,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let shown = read_until(stdout, |l| l.contains("Sign up as the first owner"));
    Ok(shown
        .last()
        .and_then(|l| l.split(": ").nth(1))
        .ok_or_else(|| format!("no sign-up link: {shown:?}"))?
        .to_owned())
}

pub fn terminate(child: &mut Child) -> TestResult {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    assert_eq!(wait(child)?.code(), Some(0), "a clean stop");
    Ok(())
}

pub fn listening(
    stderr: &mpsc::Receiver<String>,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let log = read_until(stderr, |l| l.contains("linkpulse listening"));
    let addr = log
        .last()
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("not listening: {log:?}"))?;
    Ok(addr.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_bind_stores_no_key_and_the_next_start_prints_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let listen = taken.local_addr()?.to_string();

    let mut first = spawn(dir.path(), &listen)?;
    let stdout = lines(first.stdout.take().ok_or("no stdout")?);
    let stderr = lines(first.stderr.take().ok_or("no stderr")?);
    let status = wait(&mut first)?;
    let out: Vec<String> = stdout.iter().collect();
    let err: Vec<String> = stderr.iter().collect();
    assert!(!status.success(), "a start on a taken port fails");
    assert!(
        err.iter()
            .any(|l| l.contains(&format!("cannot listen on {listen}"))),
        "the error names the address: {err:?}"
    );
    assert!(
        out.iter().all(|l| !l.contains("lp_")),
        "no key shown: {out:?}"
    );
    assert!(
        Store::open(dir.path())?.api_keys()?.is_empty(),
        "no key stored by the failed start"
    );
    drop(taken);

    let mut second = spawn(dir.path(), "127.0.0.1:0")?;
    let stdout = lines(second.stdout.take().ok_or("no stdout")?);
    let stderr = lines(second.stderr.take().ok_or("no stderr")?);
    let shown = read_until(&stdout, |l| l.contains("keys create"));
    let key = shown
        .iter()
        .find(|l| l.starts_with("lp_"))
        .ok_or_else(|| format!("no key printed: {shown:?}"))?
        .clone();
    assert!(
        shown
            .last()
            .is_some_and(|l| l.contains("linkpulse keys create --admin")),
        "the message says how to make another key: {shown:?}"
    );
    let addr = listening(&stderr)?;
    let res = client()
        .post(format!("http://{addr}/api/links"))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201, "the printed key works");
    terminate(&mut second)?;

    // Keys are stored and none is shown again; the log says how to make one.
    let mut third = spawn(dir.path(), "127.0.0.1:0")?;
    let stdout = lines(third.stdout.take().ok_or("no stdout")?);
    let stderr = lines(third.stderr.take().ok_or("no stderr")?);
    let log = read_until(&stderr, |l| l.contains("linkpulse listening"));
    assert!(
        log.iter()
            .any(|l| l.contains("to make another") && l.contains("linkpulse keys create --admin")),
        "{log:?}"
    );
    terminate(&mut third)?;
    let out: Vec<String> = stdout.iter().collect();
    assert!(out.iter().all(|l| !l.contains("lp_")), "{out:?}");
    Ok(())
}

/// The first start prints a one-time sign-up link for the first owner; it signs them up (an
/// owner, signed in), works once, and a start after that prints none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_prints_a_sign_up_link_for_the_first_owner() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut first = spawn(dir.path(), "127.0.0.1:0")?;
    let stdout = lines(first.stdout.take().ok_or("no stdout")?);
    let stderr = lines(first.stderr.take().ok_or("no stderr")?);
    let link = first_signup_link(&stdout)?;
    let addr = listening(&stderr)?;
    assert!(
        link.starts_with(&format!("http://{addr}/auth/signup?invite=")),
        "{link}"
    );
    let token = link.split("invite=").nth(1).ok_or("a token")?.to_owned();
    let page = client().get(&link).send().await?;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let res = client()
        .post(format!("http://{addr}/api/signup"))
        .json(&json!({"invite": token, "email": "Owner@Example.test", "password": "the owner's password"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let cookie = crate::support::session_cookie(&res).ok_or("a cookie")?;
    let body: serde_json::Value = res.json().await?;
    assert_eq!(body["user"]["role"], "owner");
    assert_eq!(body["user"]["email"], "owner@example.test");
    let res = client()
        .get(format!("http://{addr}/api/keys"))
        .header("cookie", &cookie)
        .send()
        .await?;
    assert_eq!(res.status(), 200, "an owner acts as an admin");
    let again = client()
        .post(format!("http://{addr}/api/signup"))
        .json(&json!({"invite": token, "email": "second@example.test", "password": "another password"}))
        .send()
        .await?;
    assert_eq!(again.status(), 410);
    terminate(&mut first)?;

    let mut second = spawn(dir.path(), "127.0.0.1:0")?;
    let stdout = lines(second.stdout.take().ok_or("no stdout")?);
    let stderr = lines(second.stderr.take().ok_or("no stderr")?);
    listening(&stderr)?;
    terminate(&mut second)?;
    let out: Vec<String> = stdout.iter().collect();
    assert!(out.iter().all(|l| !l.contains("Sign up")), "{out:?}");
    Ok(())
}
