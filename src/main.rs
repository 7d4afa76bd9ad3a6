//! The `linkpulse` binary: parse the configuration, start tracing, run until a signal.

use anyhow::Context;
use clap::Parser;
use linkpulse::{
    App,
    config::{Cli, Command, KeysCommand},
};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LINKPULSE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Keys {
            command:
                KeysCommand::Create {
                    data_dir,
                    name,
                    admin,
                },
        }) => {
            let key = linkpulse::app::create_key(&data_dir, &name, admin)?;
            println!("{key}");
            Ok(())
        }
        Some(Command::Serve(config)) => serve(*config).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(config: linkpulse::ServeConfig) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    if let Some(key) = app.generated_key() {
        println!("linkpulse made its first API key; it is shown only this once:");
        println!("{key}");
    }
    app.run(shutdown_signal())
        .await
        .context("linkpulse stopped with an error")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
