//! The agent's side of the QUIC uplink (DESIGN §2, §3.1, §6).
//!
//! - [`identity`]: key, certificate, CA and agent id in the state directory.
//! - [`enroll`]: `argus-agent join`: enrollment with a join string over `argus-enroll/1`.
//! - [`session`]: one `argus-data/1` connection streaming the spool.
//!
//! [`Uplink::run`] keeps a session up: it tries every configured coordinator in turn,
//! with exponential backoff and jitter capped at a few seconds, and goes first to the
//! addresses a `NotLeader` or `Redirect` named. A batch leaves the spool only on a final
//! `Ack`; anything unanswered when a connection ends is sent again on the next one.

pub mod enroll;
pub mod identity;
pub mod session;

use crate::collect::agent::{AgentStats, UplinkState};
use crate::spool::{Spool, SpoolError};
use argus_common::pki::PkiError;
use argus_common::quic::QuicError;
use identity::{Identity, IdentityError};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("coordinator {addr} refused: {reason}")]
    Refused { addr: String, reason: String },
    #[error("coordinator {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the coordinator's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("no coordinator address: set uplink.coordinators or enroll with a join string")]
    NoCoordinators,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Settings of [`Uplink::run`], from the `[uplink]` config section.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// `host:port` addresses; empty: the identity's (from the join string).
    pub coordinators: Vec<String>,
    pub in_flight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub heartbeat: Duration,
    pub host_name: String,
}

/// The delay before reconnect attempt `attempt` (0 for the first retry): `min` doubled
/// per attempt, capped at `max`, then scaled by 0.5..=1.0 with `jitter` (in 0..=1), so a
/// fleet that lost its coordinator together does not come back in lockstep.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Resolves once `stop` is true (or its sender is gone), holding no borrow of the
/// value across an await, so the future stays `Send`.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// What ended a session.
#[derive(Debug)]
pub enum SessionEnd {
    /// The connection was lost or closed; reconnect (after a short pause).
    Lost(String),
    /// Try these addresses first (`NotLeader`, `Redirect`).
    Redirect(Vec<String>),
    /// The spool took a new incarnation; say Hello again at once.
    NewIncarnation,
    /// The agent is stopping.
    Stopped,
}

/// The uplink: the spool it drains, the identity it connects with.
pub struct Uplink {
    pub settings: UplinkSettings,
    pub state_dir: PathBuf,
    pub identity: Identity,
    pub spool: Arc<Mutex<Spool>>,
    /// Rung by the collector after every push, so a new batch goes out at once.
    pub pushed: Arc<tokio::sync::Notify>,
    pub stats: Arc<AgentStats>,
}

impl Uplink {
    fn addresses(&self) -> Vec<String> {
        if self.settings.coordinators.is_empty() {
            self.identity.coordinators.clone()
        } else {
            self.settings.coordinators.clone()
        }
    }

    /// Keeps a session up until `stop` turns true.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let configured = self.addresses();
        if configured.is_empty() {
            tracing::error!("{}", UplinkError::NoCoordinators);
            self.stats.set_uplink(UplinkState::Disabled);
            return;
        }
        let mut next = 0usize;
        let mut preferred: VecDeque<String> = VecDeque::new();
        let mut attempt = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let addr = match preferred.pop_front() {
                Some(a) => a,
                None => {
                    let a = configured[next % configured.len()].clone();
                    next = next.wrapping_add(1);
                    a
                }
            };
            self.stats.set_uplink(UplinkState::Connecting);
            let end = session::run(&mut self, &addr, &mut stop).await;
            self.stats.set_uplink(UplinkState::Disconnected);
            let pause = match end {
                Ok(SessionEnd::Stopped) => return,
                Ok(SessionEnd::NewIncarnation) => {
                    attempt = 0;
                    preferred.push_front(addr);
                    continue;
                }
                Ok(SessionEnd::Redirect(leaders)) => {
                    tracing::info!(from = %addr, ?leaders, "coordinator is not the leader; trying others");
                    preferred.extend(leaders.into_iter().take(16));
                    attempt = 0;
                    backoff_delay(
                        0,
                        self.settings.backoff_min,
                        self.settings.backoff_max,
                        rand::random(),
                    )
                }
                Ok(SessionEnd::Lost(reason)) => {
                    tracing::warn!(coordinator = %addr, %reason, "uplink lost; reconnecting");
                    attempt = 0;
                    backoff_delay(
                        0,
                        self.settings.backoff_min,
                        self.settings.backoff_max,
                        rand::random(),
                    )
                }
                Err(e) => {
                    match &e {
                        UplinkError::Refused { .. } => tracing::error!("{e}"),
                        _ => tracing::warn!("uplink: {e}"),
                    }
                    let d = backoff_delay(
                        attempt,
                        self.settings.backoff_min,
                        self.settings.backoff_max,
                        rand::random(),
                    );
                    attempt = attempt.saturating_add(1);
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(backoff_delay(0, min, max, 1.0), min);
        assert_eq!(backoff_delay(3, min, max, 1.0), Duration::from_millis(1600));
        assert_eq!(backoff_delay(30, min, max, 1.0), max);
        assert_eq!(backoff_delay(30, min, max, 0.0), max / 2);
        assert_eq!(backoff_delay(2, min, max, 0.5), Duration::from_millis(600));
    }
}
