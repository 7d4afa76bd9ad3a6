//! linkpulse: short links whose clicks are counted by per-link actors, stored durably (fjall on
//! one node, NATS JetStream across nodes) and pushed live over Server-Sent Events.
//!
//! How a click flows through the modules:
//!
//! ```text
//! http::front (accept loops; HTTPS: http::tls, HTTP/2 straight to salvo)
//!                            ┬─ first request GET /realtime/.. ─▶ http::sse (lean stream writer)
//!                            ├─ GET/HEAD /{code} of plain links ─▶ http::lane (redirect lane)
//!                            └─ anything else ─▶ salvo ─▶ http::redirect, api, pages, realtime
//! http::lane, http::redirect ──302──▶ browser
//!     │ links::Links::click: a place in the backlog (store::backlog), then the actor's inbox
//!     │ (links::inbox); never waits, refuses (and counts) when the backlog is full
//!     ▼
//! links::actor (one per code, started on demand and stopped when idle by links::directory)
//!     │ numbers the click (1, 2, ...), classifies it (analytics)
//!     ▼
//! store::writer (one thread, group commit: clicks of many codes in one atomic batch)
//!     │ tells each code's actor the highest click it committed (links::actor::CommitWatch)
//!     ▼
//! links::actor ──▶ links::frame of the committed state (encoded once)
//!     ──try_send──▶ each subscriber's queue (links::subscribers) ──▶ its stream (http::stream)
//! ```
//!
//! - [`config`]: command line and environment.
//! - [`app`]: build, serve, and the order of a clean stop.
//! - [`domain`]: codes, URLs, links and clicks, parsed once.
//! - [`links`]: the actors, their directory and the handle the HTTP layer uses.
//! - [`store`]: the contract every engine keeps (fjall embedded, NATS JetStream for a
//!   cluster), the writer core, record encoding.
//! - [`http`]: routes, one file per area.
//! - [`analytics`]: user agents, addresses.
//! - [`keys`]: API keys, stored as hashes, with scopes.
//! - [`accounts`]: people, their workspaces and roles, sessions, invitations, the OpenID client.
//! - [`events`]: the audit log and the workspaces' live counts (`/api/events`).
//! - [`certs`]: the certificates HTTPS serves, ordered by ACME.
//! - [`control`]: the Unix socket through which `linkpulse keys` reaches a running server.
//! - [`transfer`]: `linkpulse export` and `import` (JSON lines; CSV from other shorteners).
//! - [`metrics`]: counters and gauges for `/metrics`.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod accounts;
pub mod analytics;
pub mod app;
pub mod certs;
pub mod config;
pub mod control;
pub mod domain;
pub mod events;
pub mod http;
pub mod keys;
pub mod links;
pub mod metrics;
pub mod store;
pub mod transfer;
pub mod webhooks;

pub use app::App;
pub use config::ServeConfig;
