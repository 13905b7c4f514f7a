//! Asynchronous decode (vLLM's async scheduling): on a GPU with CUDA graphs, the engine queues decode step k+1
//! before it reads step k's tokens. Step k+1 takes its input tokens from step k's choices on the device
//! ([`StepToken::Chosen`]), so the GPU goes from one step to the next without waiting for the host, and the
//! host's work of a step (reading the tokens, checking stops, streaming, admitting, the next replay's inputs)
//! runs while the GPU computes. In a synchronous step that host work is the GPU's idle time: ~0.5 ms a step on
//! an H100, where a 0.6B model's step at batch 1 is ~0.6 ms of GPU work.
//!
//! The price: a sequence that ends at step k (a stop token, a stop string) has already been queued into step
//! k+1, whose token for it is dropped (`EngineStats::decoded_past_end`), and its slot gives back the position
//! that step wrote. Sequences certain to end at step k (their length limit) are left out of step k+1. A step
//! whose rows need the logits on the host (top log-probs, top-k / top-p / min-p) reads the step in flight first
//! and runs synchronously, as does every step of a batch-invariant engine.
//!
//! Tokens and log-probs are those of the synchronous engine: each row's sampler draws its uniforms in the same
//! order, and its step sees the same keys. Only which rows share a step (and so the graph's row bucket) can differ.
use super::{Engine, PickKind, Running};
use crate::sampling::Sampled;
use anyhow::{Context, Result, bail};
use spar_model::{LaunchedStep, NextTokens, StepToken};
use std::collections::HashMap;

/// A decode step queued on the GPU whose tokens the host has not read yet.
pub(super) struct Ahead {
    /// The [`Running::id`] of each of its rows, in the step's row order.
    ids: Vec<u64>,
    step: LaunchedStep,
}

/// The environment's choice of [`super::EngineConfig::async_decode`], for comparisons: `SPAR_ASYNC_DECODE=0`
/// reads every step's tokens before queueing the next, `=1` queues ahead; None where unset (the config decides).
pub fn async_decode_override() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SPAR_ASYNC_DECODE").ok().map(|v| v != "0"))
}

impl Engine<'_> {
    /// Whether decode steps are queued ahead of reading the previous one's tokens.
    pub(super) fn decodes_ahead(&self) -> bool {
        self.graphs.is_some()
            && !self.cfg.batch_invariant
            && async_decode_override().unwrap_or(self.cfg.async_decode)
    }

    /// One decode step over `rows` (running indices: prefilled, with a token on the host or in the step in
    /// flight): queues it behind the step in flight, then reads that one. Rows needing logits on the host take
    /// the synchronous path.
    pub(super) fn decode_ahead(&mut self, rows: &[usize]) -> Result<()> {
        let kind = self.pick_kind(rows);
        if kind == PickKind::Logits {
            return self.decode_after_settling();
        }
        let launch: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&i| !self.ends_with_step_in_flight(&self.running[i]))
            .collect();
        let mut next = None;
        if !launch.is_empty() {
            let feed: Vec<(usize, StepToken)> = launch
                .iter()
                .map(|&i| {
                    let r = &self.running[i];
                    let token = if r.in_flight {
                        StepToken::Chosen
                    } else {
                        StepToken::Host(r.pending[0])
                    };
                    (r.slot, token)
                })
                .collect();
            let ids: Vec<u64> = launch.iter().map(|&i| self.running[i].id).collect();
            let graphs = self
                .graphs
                .as_mut()
                .context("decode ahead without graphs")?;
            let pick = super::pick_of(kind, &mut self.running, &launch);
            let earlier = self.ahead.as_ref().map(|a| &a.step);
            match graphs.launch_after(self.model, &mut self.cache, &feed, earlier, pick)? {
                Some(step) => {
                    self.stats.decode_steps_ahead += 1;
                    next = Some(Ahead { ids, step });
                }
                // The graphs cannot take it (no row read an earlier step's token, or this failed).
                None => return self.decode_after_settling(),
            }
        }
        if let Some(prev) = std::mem::replace(&mut self.ahead, next) {
            self.finish_ahead(prev)?;
        }
        if let Some(a) = &self.ahead {
            for &i in &launch {
                let r = &mut self.running[i];
                r.pending.clear();
                r.in_flight = true;
            }
            debug_assert_eq!(a.ids.len(), launch.len());
        }
        Ok(())
    }

    /// Reads the step in flight, retires the sequences it ended, then decodes the rest synchronously.
    fn decode_after_settling(&mut self) -> Result<()> {
        self.settle_ahead()?;
        self.retire();
        // Nothing is in flight now: every row's token is on the host.
        let rows = self.decoding_rows();
        if rows.is_empty() {
            return Ok(());
        }
        self.stats.decode_rows += rows.len() as u64;
        self.decode(&rows)
    }

    /// Reads the step in flight, if any.
    pub(super) fn settle_ahead(&mut self) -> Result<()> {
        match self.ahead.take() {
            Some(prev) => self.finish_ahead(prev),
            None => Ok(()),
        }
    }

    /// Reads the step in flight when none of its sequences is running any more (they ended or were cancelled),
    /// so that an idle engine holds no step.
    pub(super) fn settle_orphaned_ahead(&mut self) -> Result<()> {
        let orphaned = self.ahead.as_ref().is_some_and(|a| {
            a.ids
                .iter()
                .all(|id| self.running.iter().all(|r| r.id != *id))
        });
        if orphaned {
            self.settle_ahead()?;
        }
        Ok(())
    }

    /// Whether `r`, in the step in flight, ends when that step's token arrives (its length limit): it is not
    /// queued into the next step.
    fn ends_with_step_in_flight(&self, r: &Running) -> bool {
        // Once that step's token arrives: one more generated, and the slot holds what it counts now (that step
        // fed the token before it).
        r.in_flight && self.at_length_limit(r, r.out.len() + 1, self.cache.len(r.slot))
    }

    /// Waits for `prev`'s tokens and appends them to its sequences that still run (the others ended or were
    /// cancelled after it was queued: their tokens are dropped).
    fn finish_ahead(&mut self, prev: Ahead) -> Result<()> {
        let graphs = self
            .graphs
            .as_ref()
            .context("a decode step in flight without its graph decoder")?;
        let out = graphs.finish(self.model, prev.step)?;
        let NextTokens::Chosen(picked) = out.next else {
            bail!("a decode step queued ahead handed back logits instead of tokens");
        };
        let index: HashMap<u64, usize> = self
            .running
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        let (mut rows, mut keep) = (Vec::new(), Vec::new());
        for (n, id) in prev.ids.iter().enumerate() {
            match index.get(id) {
                Some(&i) => {
                    rows.push(i);
                    keep.push(n as i64);
                }
                None => self.stats.decoded_past_end += 1,
            }
        }
        self.stats.decode_steps += 1;
        self.stats.decode_rows += prev.ids.len() as u64;
        if rows.is_empty() {
            return Ok(());
        }
        let routed = out
            .routed_experts
            .map(|e| e.f_index_select(0, &tch::Tensor::from_slice(&keep)))
            .transpose()?;
        let one_each: Vec<(usize, usize)> =
            rows.iter().map(|&i| (self.running[i].slot, 1)).collect();
        self.append_routing(&one_each, routed.as_ref())?;
        let (tokens, logprobs) = keep.iter().map(|&n| picked[n as usize]).unzip();
        for &i in &rows {
            let r = &mut self.running[i];
            r.pending.clear();
            r.in_flight = false;
        }
        self.push_sampled(
            &rows,
            Sampled {
                tokens,
                logprobs,
                top: Vec::new(),
            },
        )
    }
}
