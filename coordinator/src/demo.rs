//! `argus demo`: the newcomer's path (DESIGN §1, issue 5 item 8), in one process.
//!
//! A single-node coordinator with its data in `./argus-data` (the cluster's CA, node
//! certificate and admin token are made on the first run), a join token, and a local
//! agent that enrolls over QUIC with it and streams this host's metrics over mTLS. It
//! prints where to look and runs until Ctrl-C or SIGTERM, then stops the agent (its
//! spool synced) and the node (a final checkpoint). A second run reuses everything: the
//! agent keeps its identity, so no second token is spent.
//!
//! This module belongs to the `argus` binary, not to the library: it is the one place
//! where coordinator and agent meet, each through its public API (decisions.md 20).

use anyhow::{Context, Result};
use argus_agent::config::AgentConfig;
use argus_agent::runner::Runner;
use argus_agent::uplink::identity::Identity;
use argus_coordinator::fleet::admin_client::AdminClient;
use argus_coordinator::fleet::cli_config::CliConfig;
use argus_coordinator::fleet::cluster_files::ClusterPaths;
use argus_coordinator::fleet::token_api::CreateTokenRequest;
use argus_coordinator::server::{ServeConfig, start};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the demo's agent keeps its identity and spool, inside the data directory so
/// one directory holds the whole demo.
const AGENT_DIR: &str = "demo-agent";

pub struct Demo {
    pub data_dir: PathBuf,
    /// HTTP on TCP and agent QUIC on UDP, the same port (DESIGN §5: 3006).
    pub listen: SocketAddr,
    /// The agent's collection interval; shorter than an agent's default so the first
    /// points show up while the newcomer is still reading the banner.
    pub interval: Duration,
}

/// Runs the demo until `stop` completes.
pub async fn run(demo: Demo, stop: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&demo.data_dir)
        .with_context(|| format!("creating {}", demo.data_dir.display()))?;
    let mut serve = ServeConfig::new(demo.data_dir.clone(), demo.listen);
    serve.quic_listen = Some(demo.listen);
    let running = start(serve).await.context("starting the coordinator")?;
    let url = format!("http://{}", running.addr);

    let cli_path = ClusterPaths::of_data_dir(&demo.data_dir).cli_config();
    let cli = CliConfig::read(&cli_path)
        .with_context(|| format!("reading the admin token from {}", cli_path.display()))?;

    let agent_dir = demo.data_dir.join(AGENT_DIR);
    let mut agent = AgentConfig::default();
    agent.agent.state_dir = agent_dir.clone();
    agent.agent.interval = argus_common::config::HumanDuration(demo.interval);
    agent.uplink.coordinators = vec![demo.listen.to_string()];
    let enrolled = Identity::load(&agent_dir)
        .with_context(|| format!("reading the agent identity in {}", agent_dir.display()))?
        .is_some();
    if !enrolled {
        let admin = AdminClient::new(&CliConfig {
            url: url.clone(),
            token: cli.token.clone(),
        })?;
        let token = admin
            .create_token(&CreateTokenRequest {
                ttl: Some("10m".into()),
                uses: Some(1),
                ..CreateTokenRequest::default()
            })
            .await
            .context("creating the demo agent's join token")?;
        agent.uplink.join_token = token.join;
    }
    let runner = Runner::start(agent)
        .await
        .context("starting the demo agent")?;
    let (stop_agent, agent_stopped) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(async move {
        let mut stopped = agent_stopped;
        runner
            .run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });

    print_banner(&url, &cli.token, &demo.data_dir, enrolled);
    stop.await;
    tracing::info!("stopping the demo: agent first, then the coordinator");
    let _ = stop_agent.send(true);
    match agent_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("demo agent: {e}"),
        Err(e) => tracing::warn!("demo agent task: {e}"),
    }
    running.shutdown().await?;
    Ok(())
}

fn print_banner(url: &str, token: &str, data_dir: &std::path::Path, reused: bool) {
    let agent = if reused {
        "the local agent reconnects with the identity it enrolled with before"
    } else {
        "a local agent enrolls with a one-use join token and streams this host over QUIC + mTLS"
    };
    println!(
        "\nArgus demo is running ({agent}).\n\
         \n  API and Prometheus endpoints  {url}\
         \n  readiness                     {url}/ready\
         \n  data directory                {}\
         \n  admin token                   {token}\
         \n\nTry:\
         \n  curl -s -H 'Authorization: Bearer {token}' '{url}/api/v1/query?query=node_load1'\
         \n  curl -s -H 'Authorization: Bearer {token}' {url}/api/agents\
         \n\nCtrl-C stops it; running it again reuses the data directory.\n",
        data_dir.display()
    );
}
