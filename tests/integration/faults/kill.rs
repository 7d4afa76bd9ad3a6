//! SIGKILL under load, in default and strict durability, once and five times over one data
//! directory. The load mixes user agents (a bot among them), referrers and countries, so the
//! aggregates rebuilt after each kill are checked list by list against the click log.

use std::{path::Path, time::Duration};

use super::process::{
    COUNTRY_HEADER, Res, Tally, assert_aggregates_match_log, click_log, create_code, known_counts,
    serving, start_load, stored_counts, whole_life_stats,
};
use crate::support::{TestResult, client};

// ---------------------------------------------------------------------------------------------
// SIGKILL under load.

/// One round: start, load, SIGKILL mid-load, restart (the binary recovers the store), read the
/// counts it serves, stop it cleanly, read the store.
struct KillRound {
    /// Counts served before the load.
    before: Vec<u64>,
    tallies: Vec<Tally>,
    /// Counts served by the restarted process.
    served_after: Vec<u64>,
    /// Whole-life stats served by the restarted process.
    stats_after: Vec<serde_json::Value>,
    /// Every stored click of each code, as the restarted process lists them.
    clicks_after: Vec<Vec<serde_json::Value>>,
    /// (count, click events) in the store after the clean stop of the restarted process.
    stored: Vec<(u64, u64)>,
}

async fn kill_round(
    dir: &Path,
    args: &[&str],
    codes: &[&str],
    create: bool,
    load_for: Duration,
) -> Res<KillRound> {
    let http = client();
    // Aggregates snapshots all through the load, so a kill falls between two of them and the
    // restart folds in the clicks after the last one. The country is the one the load says.
    let args = [
        args,
        &[
            "--aggregates-snapshot-clicks",
            "200",
            "--aggregates-snapshot-interval",
            "0s",
            "--country-header",
            COUNTRY_HEADER,
        ],
    ]
    .concat();
    let args = args.as_slice();
    let mut server = serving(dir, args).await?;
    if create {
        for code in codes {
            create_code(&http, &server.base, code).await?;
        }
    }
    let before = known_counts(&http, &server.base, codes).await?;
    let load = start_load(&server.base, codes);
    tokio::time::sleep(load_for).await;
    server.kill().await?;
    let tallies = load.finish().await?;
    drop(server);

    let mut again = serving(dir, args).await?;
    let served_after = known_counts(&http, &again.base, codes).await?;
    let stats_after = whole_life_stats(&http, &again.base, codes).await?;
    let mut clicks_after = Vec::with_capacity(codes.len());
    for code in codes {
        clicks_after.push(click_log(&http, &again.base, code).await?);
    }
    again.terminate().await?;
    let stored = stored_counts(dir, codes)?;
    Ok(KillRound {
        before,
        tallies,
        served_after,
        stats_after,
        clicks_after,
        stored,
    })
}

/// Checks a round and prints what was lost. `strict`: no acknowledged click may be lost.
/// Returns the total loss (302s received minus clicks stored; negative when clicks in flight
/// at the kill were stored without their answer arriving).
fn check_kill_round(label: &str, codes: &[&str], round: &KillRound, strict: bool) -> i64 {
    let mut total = (0, 0, 0, 0i64);
    for (i, code) in codes.iter().enumerate() {
        let (count, events) = round.stored[i];
        let t = round.tallies[i];
        assert_eq!(
            count, events,
            "{label} {code}: the stored count is the number of stored click events"
        );
        assert_eq!(
            round.served_after[i], count,
            "{label} {code}: the restarted server serves the stored count"
        );
        let clicks = &round.clicks_after[i];
        assert_eq!(
            clicks.len() as u64,
            count,
            "{label} {code}: the restarted server lists every stored click"
        );
        // The aggregates (snapshot + clicks folded in at the restart) are what the clicks
        // make: the totals, the days and each top list, value by value.
        assert_aggregates_match_log(&format!("{label} {code}"), &round.stats_after[i], clicks);
        assert!(
            count >= round.before[i],
            "{label} {code}: the count went down from {} to {count}",
            round.before[i]
        );
        let added = count - round.before[i];
        assert!(
            added <= t.found + t.other + t.unanswered,
            "{label} {code}: {added} clicks stored but only {} answered and {} in flight",
            t.found + t.other,
            t.unanswered
        );
        if strict {
            assert!(
                added >= t.found,
                "{label} {code}: {} redirects acknowledged but only {added} clicks stored",
                t.found
            );
        } else {
            assert_eq!(t.other, 0, "{label} {code}: answers other than 302");
        }
        let loss = i64::try_from(t.found).unwrap_or(i64::MAX) - i64::try_from(added).unwrap_or(0);
        total.0 += t.found;
        total.1 += added;
        total.2 += t.unanswered;
        total.3 += loss;
    }
    eprintln!(
        "{label}: 302s received {}, clicks stored {}, requests in flight at the kill {}, \
         clicks lost (302s - stored) {}",
        total.0, total.1, total.2, total.3
    );
    assert!(total.0 >= 50, "{label}: too little load to mean anything");
    total.3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_in_default_durability_keeps_counts_and_events_equal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["k1", "k2", "k3", "k4"];
    let round = kill_round(dir.path(), &[], &codes, true, Duration::from_millis(1500)).await?;
    check_kill_round("SIGKILL, default durability", &codes, &round, false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_in_strict_durability_loses_no_acknowledged_click() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["s1", "s2", "s3", "s4"];
    let args = ["--durability", "strict"];
    let round = kill_round(dir.path(), &args, &codes, true, Duration::from_millis(1500)).await?;
    let loss = check_kill_round("SIGKILL, strict durability", &codes, &round, true);
    assert!(
        loss <= 0,
        "strict durability lost {loss} acknowledged clicks"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_sigkills_on_one_data_dir_keep_it_consistent_and_counts_never_go_down() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["r1", "r2", "r3"];
    let mut previous: Option<Vec<u64>> = None;
    let mut losses = Vec::new();
    for round_no in 1..=5 {
        let label = format!("SIGKILL round {round_no}/5");
        let round = kill_round(
            dir.path(),
            &[],
            &codes,
            round_no == 1,
            Duration::from_millis(600),
        )
        .await?;
        if let Some(previous) = &previous {
            // The round started from the previous round's cleanly stopped store.
            assert_eq!(
                &round.before, previous,
                "{label}: the start serves the counts stored before"
            );
        }
        losses.push(check_kill_round(&label, &codes, &round, false));
        previous = Some(round.stored.iter().map(|(count, _)| *count).collect());
    }
    eprintln!("five SIGKILLs, clicks lost per kill: {losses:?}");
    Ok(())
}
