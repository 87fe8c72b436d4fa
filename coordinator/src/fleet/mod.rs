//! The fleet (issue 5, DESIGN §3.6): the cluster's CA and files, join tokens, and (as
//! enrollment lands) agents, certificates, revocation and audit.
//!
//! - [`cluster_files`]: `argus cluster init`: CA, node certificate, admin token, CLI
//!   config, created once per cluster.
//! - [`admin_token`]: the admin API token and the hash the node keeps of it.
//! - [`tokens`]: join tokens: the replicated table, validation and apply.
//! - [`state`]: the fleet's part of the replicated state, which the state machine
//!   delegates to and checkpoints.
//! - [`token_api`]: JSON shapes of `/api/tokens`.
//! - [`cli_config`]: where the admin commands find the coordinator and their token.
//! - [`admin_client`]: the admin commands' HTTP client.
//! - [`api_tokens`]: API tokens with roles, the replicated table.
//! - [`audit`]: the replicated audit log and the sink that aggregates repeats.
//! - [`gate`]: what the agent QUIC listener asks the fleet (enroll, renew, admit).
//! - [`agents`]: the replicated agent table (instances, serials, revocation).
//! - [`enroll`]: the [`gate::FleetGate`] of a node: enrollment, renewal, admission.
//! - [`agent_api`]: JSON shapes of `/api/agents`.

pub mod admin_client;
pub mod admin_token;
pub mod agent_api;
pub mod agents;
pub mod api_tokens;
pub mod audit;
pub mod cli_config;
pub mod cluster_files;
pub mod enroll;
pub mod gate;
pub mod state;
pub mod token_api;
pub mod tokens;
