//! Runs a [`RaftNode`] on two threads: the Ready thread and the apply thread.
//!
//! This is the thin I/O layer around the step function in [`node`](super::node): a timer for
//! ticks and a doorbell for work. The Ready loop fsyncs the log on every Ready, a blocking call
//! that must not occupy an async runtime's worker, so it gets an OS thread of its own; the
//! apply worker gets another, so a slow apply never delays ticks or heartbeats. Proposers stay
//! async: [`Proposer::propose`] never blocks, and its receipt is awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apply::Apply;
use super::doorbell::Doorbell;
use super::node::{NodeError, NodeParts, RaftNode};
use super::proposal::Proposer;
use super::stats::NodeStats;
use super::storage::LogStorage;
use super::transport::Transport;

/// Readies handled per wake-up before the tick is checked again, so a busy node still ticks.
const MAX_READIES_PER_WAKE: usize = 64;

/// A running node. Dropping it stops the node (as [`NodeHandle::shutdown`] does).
pub struct NodeHandle<O> {
    proposer: Proposer<O>,
    stats: Arc<NodeStats>,
    stop: Arc<AtomicBool>,
    doorbell: Arc<Doorbell>,
    ready: Option<JoinHandle<Result<(), NodeError>>>,
    apply: Option<JoinHandle<()>>,
}

/// Starts the Ready and apply threads; `tick` is the length of one Raft tick.
pub fn spawn<S, T, A>(
    parts: NodeParts<S, T, A>,
    tick: Duration,
) -> std::io::Result<NodeHandle<A::Outcome>>
where
    S: LogStorage + Send + 'static,
    T: Transport + 'static,
    A: Apply,
{
    let NodeParts {
        node,
        proposer,
        applier,
        stats,
        doorbell,
    } = parts;
    let stop = Arc::new(AtomicBool::new(false));
    let apply = std::thread::Builder::new()
        .name("raft-apply".into())
        .spawn(move || {
            // The worker returns when the node (its channel's sender) is gone.
            let _state_machine = applier.run();
        })?;
    let ready = {
        let stop = Arc::clone(&stop);
        let doorbell = Arc::clone(&doorbell);
        std::thread::Builder::new()
            .name("raft-ready".into())
            .spawn({
                let stats = Arc::clone(&stats);
                move || {
                    let result = ready_loop(node, &stop, &doorbell, tick);
                    // Proposers must not be told this stopped node leads.
                    stats.is_leader.store(false, Ordering::Relaxed);
                    stats.leader_id.store(0, Ordering::Relaxed);
                    result
                }
            })?
    };
    Ok(NodeHandle {
        proposer,
        stats,
        stop,
        doorbell,
        ready: Some(ready),
        apply: Some(apply),
    })
}

fn ready_loop<S: LogStorage, T: Transport, A: Apply>(
    mut node: RaftNode<S, T, A>,
    stop: &AtomicBool,
    doorbell: &Doorbell,
    tick: Duration,
) -> Result<(), NodeError> {
    let mut next_tick = Instant::now() + tick;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_tick {
            node.tick();
            // No catch-up burst after a stall: one tick, then the regular pace.
            next_tick = now + tick;
        }
        for _ in 0..MAX_READIES_PER_WAKE {
            match node.on_ready() {
                Ok(out) if out.more => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "raft node stopped");
                    return Err(e);
                }
            }
        }
        doorbell.wait_until(next_tick);
    }
    Ok(())
}

impl<O> NodeHandle<O> {
    /// A handle to propose through; clone it for each task.
    pub fn proposer(&self) -> &Proposer<O> {
        &self.proposer
    }

    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// Whether the Ready thread still runs (for `/ready`).
    pub fn is_running(&self) -> bool {
        self.ready.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops both threads and returns the error that stopped the node early, if one did.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), NodeError> {
        self.stop.store(true, Ordering::Release);
        self.doorbell.ring();
        let mut result = Ok(());
        if let Some(h) = self.ready.take() {
            result = h.join().unwrap_or(Err(NodeError::Panicked("raft-ready")));
        }
        // The node is dropped with the Ready thread, which ends the apply worker's channel.
        if let Some(h) = self.apply.take()
            && h.join().is_err()
            && result.is_ok()
        {
            result = Err(NodeError::Panicked("raft-apply"));
        }
        result
    }
}

impl<O> Drop for NodeHandle<O> {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!(error = %e, "raft node had stopped with an error");
        }
    }
}
