//! Building and running the service: open the store, start the writer and the link handle,
//! bind, serve until told to stop, then stop in order.
//!
//! Shutdown order: stop accepting and end the live streams (each gets a `retry:` hint), wait
//! for in-flight requests, stop every link actor after its mailbox is handled, wait until all
//! they sent is committed, commit and fsync, close the store.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use salvo::{fuse::FuseConfig, prelude::*};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    analytics::{AggregateSettings, CountryDb},
    config::{KeysCommand, ServeConfig},
    control::{self, ControlSocket},
    http::{AppState, limit::CreateLimits, router},
    keys::{self, ApiKeys, Scope},
    links::{LinkSettings, Links},
    metrics::{DropReason, Metrics},
    store::{
        Backend, Backlog, Location, Opened, Retention, SharedStore, Store, WriterConfig,
        with_stopped_store,
    },
};

/// A bound, ready-to-run service.
pub struct App {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    state: Arc<AppState>,
    opened: Opened,
    retention: Option<Retention>,
    generated_key: Option<String>,
    /// `<data-dir>/control.sock`, for `linkpulse keys` while the server runs (`None` when it
    /// could not be bound: the command then says the store is in use).
    control: Option<ControlSocket>,
}

/// How often last-used times of API keys are saved (and once more at a clean stop).
const LAST_USED_SAVE: Duration = Duration::from_secs(60);

impl App {
    /// Opens the store in `config.data_dir` and binds `config.listen`. The first API key is
    /// made last, once everything else that can fail has worked, so a start that fails (a port
    /// taken, say) leaves no key behind that nobody was shown.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let initial = initial_key(config.initial_api_key.as_deref())?;
        let country_db = config
            .geoip_db
            .as_deref()
            .map(CountryDb::open)
            .transpose()?
            .map(Arc::new);
        let settings = link_settings(&config);
        let metrics = Arc::new(Metrics::default());
        let writer_config = WriterConfig {
            durability: config.durability,
            commit_interval: config.commit_interval,
            max_batch: config.commit_max.max(1),
            fsync_interval: config.fsync_interval,
            deleted_code_hold: config.deleted_code_hold,
            metrics: metrics.clone(),
        };
        let location = match &config.nats {
            Some(urls) => Location::Cluster {
                urls: urls.clone(),
                replicas: config.nats_replicas,
            },
            None => Location::Dir(config.data_dir.clone()),
        };
        // Checked before anything is opened or stored (retention is the embedded store's).
        anyhow::ensure!(
            config.click_retention_days.is_none() || config.nats.is_none(),
            "--click-retention-days is not available with --nats (set a limit on the cluster's \
             clicks stream instead)"
        );
        let opened = Opened::open(&location, &settings.aggregates, writer_config).await?;
        let store = opened.store.clone();
        let shared = opened.shared_by_nodes();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        // Bound while holding the store, so a socket file already there is a dead server's.
        // A cluster node holds no store in `--data-dir` and writes nothing there: it binds no
        // socket (its keys are managed through the API or `--initial-api-key`).
        let control = if shared {
            None
        } else {
            match ControlSocket::bind(&config.data_dir) {
                Ok(socket) => Some(socket),
                Err(e) => {
                    warn!(
                        cause = %e,
                        dir = %config.data_dir.display(),
                        "cannot make the control socket; `linkpulse keys` needs the server stopped"
                    );
                    None
                }
            }
        };

        let generated_key = bootstrap_keys(&*store, initial)?;
        let keys = Arc::new(ApiKeys::load(&store).context("cannot read the API keys")?);
        if !shared && generated_key.is_none() && initial.is_none() {
            info!(
                keys = keys.len(),
                "API keys are stored; to make another (the server may run): linkpulse keys \
                 create --admin --data-dir {}",
                config.data_dir.display()
            );
        }

        let retention = config
            .click_retention_days
            .map(|days| opened.start_retention(days, config.click_retention_check))
            .transpose()?;
        let links = Links::new(
            store,
            opened.writer.handle(),
            settings,
            metrics.clone(),
            Backlog::new(config.click_backlog),
        );
        if shared {
            opened.set_listener(links.remote_changes());
            tokio::spawn(follow_keys(keys.clone()));
        }
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
        let state = Arc::new(AppState {
            links,
            keys,
            create_limits: CreateLimits::new(config.create_rate_per_key, config.create_rate_per_ip)
                .with_auth_failures(config.auth_failures_per_ip)
                .with_password_tries(config.password_tries_per_minute),
            config,
            base_url,
            metrics,
            shutdown: CancellationToken::new(),
            connections,
            country_db,
        });
        Ok(Self {
            listener,
            local_addr,
            state,
            opened,
            retention,
            generated_key,
            control,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The link handle of this app (benches and fault-injection tests drive actors through it).
    pub fn links(&self) -> &crate::links::Links {
        &self.state.links
    }

    /// The routes bound to this app's state, for serving in-process (benches).
    pub fn router(&self) -> salvo::Router {
        router(self.state.clone())
    }

    /// The key made at first start, when no key existed and none was given. Shown once.
    pub fn generated_key(&self) -> Option<&str> {
        self.generated_key.as_deref()
    }

    /// Serves until `shutdown` resolves, then stops cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            state,
            opened,
            retention,
            control,
            ..
        } = self;
        let (writer, closing) = opened.into_closing();
        let config = &state.config;
        let grace = config.shutdown_timeout;
        // The header timeout also closes kept-alive connections idle between requests (hyper
        // starts it when it waits for a request head), so no idle timer is armed per read and
        // write. The write-stall timer only runs while a write is blocked: it cuts off a stuck
        // reader of a stream served by salvo.
        let fuse = FuseConfig::default()
            .with_http1_header_timeout(config.header_timeout)
            .with_request_body_timeout(config.header_timeout)
            .with_write_stall_timeout(config.sse_stuck_timeout);
        // The front door counts every connection against --max-connections.
        let acceptor = crate::http::front::start(listener, state.clone())?;
        let server = Server::new(acceptor).fuse_config(fuse);
        let handle = server.handle();
        let service = Service::new(router(state.clone()));
        let serving = tokio::spawn(server.try_serve(service));
        if let Some(control) = control {
            tokio::spawn(control.serve(state.keys.clone(), state.shutdown.clone()));
        }
        tokio::spawn(save_last_used(state.keys.clone(), state.shutdown.clone()));
        info!(address = %local_addr, base_url = %state.base_url, "linkpulse listening");

        shutdown.await;
        drop(retention);
        // One deadline for the whole stop: a stalled or failed disk must not keep the process
        // alive past it.
        let deadline = tokio::time::Instant::now() + grace;
        info!("stopping: no new connections, ending live streams");
        handle.stop_graceful(Some(grace));
        state.shutdown.cancel();
        match tokio::time::timeout_at(deadline, serving).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(cause = %e, "the server ended with an error"),
            Ok(Err(e)) => warn!(cause = %e, "the server task failed"),
            Err(_) => warn!("connections still open at the end of the shutdown timeout"),
        }
        info!("stopping link actors");
        // Part of the time is kept for the last commit and the close.
        let close_reserve = (grace / 4).min(Duration::from_secs(1));
        let left = deadline
            .checked_sub(close_reserve)
            .unwrap_or(deadline)
            .saturating_duration_since(tokio::time::Instant::now());
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
        info!("committing and syncing the store");
        let dir = state.config.data_dir.clone();
        let keys = state.keys.clone();
        let (committed_tx, committed) = tokio::sync::oneshot::channel();
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
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
        // The last commit and fsync must finish: until then clicks may be lost.
        match tokio::time::timeout_at(deadline, committed).await {
            Ok(Ok(Ok(()))) => {}
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
        info!("stopped cleanly");
        Ok(())
    }
}

/// Keeps a cluster node's API keys in step with the keys bucket (keys made or revoked on
/// another node are taken within a second).
async fn follow_keys(keys: Arc<ApiKeys>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Err(e) = keys.follow_store() {
            warn!(cause = %e, "cannot follow the API keys");
        }
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

fn link_settings(config: &ServeConfig) -> LinkSettings {
    let idle = config.idle_timeout;
    LinkSettings {
        idle_timeout: idle,
        tick: (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        heartbeat: config.sse_heartbeat,
        queue_frames: config.sse_queue.max(1),
        stuck_timeout: config.sse_stuck_timeout,
        max_subscribers_per_link: config.sse_max_per_link,
        min_frame_interval: config.sse_min_interval,
        deliveries_per_sec: config.sse_deliveries_per_sec,
        cache_capacity: config.link_cache,
        max_actors: usize::try_from(config.actor_memory / crate::links::ACTOR_BYTES)
            .unwrap_or(usize::MAX),
        aggregates: AggregateSettings {
            minute_retention_ms: millis(config.minute_retention),
            hour_retention_ms: millis(config.hour_retention),
            day_retention_ms: config.day_retention.map(millis),
            top_values: config.top_values.max(1),
            snapshot_clicks: config.aggregates_snapshot_clicks.max(1),
            snapshot_gap: config.aggregates_snapshot_interval,
        },
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The key given with `--initial-api-key`, if any, checked before anything else is done.
fn initial_key(given: Option<&str>) -> anyhow::Result<Option<&str>> {
    let Some(key) = given.map(str::trim).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    anyhow::ensure!(
        key.len() >= 16,
        "LINKPULSE_INITIAL_API_KEY must be at least 16 characters"
    );
    Ok(Some(key))
}

/// Makes the initial key valid, or makes a key when there is none. Returns a key that was
/// generated (to be shown once).
fn bootstrap_keys(store: &dyn Backend, initial: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(key) = initial {
        keys::store_key(store, key, "initial", true).context("cannot store the initial API key")?;
        return Ok(None);
    }
    if store
        .api_keys()
        .context("cannot read the API keys")?
        .is_empty()
    {
        let key = keys::generate_key();
        keys::store_key(store, &key, "first", true).context("cannot store the first API key")?;
        return Ok(Some(key));
    }
    Ok(None)
}

/// `linkpulse keys create|list|revoke`: through the running server's control socket, or, when
/// no server answers there, on the store opened here. Returns what to print on standard
/// output: the key alone (`create`), one JSON object a line (`list`), or the revoked id.
/// Blocking.
pub fn keys_command(command: KeysCommand) -> anyhow::Result<String> {
    let (data_dir, request) = match command {
        KeysCommand::Create {
            data_dir,
            name,
            scope,
            admin,
        } => {
            let scope = if admin { Scope::Admin } else { scope };
            (data_dir, control::Request::Create { name, scope })
        }
        KeysCommand::List { data_dir } => (data_dir, control::Request::List),
        KeysCommand::Revoke { id, data_dir } => (data_dir, control::Request::Revoke { id }),
    };
    let answer = match control::call(&data_dir, &request)? {
        Some(answer) => answer,
        None => {
            if matches!(request, control::Request::Create { .. }) {
                std::fs::create_dir_all(&data_dir).with_context(|| {
                    format!("cannot create the data directory {}", data_dir.display())
                })?;
            } else {
                anyhow::ensure!(
                    data_dir.join("version").exists(),
                    "there is no linkpulse store in {}",
                    data_dir.display()
                );
            }
            with_stopped_store(&data_dir, Store::open, |store| {
                let shared: SharedStore = Arc::new(store.clone());
                let keys = ApiKeys::load(&shared).context("cannot read the API keys")?;
                Ok(control::execute(&keys, request))
            })?
        }
    };
    match answer {
        control::Answer::Created(made) => Ok(format!("{}\n", made.key)),
        control::Answer::Keys(list) => Ok(list
            .iter()
            .map(|key| serde_json::to_string(key).unwrap_or_default() + "\n")
            .collect()),
        control::Answer::Revoked(id) => Ok(format!("revoked {id}\n")),
        control::Answer::Error(message) => Err(anyhow::anyhow!(message)),
    }
}

/// `linkpulse check`: reads the whole store in `data_dir` (see [`Store::verify`]) and returns
/// what it read, one `name: value` a line; an error says what is wrong.
pub fn check_store(data_dir: &std::path::Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        data_dir.join("version").exists(),
        "there is no linkpulse store in {}",
        data_dir.display()
    );
    with_stopped_store(data_dir, Store::open_and_read_all, |store| {
        let report = store.startup_report();
        let seen = report.verified.unwrap_or_default();
        Ok(format!(
            "store: {}\napi keys: {}\nlinks: {}\nclicks: {} (in {} codes, each numbered 1..n \
             without a gap)\ntotals record: {}\nfloor: not below the last open's\n\
             took: {} ms\nresult: sound\n",
            data_dir.display(),
            seen.keys,
            seen.links,
            seen.clicks,
            seen.codes_clicked,
            if seen.totals_record {
                "agrees"
            } else {
                "written now (the store had none)"
            },
            report.took.as_millis(),
        ))
    })
}
