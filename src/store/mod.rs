//! The store: what the service keeps, behind one contract ([`Backend`]) with two sibling
//! engines, and one writer queue ([`WriterHandle`]) both engines drain.
//!
//! - `fjall/`: the embedded engine, one process on a local LSM store (the default).
//! - `nats/`: the cluster engine, every durable thing in NATS JetStream, shared by nodes.
//!
//! Shared here: the contract and the callbacks an upper layer registers ([`ChangeListener`],
//! [`CommitListener`]), the writer's queue and rules (`writer/`), record encodings both
//! engines use (`records/`), the backlog of uncommitted clicks (`backlog.rs`), what an export
//! reads ([`ExportSource`], `source.rs`), and [`Opened::open`] (`engine.rs`), which picks the
//! engine. Nothing above this module names an
//! engine.

mod backend;
mod backlog;
mod engine;
mod fjall;
mod nats;
mod priority;
pub mod records;
mod source;
mod writer;

pub use backend::{Backend, ChangeListener, LinkLookup, SharedStore};
pub use backlog::{Backlog, Permit};
pub use engine::{Location, Opened, Retention, migrate_command, with_stopped_store};
pub use fjall::{ImportBatch, StartupCheck, StartupReport, Store, Verified};
/// The cluster store as the commands that act on it directly (`keys`, `check`, `export` with
/// `--nats`) open it.
pub use nats::{ClusterVerified, FirstKey, NatsStore as ClusterStore};
pub use priority::set_background_nice;
pub use records::{DecodeError, KeyRecord, Totals};
pub use source::ExportSource;
#[cfg(feature = "test-hooks")]
pub use writer::Fault;
pub use writer::{
    ClickBatch, CommitListener, Durability, FreshClick, LinkChange, WriteError, Writer,
    WriterConfig, WriterHandle,
};

use crate::domain::{ClickEvent, Link, ShortCode};

/// A storage failure. Carries the cause for the log; HTTP answers say nothing of it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another process (is linkpulse already running?)")]
    Locked(String),
    #[error("storage error: {0}")]
    Fjall(#[from] ::fjall::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("NATS JetStream: {0}")]
    Nats(String),
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
    #[error("the store in {dir} is damaged: {cause}")]
    Damaged { dir: String, cause: String },
}

impl StoreError {
    /// Whether the store cannot be reached now (a cluster store's servers) and a later try
    /// may work: nothing was changed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Nats(_))
    }
}

/// The Unix socket a running server answers `linkpulse keys` on, in its data directory (the
/// embedded store's checks pass it by).
pub const SOCKET_NAME: &str = "control.sock";

/// What a code's actor starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub last: Option<ClickEvent>,
}

/// A place in a listing: the creation time (as the index sorts it) and code of the last link
/// a page held. Shown to clients as an opaque hex string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

impl Cursor {
    pub fn parse(raw: &str) -> Option<Self> {
        let bytes = hex::decode(raw).ok()?;
        let (_, code) = bytes.split_at_checked(8)?;
        ShortCode::from_key(std::str::from_utf8(code).ok()?).ok()?;
        Some(Self(bytes))
    }
}

impl Cursor {
    /// A place made from a link's creation time (as the index sorts it) and code.
    pub(crate) fn from_key(key: Vec<u8>) -> Self {
        Self(key)
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page {
    pub links: Vec<Link>,
    /// Where the next page starts, if anything may follow.
    pub next: Option<Cursor>,
}
