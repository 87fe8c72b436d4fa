//! argus-agent: the command line. Everything of substance lives in the library.

use anyhow::{Context, Result, bail};
use argus_agent::collect::agent::AgentStats;
use argus_agent::collection::{Collectors, host_name, tick_at_or_before};
use argus_agent::config::{AgentConfig, LogFormat, Problems};
use argus_agent::exposition::{Target, render_json, render_text};
use argus_agent::runner::Runner;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const DEFAULT_CONFIG: &str = "/etc/argus/argus-agent.toml";

#[derive(Parser)]
#[command(
    name = "argus-agent",
    version,
    about = "Collects host, container and service-health metrics"
)]
struct Cli {
    /// Config file; defaults to /etc/argus/argus-agent.toml when it exists, else built-in defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect once and print it as it will be stored (with instance, job and timestamp).
    Collect {
        /// Required: continuous collection is `run`.
        #[arg(long)]
        once: bool,
        #[arg(long, value_enum, default_value_t = Format::Prom)]
        format: Format,
    },
    /// Serve the host's metrics for a Prometheus to scrape, as node_exporter does.
    ServeMetrics {
        /// Address to listen on [default: metrics.listen from the config, 127.0.0.1:9100].
        #[arg(long)]
        listen: Option<String>,
    },
    /// Collect on the interval into the on-disk spool and stream it to the coordinators.
    Run,
    /// Enroll with a join string (`argus token create` prints one): generates the key
    /// here, checks the coordinator against the CA pinned in the string, and stores the
    /// key, certificate, CA and agent id in the state directory.
    Join {
        /// `argus-join:v1:...`
        join_string: String,
        /// State directory [default: agent.state_dir from the config].
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file; exits non-zero naming the file, key and reason of each problem.
    CheckConfig { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Prom,
    Json,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        return check_config(file);
    }
    let cfg = load_config(cli.config.as_deref())?;
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Collect { once, format } => {
                if !once {
                    bail!("`collect` needs --once; use `run` to collect continuously");
                }
                collect_once(&cfg, format).await
            }
            Command::ServeMetrics { listen } => {
                let addr = listen.unwrap_or_else(|| cfg.metrics.listen.clone());
                argus_agent::serve::serve_metrics(cfg, &addr)
                    .await
                    .with_context(|| format!("serving metrics on {addr}"))
            }
            Command::Run => Runner::start(cfg)
                .await?
                .run_until_signal()
                .await
                .map_err(Into::into),
            Command::Join {
                join_string,
                state_dir,
            } => join(&cfg, &join_string, state_dir).await,
            Command::CheckConfig { .. } => unreachable!("handled above"),
        }
    })
}

async fn join(cfg: &AgentConfig, join_string: &str, state_dir: Option<PathBuf>) -> Result<()> {
    use argus_agent::uplink::identity::Identity;
    let dir = state_dir.unwrap_or_else(|| cfg.agent.state_dir.clone());
    let join = argus_common::pki::JoinString::parse(join_string.trim())
        .context("the join string is not usable")?;
    if let Some(existing) = Identity::load(&dir)? {
        bail!(
            "{} already holds the identity of agent {}; remove it to enroll again",
            Identity::path(&dir).display(),
            existing.agent_id
        );
    }
    let host = host_name(&cfg.host.proc_root);
    let identity = argus_agent::uplink::enroll::enroll(&join, &host)
        .await
        .context("enrollment failed")?;
    identity.store(&dir)?;
    println!(
        "enrolled as agent {} ({}); identity stored in {}",
        identity.agent_id,
        host,
        Identity::path(&dir).display()
    );
    Ok(())
}

fn check_config(file: &Path) -> Result<()> {
    let (cfg, problems) = AgentConfig::load(file, std::env::vars());
    if problems.is_empty() && cfg.is_some() {
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
    )
}

/// Loads the config for a command that runs: unrecoverable problems stop it, the
/// rest are logged once logging is up and the agent carries on with what it could use.
fn load_config(path: Option<&Path>) -> Result<AgentConfig> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok(AgentConfig::default());
    };
    let (cfg, problems) = AgentConfig::load(&path, std::env::vars());
    for p in &problems.errors {
        eprintln!("error: {p}");
    }
    let Some(cfg) = cfg.filter(|_| problems.errors.is_empty()) else {
        bail!("{}: cannot start with these errors", path.display());
    };
    DEFERRED.with(|d| *d.borrow_mut() = Some(problems));
    Ok(cfg)
}

thread_local! {
    /// Recoverable config problems, reported once the log format is known.
    static DEFERRED: std::cell::RefCell<Option<Problems>> = const { std::cell::RefCell::new(None) };
}

fn init_logging(cfg: &AgentConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    DEFERRED.with(|d| {
        if let Some(problems) = d.borrow_mut().take() {
            for p in &problems.recoverable {
                tracing::error!("config: {p} (ignored; the agent runs without it)");
            }
        }
    });
}

async fn collect_once(cfg: &AgentConfig, format: Format) -> Result<()> {
    let mut collectors = Collectors::from_config(cfg, Arc::new(AgentStats::default()))?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let interval_ms = cfg.agent.interval.0.as_millis() as i64;
    let tick = tick_at_or_before(now_ms, interval_ms);
    let (collection, errors) = collectors.collect(tick).await;
    for e in &errors {
        tracing::warn!("{e}");
    }
    let instance = cfg.instance(&host_name(&cfg.host.proc_root));
    let text = match format {
        Format::Prom => render_text(
            &collection,
            Target::Stored {
                instance: &instance,
            },
        ),
        Format::Json => render_json(&collection, &instance),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    if matches!(format, Format::Json) {
        stdout.write_all(b"\n")?;
    }
    Ok(())
}
