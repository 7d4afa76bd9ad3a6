//! Building and running the service: open the store, start the writer and the link handle,
//! bind, serve until told to stop, then stop in order.
//!
//! Shutdown order: stop accepting and end the live streams (each gets a `retry:` hint), wait
//! for in-flight requests, stop every link actor after its mailbox is handled, wait until all
//! they sent is committed, commit and fsync, close the store.

mod commands;
mod run;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use commands::{check_cluster, check_store, keys_command, users_command};

use crate::{
    analytics::{AggregateSettings, CountryDb},
    config::ServeConfig,
    control::ControlSocket,
    http::{AppState, limit::CreateLimits, router},
    keys::{self, ApiKeys},
    links::{LinkSettings, Links},
    metrics::Metrics,
    store::{Backlog, FirstKey, Location, Opened, Retention, WriterConfig},
};

/// A bound, ready-to-run service.
pub struct App {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    /// `--https-listen`, bound, with its TLS settings.
    https: Option<(tokio::net::TcpListener, Arc<rustls::ServerConfig>)>,
    state: Arc<AppState>,
    opened: Opened,
    retention: Option<Retention>,
    generated_key: Option<String>,
    /// The sign-up link for the first owner, made at a start while no user exists.
    first_signup: Option<String>,
    /// `<data-dir>/control.sock`, for `linkpulse keys` while the server runs (`None` when it
    /// could not be bound: the command then says the store is in use).
    control: Option<ControlSocket>,
}

impl App {
    /// Opens the store in `config.data_dir` and binds `config.listen`. The first API key is
    /// made last, once everything else that can fail has worked, so a start that fails (a port
    /// taken, say) leaves no key behind that nobody was shown.
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        let initial = initial_key(config.initial_api_key.as_deref())?;
        // The certificate first: a file that is wrong stops the start before anything opens.
        let file_certificate = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::http::tls::load_pair(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        if file_certificate.is_some() && config.https_listen.is_none() {
            anyhow::bail!("--tls-cert and --tls-key need --https-listen");
        }
        if let Some(root) = &config.acme_ca_root {
            std::fs::read(root)
                .with_context(|| format!("cannot read --acme-ca-root {}", root.display()))?;
        }
        let certificates = Arc::new(crate::certs::Certificates::new(file_certificate));
        let country_db = config
            .geoip_db
            .as_deref()
            .map(CountryDb::open)
            .transpose()?
            .map(Arc::new);
        let settings = link_settings(&config);
        let metrics = Arc::new(Metrics::default());
        let writer_config = writer_config(&config, &metrics);
        let location = location(&config);
        crate::store::set_background_nice(config.background_nice);
        let opened = Opened::open(&location, &settings.aggregates, writer_config).await?;
        let store = opened.store.clone();
        let shared = opened.shared_by_nodes();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let https = match config.https_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--https-listen)"))?;
                Some((
                    listener,
                    crate::http::tls::server_config(certificates.clone())?,
                ))
            }
            None => None,
        };
        // Bound while holding the store, so a socket file already there is a dead server's.
        // A cluster node holds no store in `--data-dir` and writes nothing there: it binds no
        // socket (its keys are managed through the API or `--initial-api-key`).
        let control = if shared {
            None
        } else {
            control_socket(&config)
        };

        let generated_key = bootstrap_keys(&opened, initial)?;
        let keys = Arc::new(ApiKeys::load(&store).context("cannot read the API keys")?);
        if generated_key.is_none() && initial.is_none() {
            info!(
                keys = keys.len(),
                "API keys are stored{}; to make another (the server may run): linkpulse keys \
                 create --admin {}",
                if shared {
                    " (or another node is making the first one)"
                } else {
                    ""
                },
                key_store_flag(&config)
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
            Backlog::new(config.click_backlog, config.click_backlog_wait),
        );
        if shared {
            opened.set_listener(links.remote_changes());
            tokio::spawn(follow_keys(keys.clone()));
        }
        let domains = Arc::new(
            crate::http::domains::Domains::load(links.store().as_ref())
                .context("cannot read the domains")?,
        );
        certificates
            .load(links.store().as_ref())
            .context("cannot read the certificates")?;
        if shared {
            tokio::spawn(
                domains
                    .clone()
                    .follow(links.store().clone(), Default::default()),
            );
            tokio::spawn(
                certificates
                    .clone()
                    .follow(links.store().clone(), Default::default()),
            );
        }
        let acme = https.is_some().then(|| {
            Arc::new(crate::certs::acme::Acme::new(
                crate::certs::acme::AcmeSettings {
                    directory: config.acme_directory.clone(),
                    email: config.acme_email.clone(),
                    ca_root: config.acme_ca_root.clone(),
                    challenge: config.acme_challenge,
                },
                links.store().clone(),
                domains.clone(),
                certificates.clone(),
            ))
        });
        let mut state = app_state(config, local_addr, links, keys, metrics, country_db)?;
        state.domains = domains;
        state.certificates = certificates;
        // The first start (the one that made the first key) also makes a link for the first
        // owner; later starts write nothing (`linkpulse users create` makes another).
        let first_signup = if generated_key.is_some() {
            first_owner_link(&state).context("cannot make the first sign-up link")?
        } else {
            None
        };
        let state = Arc::new(state);
        tokio::spawn(crate::events::upkeep(
            state.events.clone(),
            state
                .config
                .audit_retention
                .max(state.config.events_retention),
            state.shutdown.clone(),
        ));
        tokio::spawn(state.webhooks.clone().run(state.shutdown.clone()));
        if let Some(acme) = acme {
            tokio::spawn(acme.run(state.shutdown.clone()));
        }
        Ok(Self {
            listener,
            local_addr,
            https,
            state,
            opened,
            retention,
            generated_key,
            first_signup,
            control,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address HTTPS is served on (`--https-listen`), if it is.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref()?.0.local_addr().ok()
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
    /// The link the first owner signs up with, when no user exists yet (print it).
    pub fn first_signup(&self) -> Option<&str> {
        self.first_signup.as_deref()
    }

    pub fn generated_key(&self) -> Option<&str> {
        self.generated_key.as_deref()
    }
}

/// The writer's settings from the flags.
fn writer_config(config: &ServeConfig, metrics: &Arc<Metrics>) -> WriterConfig {
    WriterConfig {
        durability: config.durability,
        commit_interval: config.commit_interval,
        max_batch: config.commit_max.max(1),
        fsync_interval: config.fsync_interval,
        deleted_code_hold: config.deleted_code_hold,
        metrics: metrics.clone(),
    }
}

/// Where the store is: the cluster named by `--nats`, else `--data-dir`.
fn location(config: &ServeConfig) -> Location {
    match &config.nats {
        Some(urls) => Location::Cluster {
            urls: urls.clone(),
            replicas: config.nats_replicas,
            link_cache: config.link_cache,
        },
        None => Location::Dir(config.data_dir.clone()),
    }
}

/// `<data-dir>/control.sock`, or `None` (logged) when it cannot be made.
fn control_socket(config: &ServeConfig) -> Option<ControlSocket> {
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
}

/// What every handler shares: the service's parts, its public base URL (`--base-url`, else
/// the bound address, without a trailing slash) and the limits of `--max-connections` and
/// per client.
fn app_state(
    config: ServeConfig,
    local_addr: SocketAddr,
    links: Links,
    keys: Arc<ApiKeys>,
    metrics: Arc<Metrics>,
    country_db: Option<Arc<CountryDb>>,
) -> anyhow::Result<AppState> {
    let base_url = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{local_addr}"))
        .trim_end_matches('/')
        .to_owned();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let authority = base_url
        .split_once("://")
        .map_or(base_url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let default_domain = crate::domain::DomainName::of_host(authority);
    let default_host = match &default_domain {
        Some(name) => name.to_string(),
        // An address: without its port (`[::1]:8080` keeps its brackets).
        None => match authority.rsplit_once(':') {
            Some((host, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') =>
            {
                host.to_owned()
            }
            _ => authority.to_owned(),
        },
    };
    let events = crate::events::Events::new(links.store().clone(), links.counts().clone());
    let oidc = match (
        &config.oidc_issuer,
        &config.oidc_client_id,
        &config.oidc_client_secret,
    ) {
        (Some(issuer), Some(id), Some(secret)) => {
            Some(Arc::new(crate::http::oidc::OidcProvider::new(
                issuer.clone(),
                id.clone(),
                secret.clone(),
                &base_url,
            )))
        }
        _ => None,
    };
    let webhooks = crate::webhooks::Webhooks::new(
        links.store().clone(),
        links.counts().clone(),
        events.clone(),
        metrics.clone(),
        crate::webhooks::WebhookSettings {
            batch: usize::try_from(config.webhook_batch).unwrap_or(100),
            max_failures: config.webhook_max_failures,
            allow_private: config.webhook_allow_private,
            timeout: config.webhook_timeout,
        },
        default_host.clone(),
    )
    .context("cannot make the webhooks' HTTP client")?;
    Ok(AppState {
        events,
        webhooks,
        oidc,
        links,
        keys,
        create_limits: CreateLimits::new(config.create_rate_per_key, config.create_rate_per_ip)
            .with_auth_failures(config.auth_failures_per_ip)
            .with_password_tries(config.password_tries_per_minute),
        config,
        base_url,
        metrics,
        shutdown: CancellationToken::new(),
        lane_requests: tokio_util::task::TaskTracker::new(),
        sign_in: Default::default(),
        domains: Arc::default(),
        default_domain,
        default_host,
        certificates: Default::default(),
        connections,
        country_db,
    })
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

/// Makes the initial key valid, or makes a key when there is none (in a cluster, only the
/// node that claims the first key makes one). Returns a key that was generated (to be shown
/// once).
fn bootstrap_keys(opened: &Opened, initial: Option<&str>) -> anyhow::Result<Option<String>> {
    let store = &*opened.store;
    if let Some(key) = initial {
        keys::store_key(store, key, "initial", true).context("cannot store the initial API key")?;
        // A cluster's nodes started without a key of their own then make none.
        opened
            .given_first_key(&keys::hash_key(key))
            .context("cannot note the initial API key")?;
        return Ok(None);
    }
    if !store
        .api_keys()
        .context("cannot read the API keys")?
        .is_empty()
    {
        return Ok(None);
    }
    let key = keys::generate_key();
    let claim = opened
        .claim_first_key(&keys::hash_key(&key))
        .context("cannot claim the first API key")?;
    if claim == FirstKey::Exists {
        return Ok(None);
    }
    keys::store_key(store, &key, "first", true).context("cannot store the first API key")?;
    Ok(Some(key))
}

/// A one-time sign-up link for the first owner, when the store has no user (it stops working
/// once a user exists).
fn first_owner_link(state: &AppState) -> anyhow::Result<Option<String>> {
    let accounts = crate::accounts::Accounts(state.links.store().as_ref());
    if !accounts.users()?.is_empty() {
        return Ok(None);
    }
    let (token, _) = accounts.invite(
        None,
        crate::accounts::Role::Owner,
        "first start",
        true,
        crate::accounts::FIRST_WORKSPACE,
    )?;
    Ok(Some(crate::http::signup_url(&state.base_url, &token)))
}

/// Where `linkpulse keys` finds this server's store: `--nats URLS` or `--data-dir DIR`.
pub fn key_store_flag(config: &ServeConfig) -> String {
    match &config.nats {
        Some(urls) => format!("--nats {urls}"),
        None => format!("--data-dir {}", config.data_dir.display()),
    }
}
