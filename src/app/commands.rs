//! The commands that work on a store without serving it: `linkpulse keys` (through a running
//! server's control socket, or on the store itself, or in a cluster's keys bucket) and
//! `linkpulse check` (of a stopped store, or of a cluster's).

use std::sync::Arc;

use anyhow::Context;

use crate::{
    config::{ClusterArgs, KeysCommand, UsersCommand},
    control,
    keys::{ApiKeys, Scope},
    store::{ClusterStore, SharedStore, Store, with_stopped_store},
};

/// `linkpulse keys create|list|revoke`: through the running server's control socket, or, when
/// no server answers there, on the store opened here. Returns what to print on standard
/// output: the key alone (`create`), one JSON object a line (`list`), or the revoked id.
/// With `--nats`, on the cluster's keys bucket (the nodes follow it). Blocking (call it from
/// `spawn_blocking` inside the runtime: a cluster's client runs on it).
pub fn keys_command(command: KeysCommand) -> anyhow::Result<String> {
    let (data_dir, cluster, request) = match command {
        KeysCommand::Create {
            data_dir,
            cluster,
            name,
            scope,
            admin,
        } => {
            let scope = if admin { Scope::Admin } else { scope };
            (data_dir, cluster, control::Request::Create { name, scope })
        }
        KeysCommand::List { data_dir, cluster } => (data_dir, cluster, control::Request::List),
        KeysCommand::Revoke {
            id,
            data_dir,
            cluster,
        } => (data_dir, cluster, control::Request::Revoke { id }),
    };
    let answer = if let ClusterArgs {
        nats: Some(urls),
        nats_replicas,
    } = cluster
    {
        cluster_keys(&urls, nats_replicas, request)?
    } else {
        local_keys(&data_dir, request)?
    };
    match answer {
        control::Answer::Created(made) => Ok(format!("{}\n", made.key)),
        control::Answer::Keys(list) => Ok(list
            .iter()
            .map(|key| serde_json::to_string(key).unwrap_or_default() + "\n")
            .collect()),
        control::Answer::Revoked(id) => Ok(format!("revoked {id}\n")),
        control::Answer::Error(message) => Err(anyhow::anyhow!(message)),
        other => Err(anyhow::anyhow!("an answer about something else: {other:?}")),
    }
}

/// `linkpulse users create|list|disable`: as [`keys_command`], for users. Returns what to
/// print. `read_password` reads the password of `create` (one line of standard input).
pub fn users_command(
    command: UsersCommand,
    read_password: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let (data_dir, cluster, request) = match command {
        UsersCommand::Create {
            email,
            role,
            password_stdin: false,
            data_dir,
            cluster,
        } => (
            data_dir,
            cluster,
            control::Request::UserInvite { email, role },
        ),
        UsersCommand::Create {
            email,
            role,
            data_dir,
            cluster,
            ..
        } => {
            let password = read_password()?;
            (
                data_dir,
                cluster,
                control::Request::UserCreate {
                    email,
                    role,
                    password,
                },
            )
        }
        UsersCommand::List { data_dir, cluster } => (data_dir, cluster, control::Request::UserList),
        UsersCommand::Disable {
            email,
            data_dir,
            cluster,
        } => (data_dir, cluster, control::Request::UserDisable { email }),
    };
    let answer = match cluster.nats {
        Some(urls) => {
            let runtime = tokio::runtime::Handle::current();
            let store = runtime.block_on(ClusterStore::open_existing(&urls))?;
            let shared: SharedStore = Arc::new(store);
            let keys = ApiKeys::load(&shared).context("cannot read the API keys")?;
            control::execute(&keys, request)
        }
        None => local_keys(&data_dir, request)?,
    };
    let line = |u: &control::UserInfo| serde_json::to_string(u).unwrap_or_default() + "\n";
    match answer {
        control::Answer::User(user) => Ok(line(&user)),
        control::Answer::Users(all) => Ok(all.iter().map(line).collect()),
        control::Answer::Invited(path) => Ok(format!(
            "sign-up link (once, within 7 days), on this server's address: {path}\n"
        )),
        control::Answer::Error(message) => Err(anyhow::anyhow!(message)),
        other => Err(anyhow::anyhow!("an answer about something else: {other:?}")),
    }
}

/// A key request on the cluster at `urls`: `create` makes the store's streams and buckets
/// (with `replicas` copies) if the cluster has none yet; `list` and `revoke` need a store.
fn cluster_keys(
    urls: &str,
    replicas: usize,
    request: control::Request,
) -> anyhow::Result<control::Answer> {
    let runtime = tokio::runtime::Handle::current();
    let store = if matches!(request, control::Request::Create { .. }) {
        runtime.block_on(ClusterStore::open_for_command(urls, replicas))?
    } else {
        runtime.block_on(ClusterStore::open_existing(urls))?
    };
    let shared: SharedStore = Arc::new(store);
    let keys = ApiKeys::load(&shared).context("cannot read the API keys")?;
    Ok(control::execute(&keys, request))
}

/// A key request through the running server's control socket in `data_dir`, or on the
/// store there when no server answers.
fn local_keys(
    data_dir: &std::path::Path,
    request: control::Request,
) -> anyhow::Result<control::Answer> {
    Ok(match control::call(data_dir, &request)? {
        Some(answer) => answer,
        None => {
            if matches!(request, control::Request::Create { .. }) {
                std::fs::create_dir_all(data_dir).with_context(|| {
                    format!("cannot create the data directory {}", data_dir.display())
                })?;
            } else {
                anyhow::ensure!(
                    data_dir.join("version").exists(),
                    "there is no linkpulse store in {}",
                    data_dir.display()
                );
            }
            with_stopped_store(data_dir, Store::open, |store| {
                let shared: SharedStore = Arc::new(store.clone());
                let keys = ApiKeys::load(&shared).context("cannot read the API keys")?;
                Ok(control::execute(&keys, request))
            })?
        }
    })
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

/// `linkpulse check --nats URLS`: reads the whole cluster store (see
/// [`ClusterStore::verify`]) and returns what it read, one `name: value` a line; an error
/// says what is wrong. Nodes may run meanwhile.
pub async fn check_cluster(urls: &str) -> anyhow::Result<String> {
    let store = ClusterStore::open_existing(urls).await?;
    let started = std::time::Instant::now();
    let seen = store
        .verify()
        .await
        .with_context(|| format!("the cluster store at {urls} is not sound"))?;
    Ok(format!(
        "store: NATS JetStream at {urls}\napi keys: {}\nlinks: {}\naggregates snapshots: {}\n\
         clicks: {} (in {} codes, each numbered 1..n without a gap; {} messages)\n\
         clicks of deleted links: {} codes (purged when the code is made again)\n\
         took: {} ms\nresult: sound\n",
        seen.keys,
        seen.links,
        seen.snapshots,
        seen.clicks,
        seen.codes_clicked,
        seen.messages,
        seen.codes_without_link,
        started.elapsed().as_millis(),
    ))
}
