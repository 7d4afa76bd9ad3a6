//! A click as the redirect handler saw it, before its actor numbers it. Its own module so the
//! inbox, the actor and the directory can all use it without importing one another.

use tokio::sync::oneshot;

use crate::{analytics::AgentParser, domain::ClickEvent};

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

impl Click {
    /// The click's stored event, numbered `seq` (0: the writer numbers it), with its user agent
    /// classified; and its ack, which goes with the batch it is committed in.
    pub fn into_event(
        self,
        seq: u64,
        agents: &AgentParser,
    ) -> (ClickEvent, Option<oneshot::Sender<()>>) {
        let agent = agents.classify(&self.user_agent);
        let event = ClickEvent {
            seq,
            at: self.at,
            ip: self.ip,
            user_agent: self.user_agent,
            referer: self.referer,
            country: self.country,
            browser: agent.browser,
            os: agent.os,
            device: agent.device,
            bot: agent.bot,
        };
        (event, self.ack)
    }
}
