//! Command line and environment. Every flag of `serve` can also be set by the environment
//! variable named in its help.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{keys::Scope, store::Durability, transfer::ImportFormat};

#[derive(Debug, Parser)]
#[command(
    name = "linkpulse",
    version,
    about = "Short links whose clicks you watch live"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, also accepted without the word `serve`.
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API, redirects and live streams (the default).
    Serve(Box<ServeConfig>),
    /// Manage API keys: through the running server (its control socket in the data
    /// directory), or on the store itself when no server runs; with --nats, in the cluster's
    /// keys bucket (running nodes take the change within a second).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the people who sign in, as `keys` manages keys (also while the server runs).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Read the whole store and check it (with the server stopped): every record's checksum
    /// and format, every link's clicks numbered 1..n without a gap, the totals record, and
    /// the floor. Prints what it read and exits 0, or exits non-zero saying what is wrong.
    /// With --nats, the cluster's store (nodes may run): every key, link and aggregates
    /// record, and every click message, each code's clicks numbered 1..n without a gap.
    Check {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Comma-separated NATS server URLs: check the cluster's store (nodes may run)
        /// instead of --data-dir.
        #[arg(long, env = "LINKPULSE_NATS")]
        nats: Option<String>,
    },
    /// Write the store (server stopped) as JSON lines: a header, the API keys' owners (never
    /// the keys), the links, their clicks and aggregates. Prints a summary on standard error.
    /// With --nats, the cluster's store (nodes may run), in the same format: `import` of it
    /// gives back a fjall store.
    Export {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Comma-separated NATS server URLs: export the cluster's store (nodes may run)
        /// instead of --data-dir.
        #[arg(long, env = "LINKPULSE_NATS")]
        nats: Option<String>,
        /// A file, or `-` for standard output.
        #[arg(long, default_value = "-")]
        output: PathBuf,
    },
    /// Move a one-machine installation into a cluster: copy the fjall store in --data-dir
    /// (server stopped) into the NATS JetStream cluster at --nats, which must be empty: API
    /// keys, links, every click with its number, aggregates snapshots. Then start the nodes
    /// with the same --nats. Prints what it moved.
    Migrate {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Comma-separated NATS server URLs, as `serve --nats` takes them.
        #[arg(long, env = "LINKPULSE_NATS")]
        nats: String,
        /// Copies JetStream keeps of each stream and bucket made here.
        #[arg(long, env = "LINKPULSE_NATS_REPLICAS", default_value_t = 1)]
        nats_replicas: usize,
    },
    /// Read an export, or a CSV of `url,code[,title,tags]`, into the store (server stopped;
    /// made if missing). Links whose code is taken are skipped. Stops at the first line it
    /// cannot take, naming it; the lines before it are imported.
    Import {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// A file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// The file to read, instead of --input.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Default: csv for a file named *.csv, else jsonl. bitly, shlink, yourls and kutt
        /// read those shorteners' exports.
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// Report what an import of another shortener's export would create, skip and
        /// refuse (with line numbers), and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give every imported link to the API key with this id (`linkpulse keys list`).
        /// Without it, exported links keep their owner ids, and CSV links go to the oldest
        /// admin key.
        #[arg(long)]
        owner: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Make a user who signs in with an email and a password: with --password-stdin the
    /// password is read from one line of standard input and the user printed as a JSON object;
    /// without it, a one-time sign-up link (7 days) is printed for the person to choose one.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_enum, default_value = "member")]
        role: crate::accounts::Role,
        /// Read the password from one line of standard input (the newline not part of it).
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// List the users, one JSON object a line (id, email, role, createdAt, disabled).
    List {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Disable the user with this email: their sessions end and they cannot sign in.
    Disable {
        #[arg(long)]
        email: String,
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new key and print it (alone) on standard output; it is shown only this once.
    Create {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// A name to remember the key by (1 to 100 characters).
        #[arg(long, default_value = "cli")]
        name: String,
        /// admin: every link and the keys; links: full control of its own links; read: reading
        /// its own links and their stats.
        #[arg(long, value_enum, default_value_t = Scope::Links)]
        scope: Scope,
        /// The same as --scope admin.
        #[arg(long, conflicts_with = "scope")]
        admin: bool,
    },
    /// List the keys, one JSON object a line (id, name, scope, createdAt, lastUsedAt).
    List {
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Revoke the key with this id: its next request is refused.
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: String,
        #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Where a `keys` command finds a cluster's store instead of --data-dir.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Comma-separated NATS server URLs: manage the keys in the cluster's keys bucket instead
    /// of --data-dir.
    #[arg(long, env = "LINKPULSE_NATS")]
    pub nats: Option<String>,
    /// Copies JetStream keeps of each stream and bucket made here (with --nats, when the
    /// cluster has no linkpulse store yet).
    #[arg(long, env = "LINKPULSE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `*`, or an origin as browsers send it in `Origin`: `scheme://host[:port]`, no path.
fn origin(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(raw.to_owned());
    }
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not an origin: {e}"))?;
    let bare = url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
        return Err(format!(
            "{raw:?} is not an origin: expected scheme://host[:port], like https://dash.example.com"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// `4096`, `512KiB`, `128MiB`, `2GiB`.
fn byte_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size such as 128MiB"))?;
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{raw} is too large"))
}

fn duration(raw: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(raw)
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LINKPULSE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Also serve HTTPS (HTTP/1.1 and HTTP/2) on this address, with the certificate of
    /// --tls-cert and --tls-key and those ordered by ACME for domains with `"https": true`.
    /// The plain listener keeps serving.
    #[arg(long, env = "LINKPULSE_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,
    /// The certificate chain served over HTTPS (PEM: the certificate first, then its
    /// intermediates), for the names it covers and for clients that name none.
    #[arg(long, env = "LINKPULSE_TLS_CERT", requires_all = ["https_listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "LINKPULSE_TLS_KEY", requires_all = ["https_listen", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The ACME server's directory that certificates of domains with `"https": true` are
    /// ordered from.
    #[arg(long, env = "LINKPULSE_ACME_DIRECTORY", default_value = crate::certs::acme::LETS_ENCRYPT)]
    pub acme_directory: String,
    /// The contact address given to the ACME server (expiry notices, if it sends any).
    #[arg(long, env = "LINKPULSE_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// A PEM root certificate to trust for the ACME server instead of the system's (a
    /// private ACME server such as pebble).
    #[arg(long, env = "LINKPULSE_ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,
    /// How the ACME server checks a domain: `http-01` (a file on the plain listener, which
    /// must be port 80 to the world) or `tls-alpn-01` (a handshake on the HTTPS listener,
    /// port 443 to the world).
    #[arg(
        long,
        env = "LINKPULSE_ACME_CHALLENGE",
        value_enum,
        default_value = "http-01"
    )]
    pub acme_challenge: crate::certs::acme::Challenge,
    /// How long the audit log keeps an entry (`GET /api/audit`).
    #[arg(long, env = "LINKPULSE_AUDIT_RETENTION", value_parser = duration, default_value = "365days")]
    pub audit_retention: Duration,
    /// How far back `GET /api/events` resumes with `Last-Event-ID` (at most the audit
    /// retention, whose entries it replays).
    #[arg(long, env = "LINKPULSE_EVENTS_RETENTION", value_parser = duration, default_value = "24h")]
    pub events_retention: Duration,
    /// Clicks per webhook message at most (a receiver that keeps up gets them as they come).
    #[arg(long, env = "LINKPULSE_WEBHOOK_BATCH", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub webhook_batch: u64,
    /// Failed deliveries in a row after which a webhook is disabled (it also is after 3 days
    /// of failures); `PATCH` it `{"enabled": true}` to resume from where it stopped.
    #[arg(long, env = "LINKPULSE_WEBHOOK_MAX_FAILURES", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_failures: u32,
    /// Let webhooks post to loopback, private and link-local addresses (a receiver on this
    /// machine or inside the network, and the tests); refused otherwise.
    #[arg(long, env = "LINKPULSE_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// How long one webhook delivery may take before it counts as failed.
    #[arg(long, env = "LINKPULSE_WEBHOOK_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub webhook_timeout: Duration,
    /// The OpenID Connect provider people may sign in with (its issuer URL, as its discovery
    /// document names it); with `--oidc-client-id` and `--oidc-client-secret`.
    #[arg(long, env = "LINKPULSE_OIDC_ISSUER", requires_all = ["oidc_client_id", "oidc_client_secret"])]
    pub oidc_issuer: Option<String>,
    /// This installation's client id at the provider (its redirect URI is
    /// `{base-url}/auth/oidc/callback`).
    #[arg(long, env = "LINKPULSE_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    #[arg(
        long,
        env = "LINKPULSE_OIDC_CLIENT_SECRET",
        requires = "oidc_issuer",
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,
    /// Answer `/{code}`, `/realtime/{code}`, `/links/{code}` and `/badge/{code}.svg` only for a
    /// `Host` naming the default domain or one added (`404` with JSON otherwise); the API,
    /// `/healthz` and `/metrics` answer on any host.
    #[arg(long, env = "LINKPULSE_STRICT_HOST")]
    pub strict_host: bool,
    /// Directory of the fjall store.
    #[arg(long, env = "LINKPULSE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep links, keys and clicks in NATS JetStream instead of a local fjall store, so
    /// several identical nodes can serve one installation: comma-separated server URLs
    /// (`nats://a:4222,nats://b:4222`). Nothing is written under --data-dir then.
    #[arg(long, env = "LINKPULSE_NATS")]
    pub nats: Option<String>,
    /// Copies JetStream keeps of each stream and bucket this node makes (with --nats; 3 for a
    /// three-server cluster that survives losing one).
    #[arg(long, env = "LINKPULSE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Public base URL used to build short URLs (default: http://<listen address>).
    #[arg(long, env = "LINKPULSE_BASE_URL")]
    pub base_url: Option<String>,
    /// An API key made valid (as admin) at start-up.
    #[arg(long, env = "LINKPULSE_INITIAL_API_KEY", hide_env_values = true)]
    pub initial_api_key: Option<String>,
    /// default: answer at once, fsync at least every --fsync-interval; strict: answer a
    /// redirect after its click is fsynced.
    #[arg(
        long,
        env = "LINKPULSE_DURABILITY",
        value_enum,
        default_value = "default"
    )]
    pub durability: Durability,
    /// Longest wait before a group commit (default durability; in strict, the longest wait for
    /// clicks already admitted and still on their way to the group).
    #[arg(long, env = "LINKPULSE_COMMIT_INTERVAL", value_parser = duration, default_value = "2ms")]
    pub commit_interval: Duration,
    /// Most items in one group commit.
    #[arg(long, env = "LINKPULSE_COMMIT_MAX", default_value_t = 4096)]
    pub commit_max: usize,
    /// Most clicks taken but not yet committed (in actors' inboxes and the writer's queue).
    /// Past it, while the disk is stalled (see `--click-backlog-wait`), a click is dropped and counted
    /// (`linkpulse_clicks_dropped_total{reason="backlog"}`) but its redirect is still answered;
    /// in strict durability it is answered 503.
    #[arg(long, env = "LINKPULSE_CLICK_BACKLOG", default_value_t = 50_000)]
    pub click_backlog: usize,
    /// How long a click waits for a place in a full backlog while clicks are still being
    /// stored (only more slowly than they come): its redirect is answered that much later
    /// instead of its click being dropped. When no place was freed for this long (the store
    /// is stalled or unreachable) a click does not wait. 0 never waits.
    #[arg(long, env = "LINKPULSE_CLICK_BACKLOG_WAIT", value_parser = duration, default_value = "1s")]
    pub click_backlog_wait: Duration,
    /// Longest time between fsyncs in default durability.
    #[arg(long, env = "LINKPULSE_FSYNC_INTERVAL", value_parser = duration, default_value = "1s")]
    pub fsync_interval: Duration,
    /// Niceness, added to the server's own, of the embedded store's background threads (its
    /// writer, fjall's flushes and compactions, the store's file checks), so that on a busy
    /// CPU a redirect comes first. 0 leaves them at the server's own priority; 19 is the
    /// lowest. The cluster store's writer is not lowered.
    #[arg(
        long,
        env = "LINKPULSE_BACKGROUND_NICE",
        default_value_t = 10,
        value_parser = clap::value_parser!(i32).range(0..=19)
    )]
    pub background_nice: i32,
    /// A link actor with no clicks and no subscribers for this long is stopped.
    #[arg(long, env = "LINKPULSE_IDLE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Memory live link actors may hold, about (one that has counted a few clicks holds about
    /// 28 KiB): past it the least recently used idle actors stop first. Actors with viewers
    /// are not stopped for it. Takes bytes or a KiB/MiB/GiB suffix.
    #[arg(long, env = "LINKPULSE_ACTOR_MEMORY", value_parser = byte_size, default_value = "512MiB")]
    pub actor_memory: u64,
    /// Link records cached in memory.
    #[arg(long, env = "LINKPULSE_LINK_CACHE", default_value_t = 100_000)]
    pub link_cache: usize,
    /// Live subscribers allowed on one link.
    #[arg(long, env = "LINKPULSE_SSE_MAX_PER_LINK", default_value_t = 15_000)]
    pub sse_max_per_link: usize,
    /// Live subscribers allowed in all.
    #[arg(long, env = "LINKPULSE_SSE_MAX_TOTAL", default_value_t = 15_000)]
    pub sse_max_total: usize,
    /// Frames a subscriber may have waiting before it counts as behind.
    #[arg(long, env = "LINKPULSE_SSE_QUEUE", default_value_t = 4)]
    pub sse_queue: usize,
    /// A subscriber that stays behind this long is disconnected.
    #[arg(long, env = "LINKPULSE_SSE_STUCK_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub sse_stuck_timeout: Duration,
    /// Interval of the heartbeat comment on streams.
    #[arg(long, env = "LINKPULSE_SSE_HEARTBEAT", value_parser = duration, default_value = "15s")]
    pub sse_heartbeat: Duration,
    /// At most one frame per link in this interval (later clicks are conflated into it).
    #[arg(long, env = "LINKPULSE_SSE_MIN_INTERVAL", value_parser = duration, default_value = "20ms")]
    pub sse_min_interval: Duration,
    /// Frame deliveries per second one link may cause: a link with N subscribers gets at most
    /// this / N frames per second (later clicks are conflated into the next frame).
    #[arg(
        long,
        env = "LINKPULSE_SSE_DELIVERIES_PER_SEC",
        default_value_t = 100_000
    )]
    pub sse_deliveries_per_sec: u64,
    /// Kernel send buffer of a stream's socket (bytes): bounds the memory a reader that stops
    /// reading can pin.
    #[arg(long, env = "LINKPULSE_SSE_SEND_BUFFER", default_value_t = 64 * 1024)]
    pub sse_send_buffer: usize,
    /// The reconnect delay suggested to browsers (`retry:`).
    #[arg(long, env = "LINKPULSE_SSE_RETRY", value_parser = duration, default_value = "2s")]
    pub sse_retry: Duration,
    /// Store client addresses in full instead of anonymised.
    #[arg(long, env = "LINKPULSE_STORE_FULL_IP")]
    pub store_full_ip: bool,
    /// Take the client address from the last X-Forwarded-For entry (only behind a proxy).
    #[arg(long, env = "LINKPULSE_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Request header carrying the client's country, set by a trusted proxy (e.g. CF-IPCountry).
    #[arg(long, env = "LINKPULSE_COUNTRY_HEADER")]
    pub country_header: Option<String>,
    /// A country `.mmdb` file (MaxMind GeoLite2/GeoIP2 Country, DB-IP lite country, or an
    /// `@ip-location-db` country file): the country of a click when no --country-header gives
    /// one. Looked up before the address is anonymised.
    #[arg(long, env = "LINKPULSE_GEOIP_DB")]
    pub geoip_db: Option<PathBuf>,
    /// How long minute buckets of the aggregates are kept.
    #[arg(long, env = "LINKPULSE_MINUTE_RETENTION", value_parser = duration, default_value = "48h")]
    pub minute_retention: Duration,
    /// How long hour buckets are kept.
    #[arg(long, env = "LINKPULSE_HOUR_RETENTION", value_parser = duration, default_value = "90days")]
    pub hour_retention: Duration,
    /// How long day buckets are kept (default: for ever).
    #[arg(long, env = "LINKPULSE_DAY_RETENTION", value_parser = duration)]
    pub day_retention: Option<Duration>,
    /// Distinct values each top list (referrer, country, browser, OS, device) keeps per link
    /// and day; later values are counted under `(other)`.
    #[arg(long, env = "LINKPULSE_TOP_VALUES", default_value_t = 100)]
    pub top_values: usize,
    /// Raw clicks older than this many days are deleted (their counts and aggregates stay;
    /// a link's last click is kept, it carries the count). Off by default: clicks are kept.
    #[arg(long, env = "LINKPULSE_CLICK_RETENTION_DAYS")]
    pub click_retention_days: Option<u32>,
    /// A deleted link's code cannot be used for a new link for this long, so a short link
    /// already shared never starts pointing somewhere else. Its clicks and aggregates are
    /// deleted at once.
    #[arg(long, env = "LINKPULSE_DELETED_CODE_HOLD", value_parser = duration, default_value = "30days")]
    pub deleted_code_hold: Duration,
    /// At most this many password checks (argon2, about 20 ms of CPU each) run at once; more
    /// wait their turn.
    #[arg(long, env = "LINKPULSE_PASSWORD_CHECKS", default_value_t = 2)]
    pub password_checks: usize,
    /// Password tries on protected links allowed per client address (IPv6: per /64) and
    /// minute, also the burst; past it the address's tries are answered `429` +
    /// `Retry-After` without a check, whether the password is right or not (0: no limit).
    /// One client's guesses then cost at most this many checks a minute, and never hold up
    /// other visitors' passwords.
    #[arg(
        long,
        env = "LINKPULSE_PASSWORD_TRIES_PER_MINUTE",
        default_value_t = 10
    )]
    pub password_tries_per_minute: u32,
    /// How often expired clicks are looked for (with --click-retention-days).
    #[arg(long, env = "LINKPULSE_CLICK_RETENTION_CHECK", value_parser = duration, default_value = "1h")]
    pub click_retention_check: Duration,
    /// A link's aggregates snapshot is stored after this many new clicks (and when its actor
    /// stops); a restart after a crash folds in at most about this many clicks per link again.
    #[arg(
        long,
        env = "LINKPULSE_AGGREGATES_SNAPSHOT_CLICKS",
        default_value_t = 10_000
    )]
    pub aggregates_snapshot_clicks: u64,
    /// ...and at most once per this interval per link.
    #[arg(long, env = "LINKPULSE_AGGREGATES_SNAPSHOT_INTERVAL", value_parser = duration, default_value = "10s")]
    pub aggregates_snapshot_interval: Duration,
    /// Most open connections (streams included); past it new connections wait in the kernel's
    /// backlog until one closes.
    #[arg(long, env = "LINKPULSE_MAX_CONNECTIONS", default_value_t = 18_000)]
    pub max_connections: usize,
    /// Most open streams one client address (IPv6: one /64) may hold; past it `429` +
    /// `Retry-After` (0: no limit). With --trust-forwarded-for the address is the forwarded one.
    #[arg(long, env = "LINKPULSE_SSE_MAX_PER_CLIENT", default_value_t = 1_000)]
    pub sse_max_per_client: usize,
    /// Most open connections one client address (IPv6: one /64) may hold, streams included;
    /// past it a new connection is answered `429` + `Retry-After` and closed (0: no limit).
    /// Not applied with --trust-forwarded-for: there the peer is the proxy.
    #[arg(
        long,
        env = "LINKPULSE_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 2_000
    )]
    pub max_connections_per_client: usize,
    /// How long a client may take to send a request head (slow-header clients are cut off); a
    /// kept-alive connection idle this long between requests is closed too.
    #[arg(long, env = "LINKPULSE_HEADER_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// How long a clean stop waits for connections and actors.
    #[arg(long, env = "LINKPULSE_SHUTDOWN_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
    /// Link creations allowed per `links`-scope API key and second, also the burst (0: no
    /// limit). Admin keys (the operator's) are not limited.
    #[arg(long, env = "LINKPULSE_CREATE_RATE_PER_KEY", default_value_t = 100)]
    pub create_rate_per_key: u32,
    /// Link creations allowed per client address (IPv6: per /64) and second with `links`-scope
    /// keys, also the burst (0, the default: no limit; the per-key limit and the limit on
    /// failed authentication already bound what one client can do). Admin keys are not
    /// limited.
    #[arg(long, env = "LINKPULSE_CREATE_RATE_PER_IP", default_value_t = 0)]
    pub create_rate_per_ip: u32,
    /// Failed authentications (a key that is wrong, revoked or malformed) allowed per client
    /// address (IPv6: per /64) and second, also the burst; past it every request of that
    /// address that needs a key is answered `429` + `Retry-After` until the allowance comes
    /// back, whether its key is right or not (0: no limit).
    #[arg(long, env = "LINKPULSE_AUTH_FAILURES_PER_IP", default_value_t = 10)]
    pub auth_failures_per_ip: u32,
    /// An origin (`https://dash.example.com`) whose pages may call `/api/*` from a browser;
    /// repeat the flag or separate origins with commas; `*` allows every origin. None by
    /// default: no CORS headers.
    #[arg(long, env = "LINKPULSE_CORS_ORIGIN", value_delimiter = ',', value_parser = origin)]
    pub cors_origin: Vec<String>,
    /// How logs are written to standard error: `text` (for people) or `json` (one object per
    /// line, for log collectors).
    #[arg(long, env = "LINKPULSE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// The defaults, for tests and embedding, with the store in `data_dir` and port 0.
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Self::parse_defaults();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config
    }

    fn parse_defaults() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeConfig,
        }
        Only::parse_from(["linkpulse"]).serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_others() {
        assert_eq!(byte_size("4096"), Ok(4096));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("128MiB"), Ok(128 << 20));
        assert_eq!(byte_size("2 GiB"), Ok(2 << 30));
        assert!(byte_size("128MB").is_err());
        assert!(byte_size("MiB").is_err());
        assert!(byte_size("99999999999GiB").is_err());
    }

    #[test]
    fn cors_origins_are_repeatable_or_comma_separated_and_checked() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["linkpulse"].iter().chain(args)).map(|cli| cli.serve.cors_origin)
        };
        assert_eq!(parse(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            parse(&[
                "--cors-origin",
                "https://a.example, http://b.example:8080/",
                "--cors-origin",
                "*"
            ])
            .unwrap(),
            ["https://a.example", "http://b.example:8080", "*"]
        );
        assert!(parse(&["--cors-origin", "https://a.example/path"]).is_err());
        assert!(parse(&["--cors-origin", "ftp://a.example"]).is_err());
        assert!(parse(&["--cors-origin", "a.example"]).is_err());
    }
}
