//! Turning what a redirect request carried into click details: the browser, OS, device class
//! and bot flag of the user agent, the client address (anonymised), referrer and country.
//! Time series and breakdowns will live here too.

mod agent;
mod client;

pub use agent::{Agent, AgentParser};
pub use client::{anonymise_ip, clip};
