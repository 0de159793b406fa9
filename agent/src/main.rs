//! `decnet-agent`: the worker daemon binary.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 setup error (missing or
//! unusable bundle, bad state file, cannot bind).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use decnet_agent::config::DriverKind;
use decnet_agent::daemon::{self, ServeOptions};

/// decnet worker agent: deploys, tears down and reports workloads for the master.
#[derive(Debug, Parser)]
#[command(name = "decnet-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent API over mTLS.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0")]
        host: IpAddr,
        /// Listen port.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Agent bundle directory (worker.key, worker.crt, ca.crt); default ~/.decnet/agent.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// State directory (decnet-state.json, logs/, compose/); default ~/.decnet/agent-state.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Workload driver.
        #[arg(long, value_enum, default_value_t = DriverArg::Process)]
        driver: DriverArg,
        /// Docker Compose project name (compose driver).
        #[arg(long, default_value = "decnet")]
        compose_project: String,
        /// Seconds between SIGTERM and SIGKILL when stopping a process decky.
        #[arg(long, default_value_t = 10)]
        stop_grace: u64,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DriverArg {
    Process,
    Compose,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DECNET_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    decnet_pki::provider::install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve {
                host,
                port,
                bundle_dir,
                state_dir,
                driver,
                compose_project,
                stop_grace,
            } => {
                let home = decnet_pki::bundle::default_decnet_home();
                let opts = ServeOptions {
                    listen: SocketAddr::new(host, port),
                    bundle_dir: bundle_dir.unwrap_or_else(|| home.join("agent")),
                    state_dir: state_dir.unwrap_or_else(|| home.join("agent-state")),
                    driver: match driver {
                        DriverArg::Process => DriverKind::Process,
                        DriverArg::Compose => DriverKind::Compose,
                    },
                    compose_project,
                    stop_grace: Duration::from_secs(stop_grace),
                };
                serve(opts).await
            }
        }
    });
    std::process::exit(code);
}

async fn serve(opts: ServeOptions) -> i32 {
    let agent = match daemon::start(&opts).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // Tests and supervisors read this line to learn the bound port.
    println!("decnet-agent listening on {}", agent.local_addr);
    tracing::info!(addr = %agent.local_addr, driver = %opts.driver, "agent serving");
    match agent.serve(daemon::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: serving failed: {e}");
            1
        }
    }
}
