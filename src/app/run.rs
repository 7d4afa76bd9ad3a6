//! Serving until told to stop, then the clean stop in the order the parent module gives, all
//! within one deadline.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use salvo::{fuse::FuseConfig, prelude::*, server::ServerHandle};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::App;
use crate::{
    http::{AppState, router},
    keys::ApiKeys,
    links::Links,
    metrics::DropReason,
    store::StoreError,
};

/// How often last-used times of API keys are saved (and once more at a clean stop).
const LAST_USED_SAVE: Duration = Duration::from_secs(60);

impl App {
    /// Serves until `shutdown` resolves, then stops cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            https,
            state,
            opened,
            retention,
            control,
            ..
        } = self;
        let (writer, closing) = opened.into_closing();
        let grace = state.config.shutdown_timeout;
        let https_addr = https.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let (handle, serving) = serve(listener, https, &state)?;
        if let Some(control) = control {
            tokio::spawn(control.serve(state.keys.clone(), state.shutdown.clone()));
        }
        tokio::spawn(save_last_used(state.keys.clone(), state.shutdown.clone()));
        info!(address = %local_addr, base_url = %state.base_url, "linkpulse listening");
        if let Some(address) = https_addr {
            info!(%address, "linkpulse listening for HTTPS (HTTP/1.1 and HTTP/2)");
        }

        shutdown.await;
        drop(retention);
        // One deadline for the whole stop: a stalled or failed disk must not keep the process
        // alive past it.
        let deadline = Instant::now() + grace;
        stop_serving(&state, &handle, serving, deadline).await;
        stop_links(&state, deadline).await?;
        info!("committing and syncing the store");
        let dir = state.config.data_dir.clone();
        let keys = state.keys.clone();
        let (committed_tx, committed) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        // A thread of its own, not the blocking pool: if the disk never answers, the process
        // must still be able to exit (the runtime waits for its blocking tasks, not for this).
        std::thread::Builder::new()
            .name("linkpulse-close".into())
            .spawn(move || {
                if let Err(e) = keys.save_last_used() {
                    warn!(cause = %e, "the last-used times of API keys were not saved");
                }
                let stopped = writer.stop();
                let ok = stopped.is_ok();
                let _ = committed_tx.send(stopped);
                if ok {
                    let _ = closed_tx.send(closing.close(&dir));
                }
            })
            .context("cannot start the closing thread")?;
        wait_committed(&state.links, committed, deadline).await?;
        wait_closed(closed, deadline).await;
        info!("stopped cleanly");
        Ok(())
    }
}

/// Starts serving `listener` with the routes of `state`: the server's handle and its task.
fn serve(
    listener: tokio::net::TcpListener,
    https: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    state: &Arc<AppState>,
) -> anyhow::Result<(ServerHandle, JoinHandle<std::io::Result<()>>)> {
    let config = &state.config;
    // The header timeout also closes kept-alive connections idle between requests (hyper
    // starts it when it waits for a request head), so no idle timer is armed per read and
    // write. The write-stall timer only runs while a write is blocked: it cuts off a stuck
    // reader of a stream served by salvo.
    let fuse = FuseConfig::default()
        .with_http1_header_timeout(config.header_timeout)
        .with_request_body_timeout(config.header_timeout)
        .with_write_stall_timeout(config.sse_stuck_timeout);
    // The front door counts every connection against --max-connections.
    let acceptor = crate::http::front::start(listener, https, state.clone())?;
    let server = Server::new(acceptor).fuse_config(fuse);
    let handle = server.handle();
    let service = Service::new(router(state.clone()));
    let serving = tokio::spawn(server.try_serve(service));
    Ok((handle, serving))
}

/// Stops accepting, ends the live streams and waits for the requests in flight, until
/// `deadline`.
async fn stop_serving(
    state: &AppState,
    handle: &ServerHandle,
    serving: JoinHandle<std::io::Result<()>>,
    deadline: Instant,
) {
    info!("stopping: no new connections, ending live streams");
    handle.stop_graceful(Some(state.config.shutdown_timeout));
    state.shutdown.cancel();
    // The redirect lane takes no new request from now on; those in flight are waited for
    // below, before the link actors stop.
    state.lane_requests.close();
    match tokio::time::timeout_at(deadline, serving).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(cause = %e, "the server ended with an error"),
        Ok(Err(e)) => warn!(cause = %e, "the server task failed"),
        Err(_) => warn!("connections still open at the end of the shutdown timeout"),
    }
    // The redirect lane's requests in flight (it took no new ones since the tracker closed).
    if tokio::time::timeout_at(deadline, state.lane_requests.wait())
        .await
        .is_err()
    {
        warn!("redirects still being answered at the end of the shutdown timeout");
    }
}

/// Stops every link actor after its mailbox is handled; an error if the store has failed.
async fn stop_links(state: &AppState, deadline: Instant) -> anyhow::Result<()> {
    let grace = state.config.shutdown_timeout;
    info!("stopping link actors");
    // Part of the time is kept for the last commit and the close.
    let close_reserve = (grace / 4).min(Duration::from_secs(1));
    let left = deadline
        .checked_sub(close_reserve)
        .unwrap_or(deadline)
        .saturating_duration_since(Instant::now());
    state.links.shutdown(left).await;
    let links = &state.links;
    if let Some(failure) = links.writer().failure() {
        // Closing would wait for flushes the disk can never take; what is committed is in
        // the journal, and the next start recovers it.
        let lost = links.writer().lost_clicks()
            + links.backlog().pending() as u64
            + state.metrics.dropped(DropReason::StoreFailed);
        error!(
            lost,
            cause = %failure,
            "the store failed; the clicks counted since then could not be saved"
        );
        anyhow::bail!(
            "the store failed ({failure}); {lost} clicks could not be saved; \
             the committed ones are recovered at the next start"
        );
    }
    Ok(())
}

/// Waits until `deadline` for the closing thread's last commit and fsync.
async fn wait_committed(
    links: &Links,
    committed: oneshot::Receiver<Result<(), String>>,
    deadline: Instant,
) -> anyhow::Result<()> {
    // The last commit and fsync must finish: until then clicks may be lost.
    match tokio::time::timeout_at(deadline, committed).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => anyhow::bail!("the final commit failed: {e}"),
        Ok(Err(_)) => anyhow::bail!("the closing thread ended without an answer"),
        Err(_) => {
            let waiting = links.backlog().pending();
            error!(
                waiting,
                "the last commit did not finish within the shutdown timeout"
            );
            anyhow::bail!(
                "the last commit did not finish within the shutdown timeout; {waiting} \
                 clicks were still waiting to be committed"
            );
        }
    }
}

/// Waits until `deadline` for the store's clean close.
async fn wait_closed(closed: oneshot::Receiver<Result<(), StoreError>>, deadline: Instant) {
    // Everything is committed and fsynced now. The clean close (memtables flushed, the mark
    // that lets the next start skip its checks) is worth waiting for, but not past the
    // deadline: without it the next start recovers the journal, as after a crash.
    match tokio::time::timeout_at(deadline, closed).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            warn!(cause = %e, "the store was not closed cleanly; nothing is lost")
        }
        Ok(Err(_)) | Err(_) => warn!(
            "the store did not finish closing cleanly within the shutdown timeout; nothing \
             is lost, the next start recovers the journal"
        ),
    }
}

/// Saves the last-used times of API keys every [`LAST_USED_SAVE`] until `stop`.
async fn save_last_used(keys: Arc<ApiKeys>, stop: CancellationToken) {
    let mut every = tokio::time::interval(LAST_USED_SAVE);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let keys = keys.clone();
        match tokio::task::spawn_blocking(move || keys.save_last_used()).await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => warn!(cause = %e, "the last-used times of API keys were not saved"),
        }
    }
}
