//! A node killed under load: nginx moves its codes to the other nodes, which go on counting
//! from the stream. Strict durability loses no acknowledged click; the default loses at most
//! the clicks it had not stored (bounded by `--click-backlog`). Every node then reads the same
//! count, stored events and aggregates.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Nats, Nginx, Node, ONE_AT_A_TIME, consistent, count, create};
use crate::support::{KEY, TestResult};

const CODES: usize = 24;
const CLIENTS: usize = 16;
const CLICKS_EACH: usize = 250;
const BACKLOG: u64 = 500;

/// One redirect of the load. Its tag, a URL unique to the request sent as its `Referer`, is
/// kept by the click it makes (the clicks API lists it as `referer`), so each stored click
/// names the request it came from.
struct Sent {
    tag: String,
    code: String,
    /// The answer's status; 0 when none came.
    status: u16,
    sent: Instant,
    answered: Instant,
}

/// One tagged redirect through `base`.
async fn tagged_click(client: &reqwest::Client, base: &str, code: &str, tag: &str) -> u16 {
    match client
        .get(format!("{base}/{code}"))
        .header("Referer", tag)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(res) => res.status().as_u16(),
        Err(_) => 0,
    }
}

/// Every stored click of `code` (read through `base`, a page at a time).
async fn stored_clicks(client: &reqwest::Client, base: &str, code: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{base}/api/links/{code}/clicks?limit=1000");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let res = client
            .get(url)
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("clicks sent");
        assert_eq!(res.status(), 200, "listing the clicks of {code}");
        let body: Value = res.json().await.expect("a JSON click list");
        let page = body["clicks"].as_array().cloned().expect("a clicks array");
        let Some(lowest) = page.last().and_then(|c| c["seq"].as_u64()) else {
            break;
        };
        all.extend(page);
        if lowest <= 1 {
            break;
        }
        before = Some(lowest);
    }
    all
}

async fn load_and_kill(durability: &str, kill_servers: bool) -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nats = Nats::start(3);
    // A node killed: the backlog bound is what default durability may lose, kept small here.
    // A server killed: the nodes hold their clicks through JetStream's failover (a few
    // seconds), within the default bound, and lose none.
    let backlog = if kill_servers { "50000" } else { "500" };
    let args = ["--durability", durability, "--click-backlog", backlog];
    let mut a = Node::start(&nats, "a", &args);
    let b = Node::start(&nats, "b", &args);
    let c = Node::start(&nats, "c", &args);
    let nginx = Nginx::start(&[&a, &b, &c]);
    let codes: Vec<String> = (0..CODES).map(|i| format!("load{i}")).collect();
    for code in &codes {
        create(&a.client, &nginx.base, code).await;
    }
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let (codes, base, answered) = (codes.clone(), nginx.base.clone(), answered.clone());
        let client = crate::support::client();
        tasks.push(tokio::spawn(async move {
            let mut log = Vec::with_capacity(CLICKS_EACH);
            for i in 0..CLICKS_EACH {
                let code = codes[(t * 7 + i * 13) % codes.len()].clone();
                let tag = format!("https://failover.test/{t}/{i}");
                let sent = Instant::now();
                let status = tagged_click(&client, &base, &code, &tag).await;
                if status == 302 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                log.push(Sent {
                    tag,
                    code,
                    status,
                    sent,
                    answered: Instant::now(),
                });
            }
            log
        }));
    }
    // A third of the way in, the crash.
    let third = (CLIENTS * CLICKS_EACH / 3) as u64;
    while answered.load(Ordering::Relaxed) < third {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kill_from = Instant::now();
    if kill_servers {
        nats.kill(0);
    } else {
        a.kill();
    }
    // The process is gone (reaped) by now.
    let kill_to = Instant::now();
    let mut sent: Vec<Sent> = Vec::new();
    for task in tasks {
        sent.extend(task.await?);
    }
    let acked = sent.iter().filter(|s| s.status == 302).count() as u64;
    let total = sent.len() as u64;
    // Most clicks were answered: the balancer moved the dead node's codes.
    assert!(
        acked * 10 >= total * 9,
        "{acked} of {total} clicks answered 302 after the crash"
    );
    // Let the survivors store what they hold, then read every code through each of them.
    let survivors: Vec<&Node> = if kill_servers {
        vec![&a, &b, &c]
    } else {
        vec![&b, &c]
    };
    // Clicks a node answered during the failover may still be held by its writer: a read on
    // another node cannot see them until they are stored.
    for node in &survivors {
        super::eventually(
            Duration::from_secs(60),
            "every survivor has stored the clicks it holds",
            || async { node.metric("linkpulse_backlog_clicks").await == 0 },
        )
        .await;
    }
    let reader = survivors[0];
    let by_tag: HashMap<&str, &Sent> = sent.iter().map(|s| (s.tag.as_str(), s)).collect();
    // How often each tag is stored.
    let mut stored_times: HashMap<&str, u64> = HashMap::new();
    for code in &codes {
        let n = consistent(&reader.client, &nginx.base, code).await;
        for node in &survivors {
            super::eventually(
                Duration::from_secs(10),
                "every node reads the count",
                || async { count(&node.client, &node.base, code).await == n },
            )
            .await;
        }
        let clicks = stored_clicks(&reader.client, &nginx.base, code).await;
        assert_eq!(clicks.len() as u64, n, "{code}: one stored click per count");
        for click in &clicks {
            let tag = click["referer"].as_str().unwrap_or_default();
            let (&tag, request) = by_tag
                .get_key_value(tag)
                .unwrap_or_else(|| panic!("{code}: a stored click no request made: {click}"));
            assert_eq!(
                &request.code, code,
                "{tag} was sent to {} but stored under {code}",
                request.code
            );
            *stored_times.entry(tag).or_default() += 1;
        }
    }
    // Check each request by its tag. A request nginx sent on to another node after the node
    // died, having been stored by the dead one, is stored twice: only one in flight at the
    // kill of a node can be. A NATS server's death makes no node retry anything twice.
    let may_be_doubled = |s: &Sent| !kill_servers && s.sent < kill_to && s.answered > kill_from;
    let (mut lost, mut doubled) = (Vec::new(), Vec::new());
    for request in &sent {
        let times = stored_times.get(request.tag.as_str()).copied().unwrap_or(0);
        if times > 1 {
            assert!(
                times == 2 && may_be_doubled(request),
                "{}: stored {times} times (answered {}, {:?} after the kill began)",
                request.tag,
                request.status,
                request.answered.saturating_duration_since(kill_from)
            );
            doubled.push(request.tag.as_str());
        }
        if request.status == 302 && times == 0 {
            lost.push(request);
        }
    }
    assert!(
        doubled.len() <= CLIENTS,
        "more clicks stored twice ({}) than requests in flight at the kill: {doubled:?}",
        doubled.len()
    );
    let lost_tags: Vec<&str> = lost.iter().map(|s| s.tag.as_str()).collect();
    if durability == "strict" || kill_servers {
        assert!(
            lost.is_empty(),
            "{} acknowledged clicks not stored: {lost_tags:?}",
            lost.len()
        );
    } else {
        // Only what the killed node held may be lost.
        assert!(
            lost.len() as u64 <= BACKLOG,
            "default durability lost more than the backlog: {} acknowledged clicks not \
             stored",
            lost.len()
        );
        // A request sent once the node was gone was acknowledged by a node that lives.
        for request in &lost {
            assert!(
                request.sent < kill_to,
                "{}: sent {:?} after the kill, acknowledged, and lost",
                request.tag,
                request.sent.saturating_duration_since(kill_to)
            );
        }
    }
    eprintln!(
        "{durability}{}: {total} sent, {acked} acknowledged, {} lost, {} stored twice",
        if kill_servers {
            ", a NATS server killed"
        } else {
            ", a node killed"
        },
        lost.len(),
        doubled.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_strict_load_loses_no_acknowledged_click() -> TestResult {
    load_and_kill("strict", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_default_load_loses_at_most_its_backlog() -> TestResult {
    load_and_kill("default", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_nats_servers_killed_under_load_loses_nothing() -> TestResult {
    load_and_kill("default", true).await
}
