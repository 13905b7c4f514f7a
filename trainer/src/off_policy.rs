//! Which weights generate each RL round: colocated (round t is generated with the weights after t updates and
//! learned at once) or one-step off-policy (`trainer.off_policy_one_step`): round t+1 is generated with the
//! weights of round t, before round t's update lands, so every learned batch after the first is one policy
//! version behind the learner.
//!
//! On GPU the point of the mode is overlap: the engine generates round t+1 while the learner updates on round
//! t. The CPU build runs the two one after the other (generate t+1 from the pre-update weights, then learn t):
//! tch on 2 cores gains nothing from threads, and the samples, their versions and the staleness the learner
//! sees are exactly those of the overlapped schedule.
use anyhow::Result;

/// Hands out the batch to learn each round, generating ahead in one-step mode.
pub struct RoundScheduler<B> {
    one_step: bool,
    pending: Option<B>,
}

impl<B> RoundScheduler<B> {
    /// `pending`: a batch generated ahead and saved by a checkpoint (one-step mode), else None.
    pub fn new(one_step: bool, pending: Option<B>) -> Self {
        RoundScheduler { one_step, pending }
    }

    /// The batch to learn at `round` (of `total`). `generate(version)` plays one round with the current
    /// weights and stamps its samples `version` (= updates applied so far = `round`). In one-step mode the next
    /// round's batch is generated here as well, before the caller applies this round's update.
    pub fn next(
        &mut self,
        round: usize,
        total: usize,
        mut generate: impl FnMut(u64) -> Result<B>,
    ) -> Result<B> {
        let current = match self.pending.take() {
            Some(b) => b,
            None => generate(round as u64)?,
        };
        if self.one_step && round + 1 < total {
            self.pending = Some(generate(round as u64)?);
        }
        Ok(current)
    }

    /// The batch generated ahead (to save in a checkpoint).
    pub fn pending(&self) -> Option<&B> {
        self.pending.as_ref()
    }
}
