//! Patient simulators (pluggable through `spar_core::traits::PatientSimulator`):
//! - [`scripted`]: case-grounded and deterministic (tests, CPU demo)
//! - [`self_play`]: the policy's own engine plays the patient
//! - the LLM simulator over an OpenAI-compatible endpoint is `spar_clients::LlmPatientSimulator`
//! - [`guarded`]: the deadline and sanity check every call goes through
pub mod guarded;
pub mod scripted;
pub mod self_play;

pub use guarded::Guarded;
pub use scripted::ScriptedPatient;
pub use self_play::SelfPlayPatient;
