//! Workspaces, the audit log, the events feed and sign-in with an OpenID provider, tried as
//! their users do: over HTTP against the real server, a real OpenID provider (node's
//! `oidc-provider`) for sign-in.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::oidc_provider::{Provider, sign_in as provider_sign_in};
use crate::support::{KEY, SseClient, TestApp, TestResult, spawn_with};

/// A client that keeps no cookies and follows no redirects.
fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Someone calling the API: by session cookie (from this site) or by key.
#[derive(Clone)]
enum Who {
    Cookie(String),
    Key(String),
}

async fn call(
    app: &TestApp,
    who: &Who,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = bare().request(method, app.url(path));
    req = match who {
        Who::Cookie(cookie) => req.header("cookie", cookie).header("origin", &app.base),
        Who::Key(key) => req.bearer_auth(key),
    };
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("sent")
}

async fn json_of(res: reqwest::Response, want: u16) -> Value {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, want, "{body}");
    body
}

/// Makes a user through `linkpulse users` and signs them in: their cookie.
async fn person(app: &TestApp, email: &str, role: &str) -> Who {
    Who::Cookie(crate::accounts::signed_in_person(app, email, role).await)
}

/// An invitation of `email` as `role` by `who`: its token.
async fn invite(app: &TestApp, who: &Who, email: &str, role: &str) -> String {
    let invited = json_of(
        call(
            app,
            who,
            Method::POST,
            "/api/invitations",
            Some(json!({"email": email, "role": role})),
        )
        .await,
        201,
    )
    .await;
    invited["url"]
        .as_str()
        .and_then(|u| u.split("invite=").nth(1))
        .expect("a token")
        .to_owned()
}

/// Signs up with the invitation `token`: the new person's cookie and the answer.
async fn join(app: &TestApp, token: &str, password: &str) -> (Who, Value) {
    let res = bare()
        .post(app.url("/api/signup"))
        .json(&json!({"invite": token, "password": password}))
        .send()
        .await
        .expect("sent");
    let cookie = crate::support::session_cookie(&res).expect("a cookie");
    (Who::Cookie(cookie), json_of(res, 201).await)
}

fn codes(listing: &Value) -> Vec<String> {
    let mut codes: Vec<String> = listing["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    codes.sort();
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_keep_links_keys_domains_and_members_apart_and_the_audit_log_says_who()
-> TestResult {
    let app = spawn_with(None, |_| {}).await;
    let key = Who::Key(KEY.into());
    let ann = person(&app, "ann@example.test", "owner").await;

    // A store with no workspaces yet has one, the first, holding the key and everything.
    let listed = json_of(
        call(&app, &ann, Method::GET, "/api/workspaces", None).await,
        200,
    )
    .await;
    assert_eq!(listed["current"], "default");
    assert_eq!(listed["workspaces"][0]["role"], "owner");
    json_of(
        call(
            &app,
            &ann,
            Method::POST,
            "/api/links",
            Some(json!({"url": "https://example.com/1", "code": "one"})),
        )
        .await,
        201,
    )
    .await;

    // A second workspace: its maker owns it; a key cannot make one.
    let made = json_of(
        call(
            &app,
            &ann,
            Method::POST,
            "/api/workspaces",
            Some(json!({"name": "Second"})),
        )
        .await,
        201,
    )
    .await;
    let second = made["id"].as_str().expect("an id").to_owned();
    assert_eq!(made["role"], "owner");
    let refused = call(
        &app,
        &key,
        Method::POST,
        "/api/workspaces",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(refused.status(), 403);
    let bad = call(
        &app,
        &ann,
        Method::POST,
        "/api/workspaces",
        Some(json!({"name": " "})),
    )
    .await;
    assert_eq!(bad.status(), 400);

    // The session moves there: links, keys and domains are that workspace's.
    let switched = json_of(
        call(
            &app,
            &ann,
            Method::PATCH,
            "/api/session",
            Some(json!({"workspace": second})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(switched["user"]["workspace"], second.as_str());
    let not_mine = call(
        &app,
        &ann,
        Method::PATCH,
        "/api/session",
        Some(json!({"workspace": "nope"})),
    )
    .await;
    assert_eq!(not_mine.status(), 403);
    let empty = json_of(call(&app, &ann, Method::GET, "/api/links", None).await, 200).await;
    assert!(codes(&empty).is_empty(), "{empty}");
    json_of(
        call(
            &app,
            &ann,
            Method::POST,
            "/api/links",
            Some(json!({"url": "https://example.com/2", "code": "two"})),
        )
        .await,
        201,
    )
    .await;
    let new_key = json_of(
        call(
            &app,
            &ann,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "ci", "scope": "admin"})),
        )
        .await,
        201,
    )
    .await;
    let second_key = Who::Key(new_key["key"].as_str().expect("a key").to_owned());
    let keys = json_of(call(&app, &ann, Method::GET, "/api/keys", None).await, 200).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(1), "{keys}");

    // Each key sees its own workspace only; another's link is missing, not forbidden.
    let seen = json_of(
        call(&app, &second_key, Method::GET, "/api/links", None).await,
        200,
    )
    .await;
    assert_eq!(codes(&seen), ["two"]);
    let seen = json_of(call(&app, &key, Method::GET, "/api/links", None).await, 200).await;
    assert_eq!(codes(&seen), ["one"]);
    for (who, code) in [(&second_key, "one"), (&key, "two")] {
        assert_eq!(
            call(&app, who, Method::GET, &format!("/api/links/{code}"), None)
                .await
                .status(),
            404
        );
        assert_eq!(
            call(
                &app,
                who,
                Method::DELETE,
                &format!("/api/links/{code}"),
                None
            )
            .await
            .status(),
            404
        );
    }
    // A domain of the second workspace is not the first's to list or use.
    json_of(
        call(
            &app,
            &second_key,
            Method::POST,
            "/api/domains",
            Some(json!({"name": "second.example.test"})),
        )
        .await,
        201,
    )
    .await;
    let domains = json_of(
        call(&app, &key, Method::GET, "/api/domains", None).await,
        200,
    )
    .await;
    assert_eq!(domains["domains"], json!([]));
    let elsewhere = call(
        &app,
        &key,
        Method::POST,
        "/api/links",
        Some(json!({"url": "https://example.com/x", "domain": "second.example.test"})),
    )
    .await;
    assert_eq!(elsewhere.status(), 404);
    json_of(
        call(
            &app,
            &second_key,
            Method::POST,
            "/api/links",
            Some(json!({"url": "https://example.com/3", "code": "three", "domain": "second.example.test"})),
        )
        .await,
        201,
    )
    .await;

    // A viewer invited to the second workspace reads and watches, and changes nothing.
    let token = invite(&app, &ann, "bob@example.test", "viewer").await;
    let (bob, joined) = join(&app, &token, "bob's long password").await;
    assert_eq!(joined["user"]["workspace"], second.as_str());
    assert_eq!(joined["user"]["role"], "viewer");
    let seen = json_of(call(&app, &bob, Method::GET, "/api/links", None).await, 200).await;
    assert_eq!(codes(&seen), ["three", "two"]);
    for (method, path, body) in [
        (Method::DELETE, "/api/links/two", None),
        (
            Method::PATCH,
            "/api/links/two",
            Some(json!({"title": "mine"})),
        ),
        (
            Method::POST,
            "/api/links",
            Some(json!({"url": "https://example.com/b"})),
        ),
        (Method::GET, "/api/audit", None),
        (
            Method::POST,
            "/api/workspaces",
            Some(json!({"name": "bob's"})),
        ),
    ] {
        let res = call(&app, &bob, method.clone(), path, body).await;
        let (status, error) = crate::support::json_error(res).await;
        assert_eq!(status, 403, "{method} {path}: {error}");
    }
    let members = json_of(
        call(&app, &ann, Method::GET, "/api/members", None).await,
        200,
    )
    .await;
    let roles: Vec<(String, String)> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap_or_default().into(),
                m["role"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("ann@example.test".into(), "owner".into()),
            ("bob@example.test".into(), "viewer".into())
        ]
    );
    let first_members = json_of(
        call(&app, &key, Method::GET, "/api/members", None).await,
        200,
    )
    .await;
    assert_eq!(
        first_members["members"].as_array().map(Vec::len),
        Some(1),
        "{first_members}"
    );

    // The key deletes a link: the audit log names the key, with the link before.
    assert_eq!(
        call(&app, &second_key, Method::DELETE, "/api/links/two", None)
            .await
            .status(),
        204
    );
    let page = json_of(
        call(&app, &ann, Method::GET, "/api/audit?limit=3", None).await,
        200,
    )
    .await;
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries[0]["action"], "link.deleted");
    assert_eq!(entries[0]["target"], "two");
    assert_eq!(
        entries[0]["who"],
        format!("key {} (ci)", new_key["id"].as_str().unwrap_or_default())
    );
    assert_eq!(entries[0]["before"]["url"], "https://example.com/2");
    assert_eq!(entries[0]["after"], Value::Null);
    assert_eq!(entries[1]["action"], "member.joined");
    assert_eq!(entries[1]["who"], "bob@example.test");
    assert_eq!(entries[2]["action"], "member.invited");
    assert_eq!(entries[2]["who"], "ann@example.test");
    let ids: Vec<u64> = entries.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // The next pages hold the rest, back to the workspace's making, and nothing of the first.
    let mut actions: Vec<String> = Vec::new();
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(cursor) = next {
        let older = json_of(
            call(
                &app,
                &ann,
                Method::GET,
                &format!("/api/audit?limit=3&cursor={cursor}"),
                None,
            )
            .await,
            200,
        )
        .await;
        for e in older["entries"].as_array().expect("entries") {
            assert!(e["id"].as_u64() < ids.last().copied(), "{e}");
            actions.push(format!(
                "{} {}",
                e["action"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or("")
            ));
        }
        next = older["next"].as_str().map(str::to_owned);
    }
    assert_eq!(
        actions,
        [
            "link.created second.example.test/three".to_owned(),
            "domain.created second.example.test".into(),
            format!("key.created {}", new_key["id"].as_str().unwrap_or_default()),
            "link.created two".into(),
            format!("workspace.created {second}"),
        ]
    );
    // The first workspace's log is its own.
    let first = json_of(call(&app, &key, Method::GET, "/api/audit", None).await, 200).await;
    let first_actions: Vec<&str> = first["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(first_actions, ["link.created", "member.created"]);
    for bad in [
        "/api/audit?cursor=x",
        "/api/audit?limit=0",
        "/api/audit?limit=501",
    ] {
        let (status, _) =
            crate::support::json_error(call(&app, &ann, Method::GET, bad, None).await).await;
        assert_eq!(status, 400, "{bad}");
    }

    // An account in two workspaces is not disabled from one of them (it would be in both).
    let ann_id = first_members["members"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let res = call(
        &app,
        &key,
        Method::PATCH,
        &format!("/api/members/{ann_id}"),
        Some(json!({"disabled": true})),
    )
    .await;
    let (status, error) = crate::support::json_error(res).await;
    assert_eq!(
        (status, error.contains("other workspaces")),
        (403, true),
        "{error}"
    );
    // An admin makes no admin key (one acts as an owner); a links key, yes.
    let token = invite(&app, &ann, "ada@example.test", "admin").await;
    let (ada, _) = join(&app, &token, "ada's long password").await;
    for (scope, want) in [("admin", 403), ("links", 201)] {
        let res = call(
            &app,
            &ada,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "ada's", "scope": scope})),
        )
        .await;
        assert_eq!(res.status(), want, "{scope}");
    }
    // Joining with an account that exists takes its password, limited as sign-ins are.
    let invited = json_of(
        call(
            &app,
            &key,
            Method::POST,
            "/api/invitations",
            Some(json!({"email": "bob@example.test", "role": "member"})),
        )
        .await,
        201,
    )
    .await;
    let token = invited["url"]
        .as_str()
        .and_then(|u| u.split("invite=").nth(1))
        .expect("a token")
        .to_owned();
    let join = |password: &'static str| {
        let token = token.clone();
        let url = app.url("/api/signup");
        async move {
            bare()
                .post(url)
                .json(&json!({"invite": token, "email": "bob@example.test", "password": password}))
                .send()
                .await
                .expect("sent")
        }
    };
    for _ in 0..10 {
        let (status, error) = crate::support::json_error(join("a wrong guess").await).await;
        assert_eq!(status, 403, "{error}");
    }
    let limited = join("bob's long password").await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    app.stop().await;
    Ok(())
}

/// The feed of `who` (a key), from `last` when given.
async fn feed(app: &TestApp, key: &str, last: Option<&str>) -> SseClient {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("a header"),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let stream = SseClient::open(&client, &app.url("/api/events"), last).await;
    assert_eq!(stream.status, 200);
    stream
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_feed_replays_link_changes_on_resume_and_conflates_counts() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    let key = Who::Key(KEY.into());
    let mut live = feed(&app, KEY, None).await;
    let hello = live.next_named("hello", WAIT).await.expect("hello");
    assert_eq!(
        hello.data.as_ref().map(|d| d["workspace"].clone()),
        Some(json!("default"))
    );

    let link =
        |code: &str| Some(json!({"url": format!("https://example.com/{code}"), "code": code}));
    json_of(
        call(&app, &key, Method::POST, "/api/links", link("a")).await,
        201,
    )
    .await;
    let created = live
        .next_named("link.created", WAIT)
        .await
        .expect("link.created");
    let first_id = created.id.expect("an id");
    let data = created.data.expect("data");
    assert_eq!(
        (&data["code"], &data["domain"]),
        (&json!("a"), &json!("127.0.0.1"))
    );
    assert_eq!(data["link"]["url"], "https://example.com/a");
    assert!(
        data["who"].as_str().is_some_and(|w| w.starts_with("key ")),
        "{data}"
    );
    drop(live);

    // Changes made while nobody watched.
    json_of(
        call(
            &app,
            &key,
            Method::PATCH,
            "/api/links/a",
            Some(json!({"title": "A"})),
        )
        .await,
        200,
    )
    .await;
    json_of(
        call(&app, &key, Method::POST, "/api/links", link("b")).await,
        201,
    )
    .await;
    assert_eq!(
        call(&app, &key, Method::DELETE, "/api/links/b", None)
            .await
            .status(),
        204
    );

    // Coming back with the last id: each missed change once, in order, with its id; after a
    // restart too (the log is in the store).
    let app = {
        let dir = app.stop().await;
        spawn_with(Some(dir), |_| {}).await
    };
    let mut resumed = feed(&app, KEY, Some(&first_id.to_string())).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = resumed
            .next_where(WAIT, |e| {
                e.name.as_deref().is_some_and(|n| n.starts_with("link."))
            })
            .await?;
        let data = event.data.expect("data");
        seen.push((
            event.name.unwrap_or_default(),
            data["code"].as_str().unwrap_or("").to_owned(),
            data["link"]["title"].clone(),
        ));
        assert!(event.id > Some(first_id));
    }
    assert_eq!(
        seen,
        [
            ("link.updated".to_owned(), "a".to_owned(), json!("A")),
            ("link.created".into(), "b".into(), Value::Null),
            ("link.deleted".into(), "b".into(), Value::Null),
        ]
    );

    // 3,000 clicks on one link while the feed is open: a few frames, counts never back, the
    // last one exact.
    let clicks = 3000;
    let sender = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let client = crate::support::client();
            futures_util::future::join_all((0..16).map(|_| {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    for _ in 0..clicks / 16 + 1 {
                        let _ = client.get(format!("{base}/a")).send().await;
                    }
                }
            }))
            .await;
        })
    };
    let sent = (clicks / 16 + 1) * 16;
    let (mut frames, mut last) = (0, 0);
    while last < sent as u64 {
        let event = resumed.next_named("counts", WAIT).await.expect("counts");
        frames += 1;
        let links = event.data.expect("data")["links"].clone();
        let count = links
            .as_array()
            .and_then(|l| l.iter().find(|c| c["code"] == "a"))
            .and_then(|c| c["clickCount"].as_u64())
            .expect("a's count");
        assert!(count >= last, "a count went back: {count} after {last}");
        last = count;
    }
    sender.await?;
    assert_eq!(last, sent as u64);
    assert!(
        frames * 20 < sent,
        "{frames} frames for {sent} clicks: counts are not conflated"
    );

    // A `links` key's feed counts its own links only.
    let made = json_of(
        call(
            &app,
            &key,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "own links", "scope": "links"})),
        )
        .await,
        201,
    )
    .await;
    let own_key = made["key"].as_str().expect("a key").to_owned();
    json_of(
        call(
            &app,
            &Who::Key(own_key.clone()),
            Method::POST,
            "/api/links",
            link("mine"),
        )
        .await,
        201,
    )
    .await;
    let mut own = feed(&app, &own_key, None).await;
    own.next_named("hello", WAIT).await.expect("hello");
    for code in ["a", "mine"] {
        assert_eq!(app.click(code).await.status(), 302);
    }
    let counts = own.next_named("counts", WAIT).await.expect("counts");
    let codes: Vec<&str> = counts
        .data
        .as_ref()
        .and_then(|d| d["links"].as_array())
        .expect("links")
        .iter()
        .filter_map(|l| l["code"].as_str())
        .collect();
    assert_eq!(codes, ["mine"]);
    // An id this workspace never gave cannot be resumed from: the watcher is told to reload.
    let mut stranger = feed(&app, KEY, Some("999999")).await;
    assert!(stranger.next_named("reset", WAIT).await.is_some());

    // A Last-Event-ID that is not a number is refused with JSON.
    let res = bare()
        .get(app.url("/api/events"))
        .bearer_auth(KEY)
        .header("last-event-id", "x")
        .send()
        .await?;
    let (status, error) = crate::support::json_error(res).await;
    assert_eq!((status, error.contains("Last-Event-ID")), (400, true));
    let res = bare().get(app.url("/api/events")).send().await?;
    assert_eq!(res.status(), 401);
    app.stop().await;
    Ok(())
}

/// The app on a port chosen before it starts (the provider must know its callback).
pub async fn app_with_provider() -> (TestApp, Provider) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = Provider::start(
        "linkpulse",
        "provider secret",
        &format!("{base}/auth/oidc/callback"),
    )
    .await
    .expect("the provider starts");
    let issuer = provider.issuer.clone();
    let app = spawn_with(None, |config| {
        config.listen = format!("127.0.0.1:{port}").parse().expect("an address");
        config.base_url = Some(base.clone());
        config.oidc_issuer = Some(issuer);
        config.oidc_client_id = Some("linkpulse".into());
        config.oidc_client_secret = Some("provider secret".into());
    })
    .await;
    (app, provider)
}

/// Starts a sign-in at the app: the provider's URL and the browser's `lp_oidc` cookie.
async fn start_sign_in(app: &TestApp) -> (String, String) {
    let res = bare()
        .get(app.url("/auth/oidc"))
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 302);
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("lp_oidc="))
        .and_then(|v| v.split(';').next())
        .expect("the start cookie")
        .to_owned();
    let location = res.headers()["location"]
        .to_str()
        .expect("a location")
        .to_owned();
    (location, cookie)
}

async fn callback(_app: &TestApp, url: &str, cookie: &str) -> reqwest::Response {
    bare()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .expect("sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_person_signs_in_with_the_openid_provider_and_tampering_is_refused() -> TestResult
{
    let (app, _provider) = app_with_provider().await;
    let methods = json_of(bare().get(app.url("/api/auth/methods")).send().await?, 200).await;
    assert_eq!(methods["oidc"], "/auth/oidc");

    // Nobody here has the email: refused, no session.
    let (to_provider, cookie) = start_sign_in(&app).await;
    let back = provider_sign_in(&to_provider, "stranger@example.test").await?;
    let res = callback(&app, &back, &cookie).await;
    assert_eq!(res.status(), 403);
    assert!(crate::support::session_cookie(&res).is_none());
    assert!(res.text().await?.contains("stranger@example.test"));

    // Invited by email: the provider's verified email signs them up with the invitation's role.
    let invited = json_of(
        call(
            &app,
            &Who::Key(KEY.into()),
            Method::POST,
            "/api/invitations",
            Some(json!({"email": "cy@example.test", "role": "member"})),
        )
        .await,
        201,
    )
    .await;
    assert!(invited["url"].is_string());

    // A state changed on the way back, or a callback in a browser that did not start it.
    let (to_provider, cookie) = start_sign_in(&app).await;
    let back = provider_sign_in(&to_provider, "cy@example.test").await?;
    let state = back
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("a state")
        .to_owned();
    let tampered = back.replace(&format!("state={state}"), "state=forged");
    for (url, cookie) in [
        (tampered.as_str(), cookie.as_str()),
        (back.as_str(), "lp_oidc=another"),
    ] {
        let res = callback(&app, url, cookie).await;
        assert_eq!(res.status(), 400, "{url}");
        assert!(crate::support::session_cookie(&res).is_none());
    }
    // A nonce changed on the way to the provider: the ID token's nonce does not match.
    let (to_provider, cookie) = start_sign_in(&app).await;
    let nonce = to_provider
        .split("nonce=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("a nonce")
        .to_owned();
    let back = provider_sign_in(
        &to_provider.replace(&format!("nonce={nonce}"), "nonce=forged"),
        "cy@example.test",
    )
    .await?;
    let res = callback(&app, &back, &cookie).await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await?.contains("nonce"));
    let members = json_of(
        call(
            &app,
            &Who::Key(KEY.into()),
            Method::GET,
            "/api/members",
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        members["members"],
        json!([]),
        "nothing was made by the refused sign-ins"
    );

    // The real thing: signed in, a member, and the same callback again is refused.
    let (to_provider, cookie) = start_sign_in(&app).await;
    let back = provider_sign_in(&to_provider, "cy@example.test").await?;
    let res = callback(&app, &back, &cookie).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/");
    let session = Who::Cookie(crate::support::session_cookie(&res).expect("a session"));
    let me = json_of(
        call(&app, &session, Method::GET, "/api/session", None).await,
        200,
    )
    .await;
    assert_eq!(
        (&me["user"]["email"], &me["user"]["role"]),
        (&json!("cy@example.test"), &json!("member"))
    );
    assert_eq!(callback(&app, &back, &cookie).await.status(), 400);
    // Signing in again later finds the user made.
    let (to_provider, cookie) = start_sign_in(&app).await;
    let back = provider_sign_in(&to_provider, "cy@example.test").await?;
    assert_eq!(callback(&app, &back, &cookie).await.status(), 303);
    app.stop().await;
    Ok(())
}
