//! One client cannot take all the places: per client address caps on open streams (on both
//! stream transports) and on open connections (in the accept loop), answered `429` with
//! `Retry-After` and a JSON error; another address is served meanwhile, and a place comes back
//! when its stream or connection closes. 127.0.0.3 and 127.0.0.2 are two clients (the test
//! helpers' own reqwest client, which keeps its connections, is 127.0.0.1).

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::{
    support::{TestApp, TestResult, spawn_with},
    wire::{Answer, WAIT, closed_by_server, connect_from, exchange, get, kept_alive_from},
};

const ONE: [u8; 4] = [127, 0, 0, 3];
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A stream of `code` asked for from `from` on a fresh connection: the lean writer.
async fn lean_stream(app: &TestApp, from: [u8; 4], code: &str) -> (TcpStream, Answer) {
    let mut conn = connect_from(from, app.addr).await.expect("connects");
    let answer = exchange(&mut conn, &get(&format!("/realtime/{code}")))
        .await
        .expect("an answer");
    (conn, answer)
}

/// A stream of `code` asked for from `from` on a connection that already carried a request:
/// salvo.
async fn salvo_stream(app: &TestApp, from: [u8; 4], code: &str) -> (TcpStream, Answer) {
    let mut conn = kept_alive_from(from, app.addr).await;
    let answer = exchange(&mut conn, &get(&format!("/realtime/{code}")))
        .await
        .expect("an answer");
    (conn, answer)
}

/// `429`, `Retry-After`, and a JSON error naming what is full.
fn assert_too_many(answer: &Answer, what: &str, context: &str) {
    assert_eq!(answer.status, 429, "{context}: {}", answer.head);
    assert_eq!(answer.header("retry-after"), Some("5"), "{context}");
    let message = answer.json_error();
    assert!(
        message.starts_with(&format!("too many open {what} from this address")),
        "{context}: {message}"
    );
}

/// Retries `open` until it is served a stream, within [`WAIT`].
async fn eventually_served<F, Fut>(what: &str, mut open: F) -> TcpStream
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (TcpStream, Answer)>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let (conn, answer) = open().await;
        if answer.is_stream() {
            return conn;
        }
        assert_eq!(answer.status, 429, "{what}: {}", answer.head);
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn over_the_stream_cap_a_client_gets_429_on_both_transports_and_others_are_served()
-> TestResult {
    let app = spawn_with(None, |c| {
        c.sse_max_per_client = 2;
        c.sse_heartbeat = Duration::from_secs(3600);
    })
    .await;
    app.create_link("cap").await;

    // The cap is shared by both transports: one stream each fills it.
    let (lean, answer) = lean_stream(&app, ONE, "cap").await;
    assert!(answer.is_stream(), "{}", answer.head);
    let (salvo, answer) = salvo_stream(&app, ONE, "cap").await;
    assert!(answer.is_stream(), "{}", answer.head);

    let (_, answer) = lean_stream(&app, ONE, "cap").await;
    assert_too_many(&answer, "streams", "a third stream, lean writer");
    assert_eq!(answer.header("connection"), Some("close"));
    let (mut refused, answer) = salvo_stream(&app, ONE, "cap").await;
    assert_too_many(&answer, "streams", "a third stream, salvo");
    // The connection itself is still good for other requests.
    let health = exchange(&mut refused, &get("/healthz")).await;
    assert_eq!(health.map(|a| a.status), Some(200));

    // Another address is served on both transports meanwhile.
    let (_other_lean, answer) = lean_stream(&app, OTHER, "cap").await;
    assert!(answer.is_stream(), "another address, lean: {}", answer.head);
    let (_other_salvo, answer) = salvo_stream(&app, OTHER, "cap").await;
    assert!(
        answer.is_stream(),
        "another address, salvo: {}",
        answer.head
    );

    // A closed stream gives its place back, whichever transport served it.
    drop(lean);
    let again = eventually_served("the lean stream's place back", || {
        salvo_stream(&app, ONE, "cap")
    })
    .await;
    drop(salvo);
    let _again_lean = eventually_served("the salvo stream's place back", || {
        lean_stream(&app, ONE, "cap")
    })
    .await;
    let (_, answer) = lean_stream(&app, ONE, "cap").await;
    assert_too_many(&answer, "streams", "full again");
    drop(again);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn over_the_connection_cap_a_client_gets_429_and_others_are_served() -> TestResult {
    let app = spawn_with(None, |c| {
        c.max_connections_per_client = 3;
        c.header_timeout = Duration::from_secs(60);
    })
    .await;
    app.create_link("conn").await;
    // Three connections from one address, one of them a stream.
    let mut held = vec![
        kept_alive_from(ONE, app.addr).await,
        kept_alive_from(ONE, app.addr).await,
    ];
    let mut stream = connect_from(ONE, app.addr).await?;
    let answer = exchange(&mut stream, &get("/realtime/conn")).await;
    assert!(answer.is_some_and(|a| a.is_stream()));

    // The fourth is answered at once and closed, whatever it asks for.
    for request in [get("/healthz"), get("/conn"), get("/realtime/conn")] {
        let mut fourth = connect_from(ONE, app.addr).await?;
        let answer = exchange(&mut fourth, &request)
            .await
            .ok_or("no answer: closed without one")?;
        assert_too_many(&answer, "connections", "a fourth connection");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(
            closed_by_server(&mut fourth).await,
            "closed after the answer"
        );
    }
    assert_eq!(
        app.count("conn").await,
        0,
        "a refused redirect counts nothing"
    );

    // Another address is served meanwhile.
    let mut other = connect_from(OTHER, app.addr).await?;
    let answer = exchange(&mut other, &get("/healthz")).await;
    assert_eq!(answer.map(|a| a.status), Some(200));

    // A closed connection gives its place back; so does a closed stream.
    held.pop();
    let deadline = Instant::now() + WAIT;
    let mut back = loop {
        let mut conn = connect_from(ONE, app.addr).await?;
        let answer = exchange(&mut conn, &get("/healthz")).await;
        match answer.map(|a| a.status) {
            Some(200) => break conn,
            Some(429) => {}
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(stream);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut conn = connect_from(ONE, app.addr).await?;
        if exchange(&mut conn, &get("/healthz"))
            .await
            .map(|a| a.status)
            == Some(200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = exchange(&mut back, &get("/healthz")).await;
    assert_eq!(
        answer.map(|a| a.status),
        Some(200),
        "kept connections serve on"
    );
    drop(held);
    app.stop().await;
    Ok(())
}

/// Behind a trusted proxy every connection comes from the proxy: streams are capped by the
/// forwarded address (on both transports), connections are not capped per address (four from
/// one address are served with a cap of one).
#[tokio::test]
async fn behind_a_trusted_proxy_streams_are_capped_by_the_forwarded_address() -> TestResult {
    let app = spawn_with(None, |c| {
        c.trust_forwarded_for = true;
        c.sse_max_per_client = 1;
        c.max_connections_per_client = 1;
        c.sse_heartbeat = Duration::from_secs(3600);
    })
    .await;
    app.create_link("proxy").await;
    let request = |client: &str| {
        format!(
            "GET /realtime/proxy HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.9, {client}\r\n\r\n"
        )
        .into_bytes()
    };
    let mut first = connect_from(ONE, app.addr).await?;
    let answer = exchange(&mut first, &request("192.0.2.1")).await;
    assert!(answer.is_some_and(|a| a.is_stream()), "first stream");

    let mut lean = connect_from(ONE, app.addr).await?;
    let answer = exchange(&mut lean, &request("192.0.2.1"))
        .await
        .ok_or("no answer")?;
    assert_too_many(&answer, "streams", "same forwarded address, lean");
    let mut salvo = kept_alive_from(ONE, app.addr).await;
    let answer = exchange(&mut salvo, &request("192.0.2.1"))
        .await
        .ok_or("no answer")?;
    assert_too_many(&answer, "streams", "same forwarded address, salvo");

    let mut other = kept_alive_from(ONE, app.addr).await;
    let answer = exchange(&mut other, &request("192.0.2.2")).await;
    assert!(
        answer.is_some_and(|a| a.is_stream()),
        "another forwarded address, salvo"
    );
    drop(first);
    app.stop().await;
    Ok(())
}
