//! The commands that work on a store without serving it: `linkpulse keys` (through a running
//! server's control socket, or on the store itself) and `linkpulse check`.

use std::sync::Arc;

use anyhow::Context;

use crate::{
    config::KeysCommand,
    control,
    keys::{ApiKeys, Scope},
    store::{SharedStore, Store, with_stopped_store},
};

/// `linkpulse keys create|list|revoke`: through the running server's control socket, or, when
/// no server answers there, on the store opened here. Returns what to print on standard
/// output: the key alone (`create`), one JSON object a line (`list`), or the revoked id.
/// Blocking.
pub fn keys_command(command: KeysCommand) -> anyhow::Result<String> {
    let (data_dir, request) = match command {
        KeysCommand::Create {
            data_dir,
            name,
            scope,
            admin,
        } => {
            let scope = if admin { Scope::Admin } else { scope };
            (data_dir, control::Request::Create { name, scope })
        }
        KeysCommand::List { data_dir } => (data_dir, control::Request::List),
        KeysCommand::Revoke { id, data_dir } => (data_dir, control::Request::Revoke { id }),
    };
    let answer = match control::call(&data_dir, &request)? {
        Some(answer) => answer,
        None => {
            if matches!(request, control::Request::Create { .. }) {
                std::fs::create_dir_all(&data_dir).with_context(|| {
                    format!("cannot create the data directory {}", data_dir.display())
                })?;
            } else {
                anyhow::ensure!(
                    data_dir.join("version").exists(),
                    "there is no linkpulse store in {}",
                    data_dir.display()
                );
            }
            with_stopped_store(&data_dir, Store::open, |store| {
                let shared: SharedStore = Arc::new(store.clone());
                let keys = ApiKeys::load(&shared).context("cannot read the API keys")?;
                Ok(control::execute(&keys, request))
            })?
        }
    };
    match answer {
        control::Answer::Created(made) => Ok(format!("{}\n", made.key)),
        control::Answer::Keys(list) => Ok(list
            .iter()
            .map(|key| serde_json::to_string(key).unwrap_or_default() + "\n")
            .collect()),
        control::Answer::Revoked(id) => Ok(format!("revoked {id}\n")),
        control::Answer::Error(message) => Err(anyhow::anyhow!(message)),
    }
}

/// `linkpulse check`: reads the whole store in `data_dir` (see [`Store::verify`]) and returns
/// what it read, one `name: value` a line; an error says what is wrong.
pub fn check_store(data_dir: &std::path::Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        data_dir.join("version").exists(),
        "there is no linkpulse store in {}",
        data_dir.display()
    );
    with_stopped_store(data_dir, Store::open_and_read_all, |store| {
        let report = store.startup_report();
        let seen = report.verified.unwrap_or_default();
        Ok(format!(
            "store: {}\napi keys: {}\nlinks: {}\nclicks: {} (in {} codes, each numbered 1..n \
             without a gap)\ntotals record: {}\nfloor: not below the last open's\n\
             took: {} ms\nresult: sound\n",
            data_dir.display(),
            seen.keys,
            seen.links,
            seen.clicks,
            seen.codes_clicked,
            if seen.totals_record {
                "agrees"
            } else {
                "written now (the store had none)"
            },
            report.took.as_millis(),
        ))
    })
}
