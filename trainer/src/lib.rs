//! spar-trainer: the learner side of spar.
//!
//! - [`batch`]: `Sample` + `Scored` -> training items -> micro-batches (dynamic token budget, packing)
//! - [`policy_loss`], [`agg`]: PPO-clip / GSPO / segment-level GSPO (SPAR), dual clip, TIS, KL, entropy; the
//!   four aggregation modes
//! - [`distill`]: SFT cross-entropy, Clip-Forward-KL, on-policy reverse-KL distillation
//! - [`distill_loop`]: the offline distillation phase (teachers answer, the student learns by Clip-Forward-KL)
//! - [`gae`], [`critic`]: value head + GAE (the one advantage estimator outside spar-rewards)
//! - [`off_policy`]: colocated vs one-step off-policy round scheduling; [`rl_round`]: one RL round (play, learn)
//! - [`actor_layout`]: actors apart from learners (who is what, the schedule, what travels); [`actor_feed`]: a
//!   learner's end (Flight inbox, weight refreshes, rounds received ahead); [`actor_loop`]: an actor's process
//! - [`adamw`], [`schedule`]: AdamW with savable state and fp32 masters; warmup + constant / cosine
//! - [`learner`]: one optimisation step (pi_old pass, accumulation, clipping, NaN/Inf guard)
//! - [`checkpoint`], [`rng`]: atomic checkpoints, keep-last-N, exact resume; [`checksums`]: each checkpoint's
//!   SHA-256 manifest; [`resume_point`]: the newest intact checkpoint, which
//!   resume and export read; [`run_lock`]: one run per run folder; [`run_folder`]: a
//!   fresh run refuses a folder that holds another run unless told to replace it
//! - [`run`]: `spar train` over [`parts::TrainParts`] (built by spar-app from the recipe): held-out
//!   evaluations around [`sft_phase`] and [`rl_phase`], results in [`report`]; [`session`]: the run folder,
//!   resume point and checkpoints that ask each part ([`session::Checkpointed`]) for its state;
//!   [`offline_step`]: one step from files; [`knobs`]: `[trainer]` as learner configs; [`qwen3`]: the
//!   [`policy::Policy`] impl for spar-model; [`shared_sft`]: RL from another run's SFT checkpoint
//! - [`metrics`], [`tfevent`], [`plot`]: JSONL + TensorBoard metrics, PNG/SVG curves
// `a = a + b` stays out of place on purpose: tch's `+=` on a Tensor is the in-place `add_`, which breaks autograd
// when the tensor was saved for backward.
#![allow(clippy::assign_op_pattern)]
pub mod actor_feed;
pub mod actor_layout;
pub mod actor_loop;
pub mod adamw;
pub mod agg;
pub mod aux_loss;
pub mod batch;
pub mod checkpoint;
pub mod checksums;
pub mod critic;
pub mod dashboard;
pub mod distill;
pub mod distill_loop;
pub mod expert_parallel;
pub mod gae;
pub mod grad_sum;
pub mod knobs;
pub mod learner;
pub mod learner_graphs;
pub mod metrics;
pub mod off_policy;
pub mod offline_step;
pub mod parts;
pub mod placebo;
pub mod plot;
pub mod policy;
pub mod policy_loss;
pub mod profiling;
pub mod progress;
pub mod qwen3;
pub mod reference;
pub mod report;
pub mod resume_point;
pub mod rl_phase;
pub mod rl_round;
pub mod rng;
pub mod round_stats;
pub mod run;
pub mod run_folder;
pub mod run_lock;
pub mod schedule;
pub mod server_weights;
pub mod session;
pub mod sft_phase;
pub mod sharded;
pub mod shared_sft;
pub mod tfevent;
pub mod trace_summary;
