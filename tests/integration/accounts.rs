//! People who sign in: users made with `linkpulse users`, a session cookie from
//! `POST /api/session` that the API takes in place of a key, sign-out, the list of one's
//! sessions, the limit on failed sign-ins, and changes from another site refused.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{KEY, TestApp, TestResult, spawn_with};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

/// `linkpulse users ARGS --data-dir DIR`, with `stdin` on standard input: (success, stdout,
/// stderr).
pub fn users(dir: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("users")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("LINKPULSE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("linkpulse runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin written");
    }
    let out = child.wait_with_output().expect("it ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The password [`signed_in_person`] gives everyone.
pub const PASSWORD: &str = "a long enough password";

/// Makes a user with [`PASSWORD`] through `linkpulse users` (the server may run).
pub fn make_person(dir: &std::path::Path, email: &str, role: &str) {
    let (ok, _, err) = users(
        dir,
        &[
            "create",
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{err}");
}

/// Makes a user and signs them in: the `name=value` of their session cookie.
pub async fn signed_in_person(app: &TestApp, email: &str, role: &str) -> String {
    make_person(app.dir.path(), email, role);
    let (status, body, cookie) = sign_in(app, email, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    cookie.expect("a session cookie")
}

/// A client that keeps no cookies: each request carries what the test gives it.
fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in; returns the answer's status, its JSON and the `name=value` of its cookie.
async fn sign_in(
    app: &TestApp,
    email: &str,
    password: &str,
) -> (StatusCode, Value, Option<String>) {
    let res = bare()
        .post(app.url("/api/session"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("sent");
    let status = res.status();
    let pair = crate::support::session_cookie(&res);
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, pair)
}

/// A request with `cookie`, from `origin` when given.
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = bare()
        .request(method, app.url(path))
        .header("cookie", cookie);
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_works_with_the_cookie_and_signs_out() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    // Made through the running server's control socket.
    let (ok, out, err) = users(
        app.dir.path(),
        &[
            "create",
            "--email",
            "Ada@Example.test",
            "--role",
            "member",
            "--password-stdin",
        ],
        "correct horse battery\n",
    );
    assert!(ok, "{err}");
    let made: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (&made["email"], &made["role"]),
        (&json!("ada@example.test"), &json!("member"))
    );
    let (ok, _, err) = users(
        app.dir.path(),
        &[
            "create",
            "--email",
            "viewer@example.test",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "a viewer's password",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = users(
        app.dir.path(),
        &["create", "--email", "ada@example.test", "--password-stdin"],
        "another password",
    );
    assert!(!ok && err.contains("exists"), "{err}");

    // Wrong password, unknown email: the same 401.
    for (email, password) in [
        ("ada@example.test", "wrong password"),
        ("nobody@example.test", "x"),
    ] {
        let (status, body, cookie) = sign_in(&app, email, password).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "wrong email or password");
        assert!(cookie.is_none());
    }

    let (status, body, cookie) = sign_in(&app, "ADA@example.test", "correct horse battery").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["role"], "member");
    let cookie = cookie.ok_or("a cookie")?;
    assert!(cookie.starts_with("lp_session="), "{cookie}");
    let own = app.base.clone();

    // The cookie stands for the user: a member creates and lists its own links.
    let res = with_cookie(
        &app,
        Method::POST,
        "/api/links",
        &cookie,
        Some(&own),
        Some(json!({"url": "https://example.com/ada", "code": "ada"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let res = with_cookie(&app, Method::GET, "/api/links", &cookie, None, None).await;
    let list: Value = res.json().await?;
    assert_eq!(list["links"].as_array().map(Vec::len), Some(1), "{list}");
    // A change from another site, or with no Origin, is refused and changes nothing.
    for origin in [Some("https://evil.example"), None] {
        let res = with_cookie(
            &app,
            Method::POST,
            "/api/links",
            &cookie,
            origin,
            Some(json!({"url": "https://example.com/forged", "code": "forged"})),
        )
        .await;
        assert_eq!(res.status(), 403, "{origin:?}");
        let body: Value = res.json().await?;
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Origin"),
            "{body}"
        );
    }
    let res = app
        .client
        .get(app.url("/api/links/forged"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 404, "nothing was made");

    // A viewer reads every link and changes none.
    let (_, _, viewer) = sign_in(&app, "viewer@example.test", "a viewer's password").await;
    let viewer = viewer.ok_or("a cookie")?;
    let res = with_cookie(&app, Method::GET, "/api/links/ada", &viewer, None, None).await;
    assert_eq!(res.status(), 200);
    let res = with_cookie(
        &app,
        Method::DELETE,
        "/api/links/ada",
        &viewer,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 403);

    // Two sessions of Ada's: listed, one ended from the other.
    let (_, second, other) = sign_in(&app, "ada@example.test", "correct horse battery").await;
    let other = other.ok_or("a cookie")?;
    let res = with_cookie(&app, Method::GET, "/api/sessions", &cookie, None, None).await;
    let sessions: Value = res.json().await?;
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(2),
        "{sessions}"
    );
    let second_id = second["session"]["id"].as_str().ok_or("an id")?;
    let res = with_cookie(
        &app,
        Method::DELETE,
        &format!("/api/sessions/{second_id}"),
        &cookie,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let res = with_cookie(&app, Method::GET, "/api/links", &other, None, None).await;
    assert_eq!(res.status(), 401);

    // Sign out: the cookie is cleared and refused from then on.
    let res = with_cookie(
        &app,
        Method::DELETE,
        "/api/session",
        &cookie,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let cleared = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let res = with_cookie(&app, Method::GET, "/api/links", &cookie, None, None).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sign in again"),
        "{body}"
    );

    // Disabled: its sessions end, and it cannot sign in.
    let dir = app.dir.path().to_owned();
    let (ok, _, err) = users(&dir, &["disable", "--email", "viewer@example.test"], "");
    assert!(ok, "{err}");
    let res = with_cookie(&app, Method::GET, "/api/links", &viewer, None, None).await;
    assert_eq!(res.status(), 401);
    let (status, _, _) = sign_in(&app, "viewer@example.test", "a viewer's password").await;
    assert_eq!(status, 403);

    // Users survive a restart, and `users list` reads them from the stopped store.
    let dir = app.stop().await;
    let (ok, out, err) = users(dir.path(), &["list"], "");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.contains(r#""email":"viewer@example.test","role":"viewer""#),
        "{out}"
    );
    assert!(out.contains(r#""disabled":true"#), "{out}");
    let app = spawn_with(Some(dir), |_| {}).await;
    let (status, _, _) = sign_in(&app, "ada@example.test", "correct horse battery").await;
    assert_eq!(status, 200);
    app.stop().await;
    Ok(())
}

/// After 10 failed sign-ins of one account in 15 minutes the next is `429` with
/// `Retry-After`, the right password included; another account from elsewhere still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_limited_per_account() -> TestResult {
    let app = spawn_with(None, |c| c.trust_forwarded_for = true).await;
    let (ok, _, err) = users(
        app.dir.path(),
        &[
            "create",
            "--email",
            "target@example.test",
            "--password-stdin",
        ],
        "the right password",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = users(
        app.dir.path(),
        &[
            "create",
            "--email",
            "other@example.test",
            "--password-stdin",
        ],
        "another right one",
    );
    assert!(ok, "{err}");
    let try_as = |from: &'static str, email: &'static str, password: &'static str| {
        bare()
            .post(app.url("/api/session"))
            .header("x-forwarded-for", from)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    // Each guess from its own address: the account's own limit stops them.
    let addresses = [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
        "198.51.100.5",
        "198.51.100.6",
        "198.51.100.7",
        "198.51.100.8",
        "198.51.100.9",
        "198.51.100.10",
    ];
    for from in addresses {
        let res = try_as(from, "target@example.test", "a guess").await?;
        assert_eq!(res.status(), 401);
    }
    let res = try_as("198.51.100.11", "target@example.test", "the right password").await?;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry > 0, "{retry}");
    let res = try_as("198.51.100.12", "other@example.test", "another right one").await?;
    assert_eq!(res.status(), 200);
    app.stop().await;
    Ok(())
}

/// An admin invites by a link it copies; the person signs up once (a second use is `410`) and
/// acts with the invited role. An admin user cannot invite an owner; an email in use is `409`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_signs_a_person_up_once_with_its_role() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    app.create_link("shared").await;
    let invite = |body: Value| {
        app.client
            .post(app.url("/api/invitations"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let res = invite(json!({"email": "Bob@Example.test", "role": "viewer"})).await?;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await?;
    let url = made["url"].as_str().ok_or("a url")?;
    assert!(
        url.starts_with(&format!("{}/auth/signup?invite=", app.base)),
        "{url}"
    );
    let token = url.split("invite=").nth(1).ok_or("a token")?.to_owned();
    let shown: Value = bare()
        .get(app.url(&format!("/api/invitations/{token}")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (&shown["email"], &shown["role"]),
        (&json!("bob@example.test"), &json!("viewer"))
    );

    let sign_up = |token: String, password: &'static str| {
        bare()
            .post(app.url("/api/signup"))
            .json(&json!({"invite": token, "password": password}))
            .send()
    };
    let res = sign_up(token.clone(), "short").await?;
    assert_eq!(res.status(), 400, "a password too short");
    let res = sign_up(token.clone(), "bob's own password").await?;
    assert_eq!(res.status(), 201);
    let cookie = crate::support::session_cookie(&res).ok_or("a cookie")?;
    let res = with_cookie(&app, Method::GET, "/api/links/shared", &cookie, None, None).await;
    assert_eq!(res.status(), 200, "a viewer reads");
    let own = app.base.clone();
    let res = with_cookie(
        &app,
        Method::DELETE,
        "/api/links/shared",
        &cookie,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 403, "and changes nothing");
    for used in [token.clone(), "0".repeat(64), "not-a-token".into()] {
        let res = sign_up(used, "whatever password").await?;
        assert_eq!(res.status(), 410);
        let body: Value = res.json().await?;
        assert!(body["error"].is_string(), "{body}");
    }
    let res = invite(json!({"email": "bob@example.test", "role": "member"})).await?;
    assert_eq!(res.status(), 409);

    // An admin user may invite an admin, not an owner.
    let res = invite(json!({"email": "carol@example.test", "role": "admin"})).await?;
    let link: Value = res.json().await?;
    let token = link["url"]
        .as_str()
        .and_then(|u| u.split("invite=").nth(1))
        .ok_or("a token")?;
    let res = sign_up(token.to_owned(), "carol's password").await?;
    let carol = crate::support::session_cookie(&res).ok_or("a cookie")?;
    let res = with_cookie(
        &app,
        Method::POST,
        "/api/invitations",
        &carol,
        Some(&own),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(res.status(), 403, "a role's forbidden change");
    let res = with_cookie(
        &app,
        Method::POST,
        "/api/invitations",
        &carol,
        Some(&own),
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(
        res.status(),
        201,
        "an open invitation: the person gives the email"
    );
    app.stop().await;
    Ok(())
}

/// Owners and admins list members, change roles, disable and remove them; an admin touches no
/// owner (`403`), the last owner stays one, and a removed member's session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_changed_and_removed_by_role() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    let dir = app.dir.path().to_owned();
    for (email, role) in [
        ("owner@example.test", "owner"),
        ("admin@example.test", "admin"),
        ("mem@example.test", "member"),
    ] {
        let (ok, _, err) = users(
            &dir,
            &[
                "create",
                "--email",
                email,
                "--role",
                role,
                "--password-stdin",
            ],
            "a long password",
        );
        assert!(ok, "{err}");
    }
    let own = app.base.clone();
    let (_, _, admin) = sign_in(&app, "admin@example.test", "a long password").await;
    let admin = admin.ok_or("a cookie")?;
    let (_, _, mem) = sign_in(&app, "mem@example.test", "a long password").await;
    let mem = mem.ok_or("a cookie")?;
    let listed: Value = with_cookie(&app, Method::GET, "/api/members", &admin, None, None)
        .await
        .json()
        .await?;
    let id_of = |email: &str| {
        listed["members"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["email"] == email))
            .and_then(|m| m["id"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (owner_id, mem_id) = (id_of("owner@example.test"), id_of("mem@example.test"));
    assert_eq!(
        listed["members"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    let res = with_cookie(&app, Method::GET, "/api/members", &mem, None, None).await;
    assert_eq!(res.status(), 403, "a member manages nobody");

    let patch = |cookie: String, id: String, body: Value| {
        let app = &app;
        let own = own.clone();
        async move {
            with_cookie(
                app,
                Method::PATCH,
                &format!("/api/members/{id}"),
                &cookie,
                Some(&own),
                Some(body),
            )
            .await
        }
    };
    let res = patch(admin.clone(), owner_id.clone(), json!({"role": "viewer"})).await;
    assert_eq!(res.status(), 403, "an admin changes no owner");
    let res = patch(admin.clone(), mem_id.clone(), json!({"role": "owner"})).await;
    assert_eq!(res.status(), 403, "nor makes one");
    let res = patch(admin.clone(), mem_id.clone(), json!({"role": "viewer"})).await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await?;
    assert_eq!(changed["role"], "viewer");
    // The change holds at the member's next request: a viewer deletes nothing.
    app.create_link("kept").await;
    let res = with_cookie(
        &app,
        Method::DELETE,
        "/api/links/kept",
        &mem,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 403);
    // The last owner stays one, even for a key.
    let res = app
        .client
        .patch(app.url(&format!("/api/members/{owner_id}")))
        .bearer_auth(KEY)
        .json(&json!({"disabled": true}))
        .send()
        .await?;
    assert_eq!(res.status(), 403);
    // Removed: the session ends, the person cannot sign in.
    let res = with_cookie(
        &app,
        Method::DELETE,
        &format!("/api/members/{mem_id}"),
        &admin,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let res = with_cookie(&app, Method::GET, "/api/links", &mem, None, None).await;
    assert_eq!(res.status(), 401);
    let (status, _, _) = sign_in(&app, "mem@example.test", "a long password").await;
    assert_eq!(status, 401);
    let res = with_cookie(
        &app,
        Method::DELETE,
        &format!("/api/members/{mem_id}"),
        &admin,
        Some(&own),
        None,
    )
    .await;
    assert_eq!(res.status(), 404);
    app.stop().await;
    Ok(())
}
