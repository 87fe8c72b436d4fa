//! `argus`: the coordinator and its admin CLI. Everything of substance is in the library.

use anyhow::{Context, Result};
use argus_coordinator::server::{ServeConfig, start};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "argus", version, about = "Argus coordinator")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single coordinator node: Prometheus remote write in, /federate and the
    /// series API out.
    Serve {
        /// Where the Raft log and the series store live.
        #[arg(long, default_value = "./argus-data", env = "ARGUS_SERVE_DATA_DIR")]
        data_dir: PathBuf,
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:3006", env = "ARGUS_SERVE_LISTEN")]
        listen: SocketAddr,
        /// Bearer token required on /api/v1/write; needed to listen beyond loopback.
        #[arg(long, env = "ARGUS_SERVE_WRITE_TOKEN", hide_env_values = true)]
        write_token: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve {
                data_dir,
                listen,
                write_token,
            } => {
                let mut cfg = ServeConfig::new(data_dir, listen);
                cfg.write_token = write_token;
                let running = start(cfg).await?;
                tracing::info!("argus serve is up on http://{}", running.addr);
                shutdown_signal().await;
                tracing::info!("shutting down");
                running.shutdown().await?;
                Ok(())
            }
        }
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    match term.as_mut() {
        Some(t) => {
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
