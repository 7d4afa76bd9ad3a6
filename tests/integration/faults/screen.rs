//! What a viewer saw survives a crash: a frame carries only committed clicks, and committed
//! clicks are with the OS, so after SIGKILL and a restart the store holds at least every count
//! any viewer was shown.

use std::time::Duration;

use super::process::{create_code, known_counts, serving, start_load};
use crate::support::{Silence, SseClient, TestResult, client};

#[tokio::test]
async fn after_sigkill_the_store_holds_every_count_a_viewer_saw() -> TestResult {
    let dir = tempfile::tempdir()?;
    let http = client();
    let code = "seen";
    // Frames as often as clicks come, so the viewer sees the newest counts up to the kill.
    let args = ["--sse-min-interval", "1ms"];
    for round in 0..5 {
        let mut server = serving(dir.path(), &args).await?;
        if round == 0 {
            create_code(&http, &server.base, code).await?;
        }
        let url = format!("{}/realtime/{code}", server.base);
        let mut sse = SseClient::open(&http, &url, None).await;
        assert_eq!(sse.status, 200);
        // The viewer reads until the stream ends with the process.
        let viewer = tokio::spawn(async move {
            let mut max = 0;
            loop {
                match sse.next(Duration::from_secs(20)).await {
                    Ok(event) => max = max.max(event.count().unwrap_or(0)),
                    Err(Silence::Ended | Silence::Broken) => return Ok(max),
                    Err(Silence::TimedOut) => return Err(Silence::TimedOut),
                }
            }
        });
        let load = start_load(&server.base, &[code]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill().await?;
        load.finish().await?;
        let seen = viewer.await??;
        drop(server);

        let mut again = serving(dir.path(), &args).await?;
        let stored = known_counts(&http, &again.base, &[code]).await?[0];
        eprintln!("round {round}: the viewer saw {seen}, the store holds {stored}");
        assert!(seen > 0, "round {round}: the viewer saw clicks");
        assert!(
            stored >= seen,
            "round {round}: a viewer saw count {seen} but the store holds {stored}"
        );
        again.terminate().await?;
    }
    Ok(())
}
