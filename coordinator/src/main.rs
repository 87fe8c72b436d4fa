//! `argus`: the coordinator and its admin CLI. Everything of substance is in the library.

use anyhow::bail;
use anyhow::{Context, Result};
use argus_coordinator::config::CoordinatorConfig;
use argus_coordinator::server::start;
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
        /// Config file [default: /etc/argus/argus.toml when it exists, else built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the Raft log and the series store live [config: serve.data_dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address [config: serve.listen].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Bearer token required on /api/v1/write; needed to listen beyond loopback.
        #[arg(long, env = "ARGUS_SERVE_WRITE_TOKEN", hide_env_values = true)]
        write_token: Option<String>,
    },
    /// Validate a config file; exits non-zero naming the file, key and reason of each problem.
    CheckConfig { file: PathBuf },
}

const DEFAULT_CONFIG: &str = "/etc/argus/argus.toml";

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        let (cfg, problems) = CoordinatorConfig::load(file, std::env::vars());
        if cfg.is_some() && problems.is_empty() {
            println!("{}: OK", file.display());
            return Ok(());
        }
        for p in problems.all() {
            eprintln!("error: {p}");
        }
        bail!(
            "{} has {} problem(s)",
            file.display(),
            problems.all().count()
        );
    }
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
                config,
                data_dir,
                listen,
                write_token,
            } => {
                let file =
                    config.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()));
                let mut cfg = match file {
                    Some(f) => {
                        let (c, problems) = CoordinatorConfig::load(&f, std::env::vars());
                        for p in &problems.recoverable {
                            tracing::error!("config: {p} (ignored)");
                        }
                        for p in &problems.errors {
                            tracing::error!("config: {p}");
                        }
                        match c {
                            Some(c) if problems.errors.is_empty() => c,
                            _ => bail!("{}: cannot start with these errors", f.display()),
                        }
                    }
                    None => CoordinatorConfig::default(),
                }
                .to_serve()
                .map_err(|(k, r)| anyhow::anyhow!("{k}: {r}"))?;
                if let Some(d) = data_dir {
                    cfg.data_dir = d;
                }
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                if write_token.is_some() {
                    cfg.write_token = write_token;
                }
                let running = start(cfg).await?;
                tracing::info!("argus serve is up on http://{}", running.addr);
                shutdown_signal().await;
                tracing::info!("shutting down");
                running.shutdown().await?;
                Ok(())
            }
            Command::CheckConfig { .. } => unreachable!("handled before the runtime starts"),
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
