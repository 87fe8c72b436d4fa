//! The JSON shape of the agent API (`/api/agents`), shared by the node's handlers and
//! the `argus agents` commands so the two cannot drift apart. The product documents
//! define no agent listing, so the fields are the ones `argus agents list` shows.

use super::agents::AgentRecord;
use serde::{Deserialize, Serialize};

/// One agent in `GET /api/agents`. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: String,
    /// The `instance` label its samples carry.
    pub instance: String,
    pub host: String,
    /// What it reported at its last connection; `null` before the first.
    pub version: Option<String>,
    /// Its last connection (recorded at most once a minute); `null` before the first.
    pub last_seen: Option<i64>,
    /// Not-after of its newest certificate; `null` if none was logged.
    pub cert_expires: Option<i64>,
    /// `active`, `revoked` or `expired`.
    pub state: String,
    pub enrolled: i64,
    pub revoked: Option<i64>,
}

impl AgentView {
    pub fn of(id: &str, a: &AgentRecord, now_ms: i64) -> AgentView {
        AgentView {
            id: id.to_string(),
            instance: a.instance.clone(),
            host: a.host.clone(),
            version: a.version.clone(),
            last_seen: a.last_seen_ms,
            cert_expires: a.cert_expires_ms(),
            state: a.status(now_ms).as_str().to_string(),
            enrolled: a.enrolled_ms,
            revoked: a.revoked_ms,
        }
    }
}
