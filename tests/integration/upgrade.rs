//! Stores and exports made by an older linkpulse open and import in this one. The fixtures in
//! `tests/fixtures/` were made by the binary of the commit before domains existed (how: in
//! `tests/fixtures/README.md`): its links are on the default domain here, with their counts,
//! and in the first workspace (that binary came before workspaces and accounts too).

use std::{path::Path, process::Command};

use serde_json::json;

use crate::{
    support::{KEY, TestResult, spawn_with},
    transfer::get,
};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The store of `pre-domains-store.tar.gz`, unpacked into a fresh directory.
fn unpacked_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixture("pre-domains-store.tar.gz"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "the fixture unpacks");
    dir
}

/// What the older binary stored: `old-one` clicked 3 times, `old-two` once (see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_before_domains_opens_with_every_link_on_the_default_domain() -> TestResult {
    let dir = unpacked_store();
    let out = Command::new(BIN)
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("result: sound"),
        "{said}"
    );

    let app = spawn_with(Some(dir), |_| {}).await;
    let host = app.addr.ip().to_string();
    let list = get(&app, "/api/links").await;
    let mut seen: Vec<(String, String, u64)> = list["links"]
        .as_array()
        .ok_or("a list")?
        .iter()
        .map(|l| {
            (
                l["code"].as_str().unwrap_or_default().to_owned(),
                l["domain"].as_str().unwrap_or_default().to_owned(),
                l["clickCount"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("old-one".to_owned(), host.clone(), 3),
            ("old-two".to_owned(), host.clone(), 1)
        ]
    );
    // One workspace, the first, holds every link and the old key; a person who joins it
    // sees them, a member only the links they own (none: the old key made them).
    let workspaces = get(&app, "/api/workspaces").await;
    assert_eq!(workspaces["current"], "default");
    assert_eq!(workspaces["workspaces"].as_array().map(Vec::len), Some(1));
    for (email, role, sees) in [
        ("ann@example.test", "owner", 2),
        ("max@example.test", "member", 0),
    ] {
        let cookie = crate::accounts::signed_in_person(&app, email, role).await;
        let listed: serde_json::Value = app
            .client
            .get(app.url("/api/links"))
            .header("cookie", cookie)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(
            listed["links"].as_array().map(Vec::len),
            Some(sees),
            "{email}: {listed}"
        );
    }
    let res = app.client.get(app.url("/old-one")).send().await?;
    assert_eq!(res.headers()["location"], "https://example.com/old-one");
    assert_eq!(get(&app, "/api/links/old-one").await["clickCount"], 4);
    let clicks = get(&app, "/api/links/old-one/clicks?limit=10").await;
    assert_eq!(clicks["clicks"].as_array().map(Vec::len), Some(4));

    // The same code on a domain added now is another link; the old one is untouched.
    let res = app
        .client
        .post(app.url("/api/domains"))
        .bearer_auth(KEY)
        .json(&json!({"name": "go.example.test"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let made = app
        .create(json!({"url": "https://example.com/new", "code": "old-one",
                       "domain": "go.example.test"}))
        .await;
    assert_eq!(made.status(), 201);
    let res = app
        .client
        .get(app.url("/old-one"))
        .header("host", "go.example.test")
        .send()
        .await?;
    assert_eq!(res.headers()["location"], "https://example.com/new");
    assert_eq!(get(&app, "/api/links/old-one").await["clickCount"], 4);
    app.stop().await;
    Ok(())
}

/// An export the older binary wrote imports whole.
#[tokio::test]
async fn an_export_made_before_domains_imports_onto_the_default_domain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = Command::new(BIN)
        .args(["import", "--input"])
        .arg(fixture("pre-domains-export.jsonl"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("LINKPULSE_LOG", "warn")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "imported 2 links, 4 clicks, skipped 0\n"
    );
    let app = spawn_with(Some(dir), |_| {}).await;
    let link = get(&app, "/api/links/old-one").await;
    assert_eq!(link["clickCount"], 3);
    assert_eq!(link["domain"], app.addr.ip().to_string());
    app.stop().await;
    Ok(())
}
