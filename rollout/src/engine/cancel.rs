//! Cancellation: a request whose caller has gone away (an HTTP client that disconnected drops the receiving end
//! of its reply) is removed from the queue or from the running batch at the start of the next step, and its
//! slot is freed, so that no more tokens are generated for nobody.
use super::{Engine, Reply, SlotState};
use std::sync::{Arc, Mutex};

impl Reply {
    /// Whether nobody waits for this reply any more. [`Reply::Collect`] belongs to [`Engine::generate`], which
    /// always waits.
    pub(crate) fn is_cancelled(&self) -> bool {
        match self {
            Reply::Collect(_) => false,
            Reply::Once(tx) => tx.is_closed(),
            Reply::Stream(tx) => tx.is_closed(),
        }
    }
}

/// What the engine is doing, as last published (see [`Engine::with_load_sink`]): its counters and how many
/// requests are running and queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct EngineLoad {
    pub stats: super::EngineStats,
    pub running: usize,
    pub queued: usize,
}

/// Where [`Engine::run_until`] publishes its [`EngineLoad`] after every step (a server's stats endpoint reads it
/// from another thread).
pub type LoadSink = Arc<Mutex<EngineLoad>>;

impl Engine<'_> {
    /// Publishes the engine's load to `sink` after every step of [`Engine::run_until`].
    pub fn with_load_sink(mut self, sink: LoadSink) -> Self {
        self.load_sink = Some(sink);
        self
    }

    /// Writes the current load to the sink, if there is one.
    pub(super) fn publish_load(&self) {
        if let Some(sink) = &self.load_sink {
            let load = EngineLoad {
                stats: self.stats,
                running: self.running.len(),
                queued: self.queue.len(),
            };
            // A poisoned lock only means a reader panicked; the value is plain data.
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = load;
        }
    }

    /// Drops every queued or running request whose caller has gone away and frees the slots they held.
    /// Called at the start of a step, when every running sequence has been prefilled (admission and prefill
    /// happen in one step), so no pending prefix copy refers to a freed slot.
    pub(super) fn drop_cancelled(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|q| !q.reply.is_cancelled());
        let mut dropped = before - self.queue.len();
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].reply.is_cancelled() {
                i += 1;
                continue;
            }
            let r = self.running.swap_remove(i);
            self.release_slot(r.slot, r.in_flight);
            dropped += 1;
        }
        self.stats.cancelled += dropped as u64;
    }

    /// Marks a finished or cancelled sequence's slot idle, keeping what its cache holds for prefix reuse. The
    /// last sampled token was never fed: the slot holds everything before it. `in_flight`: the sequence is in the
    /// decode step in flight, which feeds that token: the slot gives its position back (the step's write there is
    /// overwritten by whoever takes it), so that the slot's tokens, keys and expert choices stay the same length.
    pub(super) fn release_slot(&mut self, slot: usize, in_flight: bool) {
        if in_flight {
            let len = self.cache.len(slot);
            let _ = self.cache.copy_prefix(slot, slot, len.saturating_sub(1));
        }
        let cached = self.cache.len(slot);
        self.truncate_slot(slot, cached);
        let st: &mut SlotState = &mut self.slots[slot];
        st.busy = false;
        st.last_used = self.tick;
    }
}
