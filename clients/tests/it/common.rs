//! Shared test setup.
use spar_clients::{OpenAiClient, RetryPolicy};
use spar_core::recipe::EndpointConfig;
use spar_testkit::{FakeServer, FakeServerConfig};
use std::time::Duration;

/// Millisecond backoff so retry tests stay fast.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

pub async fn server(cfg: FakeServerConfig) -> FakeServer {
    FakeServer::start(cfg)
        .await
        .expect("the fake server binds 127.0.0.1")
}

pub fn client(ep: &EndpointConfig) -> OpenAiClient {
    OpenAiClient::builder(ep)
        .retry_policy(fast_retries())
        .build()
        .expect("valid endpoint")
}
