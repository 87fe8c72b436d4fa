//! The HTTP client of the admin commands (`argus token create|list|revoke`,
//! `argus agents list|revoke`, `argus api-token create|list|revoke`).
//!
//! reqwest with rustls and no provider of its own: the binary installs ring at start
//! (DESIGN §6). Answers are read up to a bound, and error bodies in the API's JSON
//! envelope are turned back into their message.

use super::agent_api::AgentView;
use super::api_tokens::{ApiTokenView, CreateApiTokenRequest, CreatedApiToken};
use super::cli_config::CliConfig;
use super::token_api::{CreateTokenRequest, CreatedToken, TokenView};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Largest answer read; a token listing of the maximum size is about 3 MiB.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}: {message}")]
    Api {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: answer over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: unexpected answer: {reason}")]
    Decode { url: String, reason: String },
}

pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(cfg: &CliConfig) -> Result<Self, AdminClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| AdminClientError::Http {
                url: cfg.url.clone(),
                source,
            })?;
        Ok(AdminClient {
            base: cfg.url.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            http,
        })
    }

    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreatedToken, AdminClientError> {
        self.post("/api/tokens", req).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenView>, AdminClientError> {
        self.get("/api/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, AdminClientError> {
        self.delete(&format!("/api/tokens/{id}")).await
    }

    pub async fn create_api_token(
        &self,
        req: &CreateApiTokenRequest,
    ) -> Result<CreatedApiToken, AdminClientError> {
        self.post("/api/api-tokens", req).await
    }

    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenView>, AdminClientError> {
        self.get("/api/api-tokens").await
    }

    pub async fn revoke_api_token(&self, id: &str) -> Result<ApiTokenView, AdminClientError> {
        self.delete(&format!("/api/api-tokens/{id}")).await
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentView>, AdminClientError> {
        self.get("/api/agents").await
    }

    pub async fn revoke_agent(&self, id: &str) -> Result<AgentView, AdminClientError> {
        self.delete(&format!("/api/agents/{id}")).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminClientError> {
        let url = format!("{}{path}", self.base);
        let rb = self.http.get(&url);
        self.send(url, rb).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminClientError> {
        let url = format!("{}{path}", self.base);
        let rb = self.http.delete(&url);
        self.send(url, rb).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        req: &B,
    ) -> Result<T, AdminClientError> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(req).map_err(|e| AdminClientError::Decode {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let rb = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(url, rb).await
    }

    /// Sends with the bearer token and returns the envelope's `data`.
    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, AdminClientError> {
        let http = |source| AdminClientError::Http {
            url: url.clone(),
            source,
        };
        let mut resp = rb.bearer_auth(&self.token).send().await.map_err(http)?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(AdminClientError::TooLarge { url });
            }
            body.extend_from_slice(&chunk);
        }
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&body);
        if !status.is_success() {
            let message = json
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(AdminClientError::Api {
                url,
                status: status.as_u16(),
                message,
            });
        }
        let decode = |reason: String| AdminClientError::Decode {
            url: url.clone(),
            reason,
        };
        let mut v = json.map_err(|e| decode(e.to_string()))?;
        let data = v
            .get_mut("data")
            .map(serde_json::Value::take)
            .ok_or_else(|| decode("no data in the answer".into()))?;
        serde_json::from_value(data).map_err(|e| decode(e.to_string()))
    }
}
