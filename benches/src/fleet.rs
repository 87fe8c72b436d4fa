//! The admin side of a running `argus serve`, over its HTTP API as an operator's
//! script would use it: the admin token `cluster init` wrote, join tokens, revocation.

use crate::http::Conn;
use anyhow::{Context, Result, bail};
use argus_common::pki::JoinString;
use argus_coordinator::fleet::cli_config::CliConfig;
use argus_coordinator::fleet::token_api::{CreateTokenRequest, CreatedToken};
use std::path::Path;

/// An admin client of the coordinator whose HTTP API is on `127.0.0.1:port`.
pub struct Admin {
    port: u16,
    bearer: String,
}

impl Admin {
    /// Reads the admin token from `<data>/cluster/cli.toml` (written by the implicit
    /// `cluster init` of the first `argus serve`).
    pub fn from_data_dir(port: u16, data: &Path) -> Result<Admin> {
        let path = data.join("cluster").join("cli.toml");
        let cfg = CliConfig::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Admin {
            port,
            bearer: format!("Bearer {}", cfg.token),
        })
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let headers = [
            ("Authorization", self.bearer.as_str()),
            ("Content-Type", "application/json"),
        ];
        Conn::new(self.port)
            .request(method, path, &headers, body)
            .with_context(|| format!("{method} {path}"))
    }

    /// `POST /api/tokens`: a join token good for `uses` enrollments within `ttl`.
    pub fn join_token(&self, uses: u32, ttl: &str) -> Result<JoinString> {
        let req = CreateTokenRequest {
            ttl: Some(ttl.to_string()),
            uses: Some(uses),
            ..CreateTokenRequest::default()
        };
        let (status, body) = self.call("POST", "/api/tokens", &serde_json::to_vec(&req)?)?;
        if !(200..300).contains(&status) {
            bail!(
                "POST /api/tokens answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let created: CreatedToken = serde_json::from_value(v["data"].clone())
            .with_context(|| format!("POST /api/tokens answer {v}"))?;
        JoinString::parse(&created.join).map_err(|e| anyhow::anyhow!("join string: {e}"))
    }

    /// `DELETE /api/agents/{id}`: revokes the agent; answers once the entry is applied.
    pub fn revoke(&self, agent_id: &str) -> Result<()> {
        let path = format!("/api/agents/{agent_id}");
        let (status, body) = self.call("DELETE", &path, b"")?;
        if !(200..300).contains(&status) {
            bail!(
                "DELETE {path} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }
}
