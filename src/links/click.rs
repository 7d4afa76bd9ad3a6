//! A click as the redirect handler saw it, before its actor numbers it. Its own module so the
//! inbox, the actor and the directory can all use it without importing one another.

use tokio::sync::oneshot;

#[derive(Debug)]
pub struct Click {
    /// Epoch milliseconds.
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: String,
    pub referer: Option<String>,
    pub country: Option<String>,
    /// Fired once the click is committed (and fsynced in strict mode); dropped if it never is.
    pub ack: Option<oneshot::Sender<()>>,
    /// For a link with a visit limit: told whether the click was counted (within the limit)
    /// as soon as the actor numbers it; dropped if the actor never takes it.
    pub admit: Option<oneshot::Sender<bool>>,
}
