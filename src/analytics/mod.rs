//! Turning what a redirect request carried into click details (the browser, OS, device class
//! and bot flag of the user agent, the client address anonymised, referrer and country), and
//! clicks into a link's aggregates: time series, unique visitors and top lists.

mod agent;
pub mod aggregates;
mod bots;
mod client;
mod geo;
pub mod query;

pub use agent::{Agent, AgentParser};
pub use aggregates::{AggregateSettings, Aggregates, VisitorKey};
pub use client::{anonymise_ip, clip};
pub use geo::{CountryDb, GeoError};
pub use query::{QueryError, StatsAnswer, StatsQuery};
