//! The `linkpulse` binary: parse the configuration, start tracing, run until a signal.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use linkpulse::{
    App,
    config::{Cli, Command, LogFormat},
};
use tracing_subscriber::EnvFilter;

/// mimalloc: fewer cycles per allocation than glibc malloc on the many small, short-lived
/// allocations of a request (measured with load-tests/compare.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(config)) => config.log_format,
        _ => cli.serve.log_format,
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            // fjall's routine work (opening, ingestion, recovery) is `debug`: `info` is what an
            // operator acts on.
            EnvFilter::try_from_env("LINKPULSE_LOG").unwrap_or_else(|_| {
                EnvFilter::new("info,fjall=warn,lsm_tree=warn,async_nats=warn")
            }),
        )
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line: {"timestamp","level","message",<fields>,"target"}.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Some(Command::Keys { command }) => {
            let out = tokio::task::spawn_blocking(move || linkpulse::app::keys_command(command))
                .await??;
            print!("{out}");
            Ok(())
        }
        Some(Command::Users { command }) => {
            let out = tokio::task::spawn_blocking(move || {
                linkpulse::app::users_command(command, || {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    Ok(line
                        .strip_suffix('\n')
                        .map(|l| l.strip_suffix('\r').unwrap_or(l))
                        .unwrap_or(&line)
                        .to_owned())
                })
            })
            .await??;
            print!("{out}");
            Ok(())
        }
        Some(Command::Check { data_dir, nats }) => {
            let report = match nats {
                Some(urls) => linkpulse::app::check_cluster(&urls).await?,
                None => {
                    tokio::task::spawn_blocking(move || linkpulse::app::check_store(&data_dir))
                        .await??
                }
            };
            print!("{report}");
            Ok(())
        }
        Some(Command::Export {
            data_dir,
            nats,
            output,
        }) => {
            let summary = tokio::task::spawn_blocking(move || match nats {
                Some(urls) => linkpulse::transfer::export_cluster_command(&urls, &output),
                None => linkpulse::transfer::export_command(&data_dir, &output),
            })
            .await??;
            eprint!("{summary}");
            Ok(())
        }
        Some(Command::Import {
            data_dir,
            input,
            file,
            format,
            owner,
            dry_run,
        }) => {
            let input = file.unwrap_or(input);
            let summary = tokio::task::spawn_blocking(move || {
                linkpulse::transfer::import_command(&data_dir, &input, format, owner, dry_run)
            })
            .await??;
            print!("{summary}");
            Ok(())
        }
        Some(Command::Migrate {
            data_dir,
            nats,
            nats_replicas,
        }) => {
            let summary = linkpulse::store::migrate_command(&data_dir, nats, nats_replicas).await?;
            print!("{summary}");
            Ok(())
        }
        Some(Command::Serve(config)) => serve(*config).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(config: linkpulse::ServeConfig) -> anyhow::Result<()> {
    // Register the signal handlers before anything is served, so a signal is never missed.
    let stop = shutdown_signal().context("cannot install signal handlers")?;
    let key_store = linkpulse::app::key_store_flag(&config);
    let app = App::build(config).await?;
    if let Some(key) = app.generated_key() {
        println!("linkpulse made its first API key; it is shown only this once:");
        println!("{key}");
        println!(
            "To make another key later (the server may run): linkpulse keys create --admin \
             {key_store}"
        );
    }
    if let Some(link) = app.first_signup() {
        println!("Sign up as the first owner (once, within 7 days; no user exists yet): {link}");
    }
    if let Err(e) = app.run(stop).await {
        // Exit at once: a thread stuck on a failed disk must not hold the process.
        eprintln!("Error: linkpulse stopped with an error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
