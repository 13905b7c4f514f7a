//! Test support behind the `test-server` feature: a loopback fake OpenAI-compatible server, fake chat
//! models, and the judge throughput benchmark built on them. Other crates enable the feature in their
//! dev-dependencies to test their endpoint-backed code without a model.
pub mod bench;
pub mod responders;
mod server;

pub use server::{
    ChatResponder, FakeReply, FakeServer, FakeServerConfig, RecordedRequest, Scripted, TokenIdStyle,
};
