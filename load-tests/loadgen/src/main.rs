//! `linkpulse-load`: load generator for linkpulse (redirects, SSE fan-out, many distinct codes).

mod counts;
mod create;
mod distinct;
mod fanout;
mod http;
mod redirect;
mod report;
mod restart;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load generator for linkpulse. Every mode prints a `key: value` summary and exits non-zero
/// when one of its checks fails.
#[derive(Parser)]
#[command(name = "linkpulse-load", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

/// Flags every mode takes.
#[derive(clap::Args)]
pub struct Common {
    /// The server, as http://host:port.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// An API key of the server (an admin key reads every link).
    #[arg(long, global = true, env = "LINKPULSE_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The server's process id: its resident memory is read from /proc/<pid>/status.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Mode {
    /// N redirects over C keep-alive connections: throughput, latency, exact counting.
    Redirect(redirect::Args),
    /// N live subscribers, K clicks: delivery latency to every subscriber, memory per subscriber.
    Fanout(fanout::Args),
    /// N codes clicked once each: server memory and live actors over time.
    Distinct(distinct::Args),
    /// Writes click events straight into a data directory (for `restart`).
    Seed(restart::SeedArgs),
    /// Start-up time of the server on a seeded store beside an empty one.
    Restart(restart::RestartArgs),
    /// Makes N links and nothing else (for load tools that only click, like wrk).
    Create(create::Args),
    /// The sum of clickCount over N links (to check the counting of other load tools).
    Counts(counts::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = match raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            0
        }
    };
    let result = match cli.mode {
        Mode::Redirect(args) => redirect::run(&cli.common, args).await,
        Mode::Fanout(args) => fanout::run(&cli.common, args, nofile).await,
        Mode::Distinct(args) => distinct::run(&cli.common, args).await,
        Mode::Seed(args) => restart::seed(args).await,
        Mode::Restart(args) => restart::restart(&cli.common, args).await,
        Mode::Create(args) => create::run(&cli.common, args).await,
        Mode::Counts(args) => counts::run(&cli.common, args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("linkpulse-load: a check failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("linkpulse-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit and returns the new soft limit.
fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct passed to it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}
