//! Integration tests: each starts the real service on 127.0.0.1:0 with its own temporary fjall
//! store, and talks to it over HTTP like a user would. `engines` runs one behaviour suite on
//! fjall and on a JetStream server of its own; `cluster` runs nodes against a NATS cluster.

pub mod accounts;
pub mod acme;
mod api;
mod bad_input;
mod binary;
mod browser;
mod bulk;
mod client_limits;
mod cluster;
mod cluster_parity;
mod engines;
mod faults;
pub mod first_key;
mod https;
mod imports;
mod keys;
mod lifecycle;
mod longtail;
mod manage;
mod oidc_provider;
mod openapi;
mod ops;
mod overload;
mod pages;
mod promises;
mod qr;
mod realtime;
mod redirect;
mod restart;
mod routes;
mod stall;
mod stats;
mod support;
mod transfer;
mod truth;
mod upgrade;
mod webhooks;
mod wire;
pub mod workspaces;
