//! One behaviour suite, two engines: each behaviour below is written once, as an
//! `async fn(Engine) -> TestResult`, and runs as two tests, `engines::fjall::<name>` on the
//! embedded fjall store and `engines::nats::<name>` on a JetStream server of its own
//! (`--nats`, one replica). Only behaviours both engines promise alike belong here; those that
//! need fjall's files (faults, the store opened by hand, retention) stay in their own files,
//! and the cluster's own promises in `cluster/`.
//!
//! `links` (creating, changing, deleting, listing links, API keys), `counting` (exact counts,
//! visit limits and expiry under racing clients, passwords, stats), `streams` (the live stream).

mod bulk;
mod counting;
mod domains;
mod links;
mod streams;

use std::ops::Deref;

use linkpulse::ServeConfig;

use crate::{
    cluster::Nats,
    faults::process::click_log,
    support::{TestApp, spawn_with, stored},
};

/// The store a test's app keeps its links, keys and clicks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded fjall store in the app's temp data directory.
    Fjall,
    /// A single `nats-server` with JetStream, started for the test on a free port.
    Nats,
}

/// An app on its engine: the [`TestApp`] (also reached through `Deref`) and, on
/// [`Engine::Nats`], the `nats-server` it uses, killed when this is dropped (after the app).
pub struct Running {
    pub app: TestApp,
    nats: Option<Nats>,
}

/// Starts the app on `engine` with its configuration changed by `tweak`; the app gets a temp
/// data directory either way.
pub async fn spawn_on(engine: Engine, tweak: impl FnOnce(&mut ServeConfig)) -> Running {
    let nats = match engine {
        Engine::Fjall => None,
        Engine::Nats => Some(Nats::start(1)),
    };
    let app = spawn_with(None, |config| {
        on_server(config, nats.as_ref());
        tweak(config);
    })
    .await;
    if let Some(nats) = &nats {
        // A `nats` test must not pass on fjall: the app made its streams on this server.
        let jetstream = nats.dir.path().join("js-0").join("jetstream");
        assert!(
            std::fs::read_dir(&jetstream).is_ok_and(|mut entries| entries.next().is_some()),
            "the app stores nothing in {}",
            jetstream.display()
        );
    }
    Running { app, nats }
}

/// Points the app at `nats`, if the test runs on it.
fn on_server(config: &mut ServeConfig, nats: Option<&Nats>) {
    if let Some(nats) = nats {
        config.nats = Some(nats.urls());
        config.nats_replicas = 1;
    }
}

impl Deref for Running {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl Running {
    pub fn engine(&self) -> Engine {
        match self.nats {
            None => Engine::Fjall,
            Some(_) => Engine::Nats,
        }
    }

    /// Stops the app the way a signal does (then the server, if any).
    pub async fn stop(self) {
        self.app.stop().await;
    }

    /// Stops the app and starts it again, with the default configuration, on what it stored:
    /// the same data directory, or the same JetStream server.
    pub async fn restart(self) -> Self {
        let Self { app, nats } = self;
        let dir = app.stop().await;
        let app = spawn_with(Some(dir), |config| on_server(config, nats.as_ref())).await;
        Self { app, nats }
    }

    /// Stops the app and reads what it stored of `code`: the stored count and the number of
    /// stored click events. fjall's are read from its files; JetStream's through a new app on
    /// the same server (its count, and every stored click, a page of the clicks API at a time).
    pub async fn stored(self, code: &str) -> (u64, u64) {
        match self.engine() {
            Engine::Fjall => {
                let dir = self.app.stop().await;
                stored(dir.path(), code)
            }
            Engine::Nats => {
                let app = self.restart().await;
                let count = app.count(code).await;
                let events = click_log(&app.client, &app.base, code)
                    .await
                    .unwrap_or_else(|e| panic!("the clicks of {code}: {e}"));
                app.stop().await;
                (count, events.len() as u64)
            }
        }
    }
}

/// Makes each listed behaviour two tests, `fjall::<name>` and `nats::<name>`, on a 4-thread
/// runtime (several behaviours race clients against each other).
macro_rules! on_both_engines {
    ($($module:ident::$name:ident),+ $(,)?) => {
        /// Every behaviour on the embedded fjall store.
        mod fjall {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> crate::support::TestResult {
                    super::$module::$name(super::Engine::Fjall).await
                }
            )+
        }
        /// Every behaviour on a JetStream server.
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> crate::support::TestResult {
                    super::$module::$name(super::Engine::Nats).await
                }
            )+
        }
    };
}

on_both_engines!(
    links::create_redirect_and_read_back,
    links::a_change_reaches_the_redirect_at_once_and_survives_a_restart,
    links::a_deleted_code_can_be_used_again_after_its_hold,
    links::listing_is_newest_first_paged_filtered_and_per_owner,
    links::an_admin_makes_lists_and_revokes_keys,
    bulk::bulk_creations_changes_and_imports_answer_per_link_and_last,
    domains::an_admin_adds_lists_changes_and_removes_domains,
    domains::links_live_on_their_domain_and_the_host_picks_it,
    counting::soak_concurrent_redirects_to_one_code_are_counted_exactly,
    counting::max_visits_is_exact_under_64_racing_clients,
    counting::expiry_is_exact_under_64_racing_clients,
    counting::a_password_link_shows_a_form_and_counts_only_the_right_password,
    counting::a_known_set_of_clicks_gives_known_series_and_top_lists,
    streams::first_frame_at_once_then_rising_counts_with_ids,
    streams::last_event_id_skips_a_state_the_client_has,
);
