//! `argus`: the coordinator and its admin CLI. Everything of substance is in the library.

use anyhow::bail;
use anyhow::{Context, Result};
use argus_coordinator::config::CoordinatorConfig;
use argus_coordinator::fleet::admin_client::AdminClient;
use argus_coordinator::fleet::api_tokens::CreateApiTokenRequest;
use argus_coordinator::fleet::cli_config::CliConfig;
use argus_coordinator::fleet::cluster_files;
use argus_coordinator::fleet::token_api::CreateTokenRequest;
use argus_coordinator::server::{ServeConfig, start};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

mod demo;

/// mimalloc instead of glibc malloc: under ingest load the coordinator allocates and
/// frees many short-lived buffers (decoded requests, entries, chunks) across threads, and
/// glibc's malloc, free and consolidation took about a fifth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Try Argus in one process: a single-node coordinator with its data in ./argus-data,
    /// its own CA, and a local agent that enrolls and streams this host. Runs until
    /// Ctrl-C; a second run reuses the data directory.
    Demo {
        /// Data directory (made on the first run, reused after).
        #[arg(long, default_value = "argus-data")]
        data_dir: PathBuf,
        /// HTTP (TCP) and agent QUIC (UDP) address.
        #[arg(long, default_value = "127.0.0.1:3006")]
        listen: SocketAddr,
        /// The local agent's collection interval, as `1s`, `5s`, `1m`.
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Validate a config file; exits non-zero naming the file, key and reason of each problem.
    CheckConfig { file: PathBuf },
    /// Create or manage the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Join tokens that let agents enroll.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled agents: list them, revoke one.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// API tokens with roles (viewer < operator < admin; ingest may only remote-write).
    #[command(subcommand, name = "api-token")]
    ApiToken(ApiTokenCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create the cluster in the data directory: CA (key in its own 0600 file), this
    /// node's certificate, an admin token (printed once) and the CLI config file.
    /// `argus serve` does the same on its first start; a second init refuses.
    Init {
        /// Config file [default: /etc/argus/argus.toml when it exists].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory [config: serve.data_dir].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address the CLI config points at [config: serve.listen].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address agents and peers dial (host:port); repeat for several
        /// [config: serve.advertise; default: the listen address].
        #[arg(long)]
        advertise: Vec<String>,
    },
}

/// Where an admin command finds the coordinator and its token: flags, then the
/// environment, then the CLI config file `cluster init` wrote.
#[derive(Args)]
struct ClientArgs {
    /// Coordinator HTTP URL, e.g. http://127.0.0.1:3006.
    #[arg(long, env = "ARGUS_URL", global = true)]
    url: Option<String>,
    /// Admin bearer token.
    #[arg(long, env = "ARGUS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// CLI config file [default: <data-dir>/cluster/cli.toml, then ~/.config/argus/cli.toml].
    #[arg(long, env = "ARGUS_CLI_CONFIG", global = true)]
    cli_config: Option<PathBuf>,
    /// Data directory whose cluster/cli.toml to read.
    #[arg(long, default_value = "./argus-data", global = true)]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a join token and print its join string (shown only this once).
    Create {
        /// Time to live (90s, 30m, 1h, ...).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many enrollments it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Only this host may use it.
        #[arg(long)]
        host: Option<String>,
        /// agent or coordinator.
        #[arg(long, default_value = "agent")]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List join tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a join token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// List enrolled agents: id, instance, host, version, last seen, certificate expiry,
    /// state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an agent by id: its connections close, and it can neither reconnect nor
    /// renew.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Mint an API token and print it (shown only this once).
    Create {
        /// viewer, operator, admin or ingest.
        #[arg(long)]
        role: String,
        /// A name to recognize it by in listings and the audit log.
        #[arg(long)]
        name: Option<String>,
        /// Time to live (30m, 720h, ...); without it the token does not expire.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List API tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an API token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

const DEFAULT_CONFIG: &str = "/etc/argus/argus.toml";

fn main() -> Result<()> {
    let cli = Cli::parse();
    // reqwest is built without a provider of its own: ring is the tree's only one.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
                let mut cfg = serve_config(config)?;
                if let Some(d) = data_dir {
                    cfg.data_dir = d;
                }
                if let Some(l) = listen {
                    // Agents' QUIC shares the HTTP port (DESIGN §5: 3006/tcp and /udp).
                    cfg.listen = l;
                    cfg.quic_listen = Some(l);
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
            Command::Demo {
                data_dir,
                listen,
                interval,
            } => {
                let interval = argus_common::config::HumanDuration::parse(&interval)
                    .map_err(|e| anyhow::anyhow!("--interval: {e}"))?
                    .0;
                demo::run(
                    demo::Demo {
                        data_dir,
                        listen,
                        interval,
                    },
                    shutdown_signal(),
                )
                .await
            }
            Command::Cluster(ClusterCommand::Init {
                config,
                data_dir,
                listen,
                advertise,
            }) => {
                let mut cfg = serve_config(config)?;
                if let Some(d) = data_dir {
                    cfg.data_dir = d;
                }
                if let Some(l) = listen {
                    // Agents' QUIC shares the HTTP port (DESIGN §5: 3006/tcp and /udp).
                    cfg.listen = l;
                    cfg.quic_listen = Some(l);
                }
                if !advertise.is_empty() {
                    cfg.advertise = advertise;
                }
                cluster_init(&cfg)
            }
            Command::Token(cmd) => token_command(cmd).await,
            Command::Agents(cmd) => agents_command(cmd).await,
            Command::ApiToken(cmd) => api_token_command(cmd).await,
            Command::CheckConfig { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}

/// The config of `serve` and `cluster init`: the file, or built-in defaults.
fn serve_config(config: Option<PathBuf>) -> Result<ServeConfig> {
    let file = config.or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()));
    match file {
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
    .map_err(|(k, r)| anyhow::anyhow!("{k}: {r}"))
}

fn cluster_init(cfg: &ServeConfig) -> Result<()> {
    let spec = cfg.init_spec()?;
    let made = cluster_files::init(&cfg.data_dir, &spec, wall_ms())?;
    let p = &made.paths;
    println!("Initialized a new Argus cluster in {}", p.dir.display());
    println!("  CA certificate:   {}", p.ca_cert().display());
    println!("  CA key (0600):    {}", p.ca_key().display());
    println!("  CA pin:           {}", made.ca_pin);
    println!(
        "  node certificate: {} (names: {})",
        p.node_cert().display(),
        made.node_names.join(", ")
    );
    println!("  CLI config:       {}", p.cli_config().display());
    println!();
    println!("Admin token (shown only now; the node keeps its hash, the CLI config holds it):");
    println!("  {}", made.admin_token.expose());
    Ok(())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn client(args: ClientArgs) -> Result<AdminClient> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let files = CliConfig::candidates(args.cli_config.as_deref(), &args.data_dir, home.as_deref());
    let cfg = CliConfig::resolve(args.url, args.token, &files)?;
    Ok(AdminClient::new(&cfg)?)
}

async fn api_token_command(cmd: ApiTokenCommand) -> Result<()> {
    match cmd {
        ApiTokenCommand::Create {
            role,
            name,
            ttl,
            client: c,
        } => {
            let created = client(c)?
                .create_api_token(&CreateApiTokenRequest { role, name, ttl })
                .await?;
            eprintln!(
                "API token {} (role {}{}, {}); the token below is shown only once:",
                created.id,
                created.role,
                if created.name.is_empty() {
                    String::new()
                } else {
                    format!(", name {}", created.name)
                },
                created.expires_ms.map_or_else(
                    || "does not expire".to_string(),
                    |e| format!("expires {}", when(e))
                )
            );
            println!("{}", created.token);
            Ok(())
        }
        ApiTokenCommand::List { json, client: c } => {
            let tokens = client(c)?.list_api_tokens().await?;
            print_listing(
                &tokens,
                json,
                format!(
                    "{:<16}  {:<8}  {:<7}  {:<20}  {:<16}  NAME",
                    "ID", "ROLE", "STATUS", "EXPIRES (UTC)", "CREATED BY"
                ),
                |t| {
                    format!(
                        "{:<16}  {:<8}  {:<7}  {:<20}  {:<16}  {}",
                        t.id,
                        t.role,
                        t.status,
                        t.expires_ms.map_or_else(|| "never".to_string(), when),
                        t.created_by,
                        if t.name.is_empty() { "-" } else { &t.name }
                    )
                },
            )
        }
        ApiTokenCommand::Revoke { id, client: c } => {
            let t = client(c)?.revoke_api_token(&id).await?;
            println!("API token {} revoked", t.id);
            Ok(())
        }
    }
}

async fn token_command(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            ttl,
            uses,
            host,
            role,
            client: c,
        } => {
            let created = client(c)?
                .create_token(&CreateTokenRequest {
                    ttl: Some(ttl),
                    uses: Some(uses),
                    host,
                    role: Some(role),
                })
                .await?;
            eprintln!(
                "token {} ({}, {} use(s), expires {}{}); the join string below is shown only once:",
                created.id,
                created.role,
                created.uses,
                when(created.expires_ms),
                created
                    .host
                    .as_deref()
                    .map(|h| format!(", host {h}"))
                    .unwrap_or_default()
            );
            println!("{}", created.join);
            Ok(())
        }
        TokenCommand::List { json, client: c } => {
            let tokens = client(c)?.list_tokens().await?;
            print_listing(
                &tokens,
                json,
                format!(
                    "{:<16}  {:<11}  {:<8}  {:>9}  {:<20}  HOST",
                    "ID", "ROLE", "STATUS", "USES LEFT", "EXPIRES (UTC)"
                ),
                |t| {
                    format!(
                        "{:<16}  {:<11}  {:<8}  {:>9}  {:<20}  {}",
                        t.id,
                        t.role,
                        t.status,
                        format!("{}/{}", t.uses_left, t.uses),
                        when(t.expires_ms),
                        t.host.as_deref().unwrap_or("-")
                    )
                },
            )
        }
        TokenCommand::Revoke { id, client: c } => {
            let t = client(c)?.revoke_token(&id).await?;
            println!("token {} revoked", t.id);
            Ok(())
        }
    }
}

async fn agents_command(cmd: AgentsCommand) -> Result<()> {
    match cmd {
        AgentsCommand::List { json, client: c } => {
            let agents = client(c)?.list_agents().await?;
            let or_dash = |t: Option<i64>| t.map(when).unwrap_or_else(|| "-".into());
            print_listing(
                &agents,
                json,
                format!(
                    "{:<16}  {:<20}  {:<20}  {:<10}  {:<19}  {:<19}  STATE",
                    "ID", "INSTANCE", "HOST", "VERSION", "LAST SEEN (UTC)", "CERT EXPIRES (UTC)"
                ),
                |a| {
                    format!(
                        "{:<16}  {:<20}  {:<20}  {:<10}  {:<19}  {:<19}  {}",
                        a.id,
                        a.instance,
                        a.host,
                        a.version.as_deref().unwrap_or("-"),
                        or_dash(a.last_seen),
                        or_dash(a.cert_expires),
                        a.state
                    )
                },
            )
        }
        AgentsCommand::Revoke { id, client: c } => {
            if !argus_coordinator::fleet::agents::valid_agent_id(&id) {
                bail!("{id:?} is not an agent id (see `argus agents list`)");
            }
            let a = client(c)?.revoke_agent(&id).await?;
            println!("agent {} ({}) revoked", a.id, a.instance);
            Ok(())
        }
    }
}

/// A listing as pretty JSON (`--json`, for scripts) or as a table for people.
fn print_listing<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    header: String,
    row: impl Fn(&T) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!("{header}");
    for r in rows {
        println!("{}", row(r));
    }
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
