//! Limits of `spar serve`: how much work one request may ask for and how much the server takes on at once.
//! Without them one request (`n` = 100000) could keep the engine busy for minutes and starve every other
//! client. `/v1/models` reports them (`spar_limits` of the model entry), so clients can size their requests.
use crate::engine::EngineConfig;
use anyhow::{Result, bail};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-request and server-wide limits. A request above a per-request limit gets a 400 naming the parameter;
/// one that would take the server over `max_in_flight_sequences` waits for room up to `max_queue_wait_ms`, then
/// gets a 429 (with `Retry-After`): a bounded wait, not a place in an unbounded engine queue.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServeLimits {
    /// Most choices per request (`n`).
    pub max_n: u32,
    /// Most new tokens per choice (`max_tokens` / `max_completion_tokens`); prompt + max_tokens must also fit
    /// the context.
    pub max_tokens: u32,
    /// Longest prompt in tokens (chat: after the chat template).
    pub max_prompt_tokens: usize,
    /// Most sequences (one per prompt and choice: prompts x n) in flight over all requests, running or queued.
    pub max_in_flight_sequences: usize,
    /// How long a request waits for room under `max_in_flight_sequences` before its 429 (0: none).
    pub max_queue_wait_ms: u64,
    /// Largest request body in bytes (413 above).
    pub max_body_bytes: usize,
}

impl ServeLimits {
    /// Defaults for an engine: `n` up to 16 (and the in-flight bound), prompts and `max_tokens` up to the
    /// context, 4 x `max_batch` sequences in flight (a batch running, three waiting) and up to 30 s of waiting
    /// for room (rollout clients send bursts larger than a batch), 4 MiB bodies.
    pub fn for_engine(cfg: &EngineConfig) -> Self {
        let in_flight = 4 * cfg.max_batch.max(1);
        let context = cfg.max_seq_len.saturating_sub(1).max(1);
        ServeLimits {
            max_n: 16.min(in_flight as u32),
            max_tokens: context.min(u32::MAX as usize) as u32,
            max_prompt_tokens: context,
            max_in_flight_sequences: in_flight,
            max_queue_wait_ms: 30_000,
            max_body_bytes: 4 << 20,
        }
    }

    /// Refuses limits that admit nothing, contradict each other or exceed the engine's context.
    pub fn validate(&self, engine: &EngineConfig) -> Result<()> {
        if self.max_n == 0
            || self.max_tokens == 0
            || self.max_prompt_tokens == 0
            || self.max_in_flight_sequences == 0
            || self.max_body_bytes == 0
        {
            bail!("serve limits must all be >= 1 (got {self:?})");
        }
        if self.max_n as usize > self.max_in_flight_sequences {
            bail!(
                "the limit on n ({}) exceeds the limit on sequences in flight ({}): such a request could never run",
                self.max_n,
                self.max_in_flight_sequences
            );
        }
        let context = engine.max_seq_len.saturating_sub(1);
        if self.max_prompt_tokens > context || self.max_tokens as usize > context {
            bail!(
                "the limits on prompt tokens ({}) and max_tokens ({}) must fit the context ({} tokens, one of them \
                 for the first generated token)",
                self.max_prompt_tokens,
                self.max_tokens,
                engine.max_seq_len
            );
        }
        Ok(())
    }
}

/// Counts the sequences in flight against [`ServeLimits::max_in_flight_sequences`].
pub(crate) struct InFlight {
    sem: Arc<Semaphore>,
    max: usize,
}

/// Sequences held by one request; released when dropped (the request finished, failed or was cancelled).
pub(crate) type InFlightPermit = OwnedSemaphorePermit;

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        InFlight {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Takes `seqs` sequences, or None when they do not fit now.
    pub(crate) fn try_take(&self, seqs: usize) -> Option<InFlightPermit> {
        let n = u32::try_from(seqs).ok()?;
        self.sem.clone().try_acquire_many_owned(n).ok()
    }

    /// Takes `seqs` sequences, waiting up to `wait` for them (first come, first served: the semaphore is
    /// fair); None when they did not fit in time.
    pub(crate) async fn take(&self, seqs: usize, wait: Duration) -> Option<InFlightPermit> {
        if let Some(p) = self.try_take(seqs) {
            return Some(p);
        }
        let n = u32::try_from(seqs).ok()?;
        tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n))
            .await
            .ok()?
            .ok()
    }

    /// Sequences in flight now.
    pub(crate) fn current(&self) -> usize {
        self.max - self.sem.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_are_valid_and_bounded_by_the_engine() {
        let cfg = EngineConfig {
            max_batch: 4,
            max_seq_len: 512,
            ..Default::default()
        };
        let l = ServeLimits::for_engine(&cfg);
        l.validate(&cfg).unwrap();
        assert_eq!((l.max_n, l.max_in_flight_sequences), (16, 16));
        assert_eq!((l.max_tokens, l.max_prompt_tokens), (511, 511));
        let bad = ServeLimits {
            max_n: 17,
            ..l.clone()
        };
        assert!(bad.validate(&cfg).is_err());
        let too_long = ServeLimits {
            max_prompt_tokens: 512,
            ..l.clone()
        };
        assert!(too_long.validate(&cfg).is_err());
        let flight = InFlight::new(3);
        let a = flight.try_take(2).unwrap();
        assert!(flight.try_take(2).is_none());
        assert_eq!(flight.current(), 2);
        drop(a);
        assert!(flight.try_take(3).is_some());
    }
}
