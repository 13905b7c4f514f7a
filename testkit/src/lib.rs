//! spar-testkit: test support, never a normal dependency of a library. A loopback fake OpenAI-compatible server
//! (latency, errors, hangs, malformed JSON, scripted replies; it records what it was sent), ready-made fake chat
//! models, and the judge throughput benchmark built on them.
//!
//! The crates test their endpoint-backed code against it through `[dev-dependencies]`; the `spar` binary links it
//! only with its non-default `bench-judge` feature (`spar bench judge`), so the production binary carries no fake
//! server.
pub mod bench;
pub mod responders;
mod server;

pub use server::{
    ChatResponder, FakeReply, FakeServer, FakeServerConfig, RecordedRequest, Scripted, TokenIdStyle,
};
