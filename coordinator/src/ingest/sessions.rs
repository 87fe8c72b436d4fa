//! One live connection per agent id (DESIGN §3.1): a new connection of an agent closes
//! the one before it, so two sessions of the same incarnation never interleave batches.

use argus_common::quic::close;
use std::collections::HashMap;
use std::sync::Mutex;

/// The last generation handed out, and each agent's live connection with its generation.
type Table = (u64, HashMap<String, (u64, quinn::Connection)>);

/// The live data connections by agent id, each with the generation that registered it,
/// so an old session ending late does not unregister its replacement.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Table>,
}

impl Sessions {
    /// Registers `conn` as the agent's live connection and closes the one it replaces.
    /// Returns the registration's generation and whether another was replaced.
    pub fn register(&self, agent_id: &str, conn: quinn::Connection) -> (u64, bool) {
        let Ok(mut g) = self.inner.lock() else {
            return (0, false);
        };
        g.0 += 1;
        let generation = g.0;
        let old = g.1.insert(agent_id.to_string(), (generation, conn));
        drop(g);
        let replaced = old.is_some();
        if let Some((_, old)) = old {
            old.close(
                close::REPLACED,
                b"replaced by a newer connection of this agent",
            );
        }
        (generation, replaced)
    }

    /// Forgets the agent's connection if it is still the one registered as `generation`.
    pub fn unregister(&self, agent_id: &str, generation: u64) {
        if let Ok(mut g) = self.inner.lock()
            && g.1
                .get(agent_id)
                .is_some_and(|(gen_, _)| *gen_ == generation)
        {
            g.1.remove(agent_id);
        }
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.1.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
