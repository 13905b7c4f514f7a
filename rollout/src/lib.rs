//! spar-rollout: the actor side of spar. It plays many clinical consultations at once between the policy (the
//! doctor) and a simulated patient and records what the learner and the rewards need.
//!
//! - [`engine`]: batched generation on the tch model with a slot KV cache (continuous batching, prefix reuse)
//! - [`sampling`]: temperature / top-k / top-p / min-p sampling with a seed per request
//! - [`stream`]: an episode as one token stream with loss mask, log-probs and step spans
//! - [`env`](mod@env): the consultation environment (stages, steps, openings, termination)
//! - [`simulator`]: the patient simulators
//! - [`pipeline`]: segments, per-stage pools and the gate
//! - [`codec`]: the text <-> token interface the environment uses, and the byte-level codec of text policies
//! - [`chat`]: a token policy answering conversations (HealthBench), and the built-in engine served to such work
//! - [`testing`]: fixtures for tests here and in the crates that consume rollouts
pub mod actor;
pub mod chat;
pub mod codec;
pub mod engine;
pub mod env;
pub mod output;
pub mod pipeline;
pub mod sampling;
pub mod serve;
pub mod simulator;
pub mod stream;
pub mod testing;

pub use actor::{Group, Policy, Rollout, RoundStats, SimulatorChoice};
pub use codec::{ByteCodec, TextCodec};
pub use engine::{Engine, EngineClient, EngineConfig, EngineOutput};
pub use pipeline::{Segment, StagePools};
