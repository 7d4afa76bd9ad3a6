//! The cluster engine against a real `nats-server` (Debian's; `.ci/run` installs it).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{NatsConfig, NatsStore};
use crate::{
    domain::{Scope, now_ms},
    store::{Backend, KeyRecord, records::RECORD_VERSION},
};

/// A single JetStream server on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    /// The server's monitoring port (`/varz`).
    monitor: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        let (port, monitor) = (free_port(), free_port());
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            _dir: dir,
        }
    }

    /// How many messages clients have sent the server so far (every JetStream request is one),
    /// from its monitoring endpoint.
    async fn messages_in(&self) -> u64 {
        let varz: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{}/varz", self.monitor))
                .await
                .and_then(reqwest::Response::error_for_status)
                .expect("the server's /varz")
                .json()
                .await
                .expect("/varz is JSON");
        varz["in_msgs"].as_u64().expect("in_msgs")
    }

    async fn node(&self) -> NatsStore {
        NatsStore::connect(&NatsConfig {
            urls: self.url.clone(),
            replicas: 1,
            link_cache: 1_000,
        })
        .await
        .expect("a node connects")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_another_node_is_not_brought_back_by_a_last_used_save() {
    let server = Server::start();
    let (a, b) = (server.node().await, server.node().await);
    let hash = [7u8; 32];
    let record = KeyRecord {
        v: RECORD_VERSION,
        id: "k7".into(),
        name: "shared".into(),
        admin: false,
        created_at: now_ms(),
        scope: Some(Scope::Links),
        last_used_at: None,
        workspace: None,
    };
    a.put_api_key(hash, &record).expect("stored");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.api_keys().expect("read").is_empty() {
        assert!(Instant::now() < deadline, "b sees the key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.revoke_api_key(hash).expect("revoked"));
    // Node a has not heard of the revocation yet (its watch is a moment behind) and saves
    // the key's last-used time.
    a.inner.keys.insert(hash, record.clone());
    let used = KeyRecord {
        last_used_at: Some(now_ms()),
        ..record
    };
    a.put_api_keys(&[(hash, used)]).expect("saved");
    let fresh = server.node().await;
    assert!(
        fresh.api_keys().expect("read").is_empty(),
        "the revoked key stays revoked"
    );
}

/// A click of `code` as this test stores it (the moment tells batches apart).
fn click(seq: u64, at: i64) -> crate::domain::ClickEvent {
    crate::domain::ClickEvent {
        at,
        ..crate::domain::ClickEvent::plain(seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_acknowledgement_was_lost_is_stored_once_even_past_the_duplicate_window() {
    use std::{ops::ControlFlow, sync::Arc};

    use async_nats::jetstream::message::PublishMessage;

    use super::{
        clicks::encode_batch,
        clicks_subject,
        writer::{
            Tip,
            publish::{Admission, publish_run},
        },
    };
    use crate::store::writer::{Health, group::Item};

    let server = Server::start();
    let node = server.node().await;
    // JetStream forgets message ids after this: the lost acknowledgement is found without it.
    shorten_duplicate_window(&node, Duration::from_millis(300)).await;
    let code = link_on(&node, "lost").await;
    let health = Health::default();

    // Click 1, stored as the writer stores it.
    let first = [Item::Fresh(click(0, 1))];
    let (tip, _, _) = publish_run(
        &node,
        &code,
        &first,
        Admission::NONE,
        Some(Tip::default()),
        &health,
    )
    .await
    .expect("click 1 stored");
    // Clicks 2 and 3: the very message the writer publishes, stored, its acknowledgement lost.
    let lost = [click(2, 2), click(3, 3)];
    let id = format!("{}:{}:{}:{}", node.inner.node, code, tip.stream_seq, 2);
    let publish = |events: &[crate::domain::ClickEvent], after: u64, id: &str, from: &str| {
        PublishMessage::build()
            .payload(encode_batch(events))
            .expected_last_subject_sequence(after)
            .message_id(id)
            .header("Lp-Node", from)
    };
    let stored = node
        .inner
        .js
        .send_publish(
            clicks_subject("lost"),
            publish(&lost, tip.stream_seq, &id, &node.inner.node),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    // Another node stores click 4 after it.
    node.inner
        .js
        .send_publish(
            clicks_subject("lost"),
            publish(&[click(4, 4)], stored.sequence, "other:lost:x:4", "other"),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The writer publishes the lost message again.
    let again: Vec<Item> = lost
        .iter()
        .cloned()
        .map(|e| Item::Numbered(Arc::new(e)))
        .collect();
    let (_, superseded, _) = publish_run(&node, &code, &again, Admission::NONE, Some(tip), &health)
        .await
        .expect("taken as stored");
    assert!(
        superseded,
        "another node's click followed: the actor's count is stale"
    );
    let mut seqs = Vec::new();
    node.walk_clicks("lost", 0, &mut |event| {
        seqs.push(event.seq);
        ControlFlow::Continue(())
    })
    .expect("walked");
    assert_eq!(seqs, vec![1, 2, 3, 4], "each click stored once");
}

/// Makes JetStream forget message ids after `window` on the clicks stream.
async fn shorten_duplicate_window(node: &NatsStore, window: Duration) {
    let mut stream = node.inner.clicks.clone();
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.duplicate_window = window;
    node.inner
        .js
        .update_stream(config)
        .await
        .expect("a short duplicate window");
}

/// Stores a link on `code` as the writer does, and returns the code.
async fn link_on(node: &NatsStore, code: &str) -> crate::domain::ShortCode {
    use crate::{
        domain::{Link, ShortCode, TargetUrl},
        store::records,
    };
    let code = ShortCode::parse(code).expect("a code");
    let link = Link::new(
        code.clone(),
        TargetUrl::parse("https://example.com/target").expect("a target"),
        "k".into(),
        now_ms(),
    );
    node.inner
        .links_kv
        .create(code.as_str(), records::encode_link(&link).into())
        .await
        .expect("the link stored");
    node.inner.remember(std::sync::Arc::new(link));
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_deep_in_a_long_click_log_is_read_in_a_few_requests_not_one_per_message() {
    let server = Server::start();
    let node = long_log(&server, "deep", 2_000).await;
    let before = server.messages_in().await;
    let page =
        tokio::task::block_in_place(|| node.clicks("deep", Some(1_991), 10)).expect("a page read");
    let requests = server.messages_in().await - before;
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1_981..=1_990).rev().collect::<Vec<_>>(),
        "the page asked for"
    );
    // Finding where click 1,981 is takes a binary search over the stream (about 12 reads),
    // the page 10; walking the code's messages from its first would take about 2,000.
    assert!(
        requests < 60,
        "{requests} requests to the server for one page of 10 clicks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_over_a_long_click_log_gets_many_messages_a_request() {
    use std::ops::ControlFlow;

    const MESSAGES: u64 = 2_000;
    let server = Server::start();
    let node = long_log(&server, "long", MESSAGES).await;
    // An actor starting with no snapshot folds every click of its code, as here.
    let before = server.messages_in().await;
    let mut seqs = Vec::new();
    tokio::task::block_in_place(|| {
        node.walk_clicks("long", 0, &mut |event| {
            seqs.push(event.seq);
            ControlFlow::Continue(())
        })
    })
    .expect("walked");
    let requests = server.messages_in().await - before;
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "every click, in order"
    );
    assert!(
        requests < 200,
        "{requests} requests to the server to walk {MESSAGES} messages"
    );
}

/// A node on `server` with a link on `code` whose clicks are `messages` messages of one click
/// each (as a link clicked now and then is stored), with another code's messages between them.
async fn long_log(server: &Server, code: &str, messages: u64) -> NatsStore {
    use super::{clicks::encode_batch, clicks_subject};

    let node = server.node().await;
    link_on(&node, code).await;
    for seq in 1..=messages {
        for (subject, events) in [(code, [click(seq, seq as i64)]), ("other", [click(seq, 0)])] {
            node.inner
                .js
                .publish(clicks_subject(subject), encode_batch(&events))
                .await
                .expect("sent")
                .await
                .expect("stored");
        }
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_codes_go_in_one_atomic_batch_and_a_refused_batch_leaves_each_code_to_be_stored_alone()
{
    use std::{collections::HashMap, ops::ControlFlow, sync::Arc};

    use async_nats::jetstream::message::PublishMessage;

    use super::{
        clicks::encode_batch,
        clicks_subject,
        writer::batch::testing::{alone, batched},
    };
    use crate::store::writer::group::{Item, Outcome, Pending};

    let pending = |code: &crate::domain::ShortCode, item: Item| Pending {
        items: vec![item],
        ..Pending::new(code.clone())
    };
    let server = Server::start();
    let node = server.node().await;
    assert!(
        node.inner.atomic,
        "the clicks stream takes atomic batches (nats-server 2.12 or later on PATH)"
    );
    let codes = [
        link_on(&node, "ba").await,
        link_on(&node, "bb").await,
        link_on(&node, "bc").await,
    ];

    // First clicks of three codes: one batch, one request, each code's message where the
    // commit says.
    let mut group: Vec<Pending> = codes
        .iter()
        .map(|c| pending(c, Item::Fresh(click(0, 1))))
        .collect();
    let tips: HashMap<_, _> = batched(&node, &mut group, &HashMap::new())
        .await
        .into_iter()
        .collect();
    assert_eq!(tips.len(), 3, "every code stored in the batch");
    // As the server stored them: one batch of three, the last of them the commit.
    let mut batch = Vec::new();
    for code in &codes {
        let stored = node
            .inner
            .clicks
            .get_last_raw_message_by_subject(&clicks_subject(code.as_str()))
            .await
            .expect("a stored message");
        let header = |name: &str| {
            stored
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        batch.push((
            header("Nats-Batch-Id"),
            header("Nats-Batch-Sequence"),
            header("Nats-Batch-Commit"),
        ));
    }
    let id = batch[0].0.clone();
    assert!(!id.is_empty(), "stored as a batch: {batch:?}");
    assert_eq!(
        batch,
        [
            (id.clone(), "1".into(), String::new()),
            (id.clone(), "2".into(), String::new()),
            (id, "3".into(), "1".into()),
        ]
    );
    for code in &codes {
        let (stream_seq, last, _) = node.last_batch(code.as_str()).await.expect("read");
        assert_eq!(tips[code].stream_seq, stream_seq, "{code}: its message");
        assert_eq!((tips[code].last, last.map(|e| e.seq)), (1, Some(1)));
    }
    assert!(group.iter().all(|p| matches!(
        p.outcome,
        Outcome::Stored {
            last: 1,
            superseded: false
        }
    )));

    // Another node stores click 2 of "bb": a batch expecting "bb"'s click 1 last is refused
    // whole, and leaves every code waiting.
    node.inner
        .js
        .send_publish(
            clicks_subject("bb"),
            PublishMessage::build()
                .payload(encode_batch(&[click(2, 5)]))
                .expected_last_subject_sequence(tips[&codes[1]].stream_seq)
                .header("Lp-Node", "other"),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    let mut group: Vec<Pending> = codes
        .iter()
        .map(|c| pending(c, Item::Numbered(Arc::new(click(2, 9)))))
        .collect();
    assert!(batched(&node, &mut group, &tips).await.is_empty());
    assert!(group.iter().all(|p| p.outcome == Outcome::Waiting));
    // A code this writer has not seen, whose first click another node stored: its first
    // click here, expecting no message yet, is refused with the whole batch too.
    let fresh = link_on(&node, "bd").await;
    node.inner
        .js
        .send_publish(
            clicks_subject("bd"),
            PublishMessage::build()
                .payload(encode_batch(&[click(1, 5)]))
                .expected_last_subject_sequence(0)
                .header("Lp-Node", "other"),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    let mut first = vec![
        pending(&fresh, Item::Fresh(click(0, 6))),
        pending(&codes[0], Item::Numbered(Arc::new(click(2, 6)))),
    ];
    assert!(
        batched(&node, &mut first, &tips).await.is_empty(),
        "a batch expecting no message of a code that has one is refused"
    );
    // Alone, each is numbered after what is stored.
    for p in &mut group {
        let tip = tips.get(&p.code).copied();
        alone(&node, p, tip).await.expect("stored");
    }
    let outcomes: Vec<Outcome> = group.iter().map(|p| p.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Stored {
                last: 2,
                superseded: false
            },
            Outcome::Stored {
                last: 3,
                superseded: true
            },
            Outcome::Stored {
                last: 2,
                superseded: false
            },
        ]
    );
    for (code, want) in codes.iter().zip([vec![1, 2], vec![1, 2, 3], vec![1, 2]]) {
        let mut seqs = Vec::new();
        node.walk_clicks(code.as_str(), 0, &mut |event| {
            seqs.push(event.seq);
            ControlFlow::Continue(())
        })
        .expect("walked");
        assert_eq!(seqs, want, "{code}: each click once, in order");
    }
}
