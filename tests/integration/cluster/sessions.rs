//! A session in a cluster: made on one node, honoured by another, and once signed out on
//! either, refused by both at their next request (sessions are read from the store).

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::json;

use super::{BIN, Nats, Node, ONE_AT_A_TIME};
use crate::support::TestResult;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_node_is_honoured_and_ended_on_every_node() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    let mut made = Command::new(BIN)
        .args([
            "users",
            "create",
            "--email",
            "ops@example.test",
            "--role",
            "admin",
        ])
        .args(["--password-stdin", "--nats", &nats.urls()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    made.stdin
        .take()
        .ok_or("stdin")?
        .write_all(b"a long enough password\n")?;
    let out = made.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let res = a
        .client
        .post(a.url("/api/session"))
        .json(&json!({"email": "ops@example.test", "password": "a long enough password"}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let cookie = crate::support::session_cookie(&res).ok_or("a cookie")?;
    let on = |node: &Node| {
        node.client
            .get(node.url("/api/links"))
            .header("cookie", cookie.clone())
            .send()
    };
    assert_eq!(on(&b).await?.status(), 200, "honoured by the other node");
    let res = b
        .client
        .delete(b.url("/api/session"))
        .header("cookie", cookie.clone())
        .header("origin", b.base.clone())
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    assert_eq!(
        on(&a).await?.status(),
        401,
        "ended on the node that made it too"
    );
    assert_eq!(on(&b).await?.status(), 401);
    Ok(())
}
