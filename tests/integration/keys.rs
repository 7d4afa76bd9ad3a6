//! API keys (issue 9): `POST/GET /api/keys`, `DELETE /api/keys/{id}` with an admin key, scopes
//! (`admin`, `links`, `read`), last-used times, revocation that takes effect on the next
//! request, and `linkpulse keys create|list|revoke` against a running server and a stopped one.

use std::process::Output;

use serde_json::{Value, json};

use crate::{
    faults::process::{Started, command, launch},
    support::{KEY, TestApp, TestResult, client, json_error, spawn_app, spawn_with},
};

impl TestApp {
    /// `POST /api/keys` with `key`.
    async fn make_key_with(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/keys"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// Makes a key with the admin key; returns the answer's body.
    pub(crate) async fn make_key(&self, name: &str, scope: &str) -> Value {
        let res = self
            .make_key_with(KEY, json!({"name": name, "scope": scope}))
            .await;
        assert_eq!(res.status(), 201, "making key {name}");
        res.json().await.expect("json body")
    }

    /// `GET /api/keys` with the admin key: the `keys` array.
    pub(crate) async fn list_keys(&self) -> Vec<Value> {
        let res = self
            .client
            .get(self.url("/api/keys"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("list sent");
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("json body");
        body["keys"].as_array().cloned().expect("a keys array")
    }

    pub(crate) async fn revoke_key(&self, key: &str, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/api/keys/{id}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("delete sent")
    }

    /// `POST /api/links` with `key`.
    async fn create_with(&self, key: &str, code: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/links"))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/", "code": code}))
            .send()
            .await
            .expect("create sent")
    }

    async fn read_with(&self, key: &str, code: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("read sent")
    }
}

pub(crate) fn listed<'a>(keys: &'a [Value], id: &str) -> Option<&'a Value> {
    keys.iter().find(|k| k["id"] == id)
}

#[tokio::test]
async fn every_key_error_is_a_4xx_with_a_json_message() -> TestResult {
    let app = spawn_app().await;
    let links_key = app.make_key("owner", "links").await["key"]
        .as_str()
        .ok_or("key")?
        .to_owned();
    let post = |key: Option<&str>, content_type: &str, body: &str| {
        let mut req = app
            .client
            .post(app.url("/api/keys"))
            .header("content-type", content_type)
            .body(body.to_owned());
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send()
    };
    let json = "application/json";
    let long_name = format!(r#"{{"name":"{}","scope":"read"}}"#, "n".repeat(101));
    let cases: Vec<(u16, reqwest::Response, &str)> = vec![
        (
            401,
            post(None, json, r#"{"name":"a","scope":"read"}"#).await?,
            "no key",
        ),
        (
            401,
            post(Some("lp_nope"), json, r#"{"name":"a","scope":"read"}"#).await?,
            "unknown key",
        ),
        (
            403,
            post(Some(&links_key), json, r#"{"name":"a","scope":"read"}"#).await?,
            "links key",
        ),
        (
            415,
            post(Some(KEY), "text/plain", r#"{"name":"a","scope":"read"}"#).await?,
            "text",
        ),
        (
            400,
            post(Some(KEY), json, r#"{"name":"a","scope":"owner"}"#).await?,
            "bad scope",
        ),
        (
            400,
            post(Some(KEY), json, r#"{"name":"","scope":"read"}"#).await?,
            "empty name",
        ),
        (400, post(Some(KEY), json, &long_name).await?, "long name"),
        (
            400,
            post(Some(KEY), json, r#"{"name":"a"}"#).await?,
            "no scope",
        ),
        (
            400,
            post(
                Some(KEY),
                json,
                r#"{"name":"a","scope":"read","admin":true}"#,
            )
            .await?,
            "extra field",
        ),
        (
            400,
            post(Some(KEY), json, r#"["a","read"]"#).await?,
            "an array",
        ),
        (
            400,
            post(Some(KEY), json, r#"{"name":"a","#).await?,
            "malformed",
        ),
        (
            413,
            post(Some(KEY), json, &" ".repeat(5000)).await?,
            "too large",
        ),
        (
            401,
            app.client.get(app.url("/api/keys")).send().await?,
            "list without a key",
        ),
        (
            403,
            app.client
                .get(app.url("/api/keys"))
                .bearer_auth(&links_key)
                .send()
                .await?,
            "list, links key",
        ),
        (
            401,
            app.client.delete(app.url("/api/keys/x")).send().await?,
            "revoke without a key",
        ),
        (
            403,
            app.revoke_key(&links_key, "x").await,
            "revoke, links key",
        ),
        (
            404,
            app.revoke_key(KEY, "0123456789abcdef").await,
            "unknown id",
        ),
        (
            405,
            app.client
                .put(app.url("/api/keys"))
                .bearer_auth(KEY)
                .send()
                .await?,
            "PUT",
        ),
    ];
    for (expected, res, what) in cases {
        let (status, message) = json_error(res).await;
        assert_eq!(status, expected, "{what}: {message}");
    }
    // The only admin key may not revoke itself: the service would have no admin left.
    let keys = app.list_keys().await;
    let own = keys
        .iter()
        .find(|k| k["name"] == "initial")
        .ok_or("initial key")?;
    let (status, message) =
        json_error(app.revoke_key(KEY, own["id"].as_str().ok_or("id")?).await).await;
    assert_eq!(status, 400);
    assert!(message.contains("last admin key"), "{message}");
    assert_eq!(
        app.list_keys().await.len(),
        2,
        "nothing made or revoked by a refused request"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_read_key_reads_links_but_cannot_create_one() -> TestResult {
    let app = spawn_app().await;
    app.create_link("shared").await;
    let read_key = app.make_key("dash", "read").await["key"]
        .as_str()
        .ok_or("key")?
        .to_owned();
    let res = app.read_with(&read_key, "shared").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await?["code"], "shared");
    let (status, message) = json_error(app.create_with(&read_key, "mine").await).await;
    assert_eq!(
        (status, message.as_str()),
        (403, "this key is read-only (scope read)")
    );
    assert_eq!(
        app.read_with(KEY, "mine").await.status(),
        404,
        "nothing made"
    );
    // A read key manages no keys either.
    let (status, _) = json_error(
        app.make_key_with(&read_key, json!({"name": "x", "scope": "admin"}))
            .await,
    )
    .await;
    assert_eq!(status, 403);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_revoked_key_gets_401_on_its_next_request_and_after_a_restart() -> TestResult {
    let app = spawn_app().await;
    let made = app.make_key("ci", "links").await;
    let (key, id) = (
        made["key"].as_str().ok_or("key")?.to_owned(),
        made["id"].as_str().ok_or("id")?.to_owned(),
    );
    assert_eq!(app.create_with(&key, "ci1").await.status(), 201);
    assert_eq!(app.revoke_key(KEY, &id).await.status(), 204);
    let (status, _) = json_error(app.create_with(&key, "ci2").await).await;
    assert_eq!(status, 401);
    let (status, _) = json_error(app.read_with(&key, "ci1").await).await;
    assert_eq!(status, 401);
    assert_eq!(
        app.read_with(KEY, "ci1").await.status(),
        200,
        "its links stay"
    );

    // The revocation is stored, and the store (which refuses to open with fewer keys than
    // before) opens.
    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |_| {}).await;
    let (status, _) = json_error(app.read_with(&key, "ci1").await).await;
    assert_eq!(status, 401);
    assert!(listed(&app.list_keys().await, &id).is_none());
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn last_used_is_set_by_a_use_and_kept_across_a_clean_stop() -> TestResult {
    let app = spawn_app().await;
    let made = app.make_key("ci", "links").await;
    let (key, id) = (
        made["key"].as_str().ok_or("key")?,
        made["id"].as_str().ok_or("id")?,
    );
    let before = listed(&app.list_keys().await, id)
        .cloned()
        .ok_or("listed")?;
    assert_eq!(before["lastUsedAt"], Value::Null, "never used");
    assert_eq!(app.create_with(key, "used1").await.status(), 201);
    let after = listed(&app.list_keys().await, id)
        .cloned()
        .ok_or("listed")?;
    let used = after["lastUsedAt"]
        .as_str()
        .ok_or("set by the use")?
        .to_owned();
    // Compared as times: the text leaves trailing zeros of the milliseconds out.
    let created: jiff::Timestamp = made["createdAt"].as_str().ok_or("createdAt")?.parse()?;
    assert!(used.parse::<jiff::Timestamp>()? >= created, "{after}");

    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |_| {}).await;
    let kept = listed(&app.list_keys().await, id)
        .cloned()
        .ok_or("listed")?;
    assert_eq!(
        kept["lastUsedAt"].as_str(),
        Some(used.as_str()),
        "saved at the stop"
    );
    app.stop().await;
    Ok(())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `linkpulse keys <args> --data-dir <dir>`.
fn keys_cli(dir: &std::path::Path, args: &[&str]) -> std::io::Result<Output> {
    let mut cmd = command(&["keys"]);
    cmd.args(args).arg("--data-dir").arg(dir);
    cmd.output()
}

/// The listed key named `name`, from `keys list`'s JSON lines.
fn cli_listed(out: &Output, name: &str) -> Option<Value> {
    stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|k| k["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_keys_while_the_server_runs_and_while_it_is_stopped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut server = match launch({
        let mut cmd = command(&["--listen", "127.0.0.1:0", "--data-dir"]);
        cmd.arg(dir.path());
        cmd
    })
    .await?
    {
        Started::Serving(server) => server,
        Started::Exited { status, log } => {
            return Err(format!("no start ({status}):\n{log}").into());
        }
    };
    let http = client();

    let made = keys_cli(dir.path(), &["create", "--name", "ci", "--scope", "links"])?;
    assert!(made.status.success(), "{made:?}");
    let key = stdout(&made);
    let key = key.trim_end();
    assert!(
        key.starts_with("lp_") && !key.contains('\n'),
        "the key alone: {key:?}"
    );
    let admin = keys_cli(dir.path(), &["create", "--admin"])?;
    assert!(admin.status.success(), "the old flag works: {admin:?}");

    let list = keys_cli(dir.path(), &["list"])?;
    assert!(list.status.success(), "{list:?}");
    let ci = cli_listed(&list, "ci").ok_or_else(|| format!("ci listed: {}", stdout(&list)))?;
    assert_eq!(ci["scope"], "links");
    assert_eq!(
        cli_listed(&list, "cli").ok_or("the admin key")?["scope"],
        "admin"
    );
    let id = ci["id"].as_str().ok_or("id")?.to_owned();

    let create = |key: &str| {
        http.post(format!("{}/api/links", server.base))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/"}))
            .send()
    };
    assert_eq!(
        create(key).await?.status(),
        201,
        "the new key works at once"
    );
    let revoked = keys_cli(dir.path(), &["revoke", &id])?;
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(create(key).await?.status(), 401, "revoked while serving");
    let again = keys_cli(dir.path(), &["revoke", &id])?;
    assert!(!again.status.success(), "an unknown id fails");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("no key with id '{id}'")),
        "{again:?}"
    );

    server.signal("TERM")?;
    assert_eq!(
        server
            .wait_exit(std::time::Duration::from_secs(20))
            .await?
            .code(),
        Some(0)
    );
    assert!(
        !dir.path().join("control.sock").exists(),
        "the socket goes at a clean stop"
    );

    // Stopped: the same commands work on the store itself.
    let made = keys_cli(
        dir.path(),
        &["create", "--name", "offline", "--scope", "read"],
    )?;
    assert!(made.status.success(), "{made:?}");
    let offline = stdout(&made).trim_end().to_owned();
    let list = keys_cli(dir.path(), &["list"])?;
    let shown = cli_listed(&list, "offline").ok_or("offline listed")?;
    assert_eq!(shown["scope"], "read");
    assert!(cli_listed(&list, "ci").is_none(), "ci stays revoked");
    let gone = keys_cli(dir.path(), &["revoke", shown["id"].as_str().ok_or("id")?])?;
    assert!(gone.status.success(), "{gone:?}");

    // The next start serves, and the key revoked while stopped is refused.
    let Started::Serving(mut server) = launch({
        let mut cmd = command(&["--listen", "127.0.0.1:0", "--data-dir"]);
        cmd.arg(dir.path());
        cmd
    })
    .await?
    else {
        return Err("no second start".into());
    };
    let res = http
        .get(format!("{}/api/links/x", server.base))
        .bearer_auth(&offline)
        .send()
        .await?;
    assert_eq!(res.status(), 401);
    server.signal("TERM")?;
    assert_eq!(
        server
            .wait_exit(std::time::Duration::from_secs(20))
            .await?
            .code(),
        Some(0)
    );
    Ok(())
}
