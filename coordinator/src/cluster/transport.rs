//! The peer transport seam.
//!
//! The Ready loop hands every outbound Raft message to a [`Transport`]. In the cluster issue,
//! messages go to peers over QUIC with mutual TLS (DESIGN §6). The deterministic harness
//! (`cluster::sim`, tests only) plugs in an in-memory network that queues each message per
//! (from, to) for the simulator to deliver, lose, reorder or cut. Here the only production
//! implementation is [`NoPeers`], which is all a one-voter group needs: it never addresses
//! anyone.

use raft::prelude::Message;

/// Delivers Raft messages to peers. Sending must not block the Ready thread on the network:
/// an implementation queues and returns, and a lost message is fine (Raft retries).
pub trait Transport: Send {
    fn send(&mut self, msgs: Vec<Message>);
}

/// A transport for a group with no other members: it drops what it is given.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            // Only reachable if the configuration names peers this node cannot reach.
            tracing::debug!(
                count = msgs.len(),
                "no peer transport: raft messages dropped"
            );
        }
    }
}
