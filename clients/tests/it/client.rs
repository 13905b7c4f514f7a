//! The HTTP client: retries and backoff, timeouts, hangs, malformed JSON, concurrency limit, auth, PHI.
use super::common::{client, fast_retries, server};
use futures::future::join_all;
use spar_clients::{ChatMessage, ChatRequest, OpenAiClient};
use spar_core::Error;
use spar_testkit::{FakeServerConfig, Scripted, responders};
use std::time::Duration;

fn hello() -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user("hello")])
}

#[tokio::test]
async fn retries_5xx_and_429_then_succeeds() {
    let s = server(FakeServerConfig::default()).await;
    s.script([
        Scripted::Status(503),
        Scripted::RateLimited { retry_after_s: 0 },
        Scripted::Status(500),
    ]);
    let c = client(&s.endpoint());
    let r = c.chat(&hello()).await.unwrap();
    assert_eq!(r.content, "hello");
    let st = c.stats();
    assert_eq!(
        (
            st.requests,
            st.attempts,
            st.retries,
            st.successes,
            st.failures
        ),
        (1, 4, 3, 1, 0)
    );
}

#[tokio::test]
async fn gives_up_after_max_retries_with_a_retryable_error() {
    let s = server(FakeServerConfig::default()).await;
    s.script(vec![Scripted::Status(502); 3]);
    let mut ep = s.endpoint();
    ep.max_retries = 2;
    let c = client(&ep);
    let e = c.chat(&hello()).await.unwrap_err();
    match e {
        Error::External { msg, retryable, .. } => {
            assert!(retryable);
            assert!(msg.contains("502") && msg.contains("3 attempts"), "{msg}");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(s.request_count(), 3);
    assert_eq!((c.stats().retries, c.stats().failures), (2, 1));
}

#[tokio::test]
async fn client_errors_other_than_429_are_not_retried() {
    let s = server(FakeServerConfig::default()).await;
    s.script([Scripted::Status(400)]);
    let c = client(&s.endpoint());
    let e = c.chat(&hello()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::External {
                retryable: false,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.request_count(), 1);
    assert_eq!(c.stats().retries, 0);
}

#[tokio::test]
async fn malformed_json_is_retried_then_reported() {
    let s = server(FakeServerConfig::default()).await;
    s.script([Scripted::Malformed]);
    let c = client(&s.endpoint());
    assert_eq!(c.chat(&hello()).await.unwrap().content, "hello");
    assert_eq!(c.stats().retries, 1);

    s.script(vec![Scripted::Malformed; 4]);
    let e = c.chat(&hello()).await.unwrap_err().to_string();
    assert!(e.contains("malformed reply"), "{e}");
    // A body that is JSON but not a chat completion is malformed too.
    s.script(vec![
        Scripted::Json(serde_json::json!({"unexpected": true}));
        4
    ]);
    assert!(
        c.chat(&hello())
            .await
            .unwrap_err()
            .to_string()
            .contains("malformed reply")
    );
}

#[tokio::test]
async fn timeouts_are_counted_and_retried() {
    let s = server(FakeServerConfig::default()).await;
    s.script([Scripted::Hang]);
    let mut ep = s.endpoint();
    ep.timeout_s = 0.3;
    let c = client(&ep);
    assert_eq!(c.chat(&hello()).await.unwrap().content, "hello");
    let st = c.stats();
    assert_eq!((st.timeouts, st.retries, st.successes), (1, 1, 1));
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_stop_a_batch() {
    let s = server(FakeServerConfig::default()).await;
    // Requests are answered in arrival order; two of the first ten hang.
    s.script([
        Scripted::Delay(Duration::ZERO),
        Scripted::Hang,
        Scripted::Delay(Duration::ZERO),
        Scripted::Hang,
    ]);
    let mut ep = s.endpoint();
    ep.timeout_s = 0.3;
    ep.max_retries = 0;
    ep.concurrency = 1; // arrival order = submission order, so exactly the 2nd and 4th calls hang
    let c = client(&ep);
    let calls = (0..10).map(|i| {
        let c = c.clone();
        async move {
            c.chat(&ChatRequest::new(vec![ChatMessage::user(format!(
                "call {i}"
            ))]))
            .await
        }
    });
    let results = join_all(calls).await;
    assert_eq!(results.len(), 10, "nothing lost");
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, vec![1, 3]);
    for (i, r) in results.iter().enumerate().filter(|(_, r)| r.is_ok()) {
        assert_eq!(
            r.as_ref().unwrap().content,
            format!("call {i}"),
            "answers stay with their calls"
        );
    }
    let st = c.stats();
    assert_eq!(
        (
            st.requests,
            st.successes,
            st.failures,
            st.timeouts,
            st.in_flight
        ),
        (10, 8, 2, 2, 0)
    );
}

#[tokio::test]
async fn concurrency_limit_is_respected() {
    let s = server(FakeServerConfig {
        latency: Duration::from_millis(20),
        ..FakeServerConfig::default()
    })
    .await;
    let mut ep = s.endpoint();
    ep.concurrency = 3;
    let c = client(&ep);
    let req = hello();
    let results = join_all((0..24).map(|_| c.chat(&req))).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(
        s.max_in_flight() <= 3,
        "server saw {} at once",
        s.max_in_flight()
    );
    assert!(s.max_in_flight() >= 1);
    assert_eq!(s.request_count(), 24);
}

#[tokio::test]
async fn bearer_token_from_env_is_sent_and_never_shown() {
    let s = server(FakeServerConfig::default()).await;
    let var = "SPAR_CLIENTS_TEST_KEY_AUTH";
    // SAFETY: the variable name is unique to this test; no other thread reads or writes it.
    unsafe { std::env::set_var(var, "sk-test-0123456789") };
    let mut ep = s.endpoint();
    ep.api_key_env = Some(var.into());
    let c = client(&ep);
    c.chat(&hello()).await.unwrap();
    assert_eq!(
        s.requests()[0].authorization.as_deref(),
        Some("Bearer sk-test-0123456789")
    );
    assert!(
        !format!("{c:?}").contains("sk-test"),
        "Debug must not show the key"
    );

    ep.api_key_env = Some("SPAR_CLIENTS_TEST_KEY_UNSET".into());
    let e = OpenAiClient::new(&ep).unwrap_err().to_string();
    assert!(
        e.contains("SPAR_CLIENTS_TEST_KEY_UNSET") && e.contains("api_key_env"),
        "{e}"
    );
}

#[tokio::test]
async fn no_auth_header_without_api_key_env() {
    let s = server(FakeServerConfig::default()).await;
    client(&s.endpoint()).models().await.unwrap();
    assert_eq!(s.requests()[0].authorization, None);
}

#[tokio::test]
async fn phi_is_redacted_only_off_loopback() {
    let s = server(FakeServerConfig::default()).await;
    let phi = "Call me at 555-123-4567, MRN: 00123456.";
    let req = ChatRequest::new(vec![ChatMessage::user(phi)]);

    // Loopback: sent as is.
    let local = client(&s.endpoint());
    assert!(!local.redacts_phi());
    local.chat(&req).await.unwrap();
    assert_eq!(s.requests()[0].body["messages"][0]["content"], phi);

    // A host name off loopback (pinned to the fake server's address): redacted.
    let mut ep = s.endpoint();
    ep.base_url = format!("http://judge.example.invalid:{}/v1", s.addr().port());
    let remote = OpenAiClient::builder(&ep)
        .retry_policy(fast_retries())
        .resolve("judge.example.invalid", s.addr())
        .build()
        .unwrap();
    assert!(remote.redacts_phi());
    remote.chat(&req).await.unwrap();
    let sent = s.requests()[1].body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !sent.contains("555-123-4567") && !sent.contains("00123456"),
        "{sent}"
    );
    remote.embeddings(&[phi.to_string()]).await.unwrap();
    assert!(
        !s.requests()[2].body["input"][0]
            .as_str()
            .unwrap()
            .contains("555-123-4567")
    );

    // The knob off: sent as is even off loopback.
    ep.redact_phi = false;
    let trusted = OpenAiClient::builder(&ep)
        .resolve("judge.example.invalid", s.addr())
        .build()
        .unwrap();
    assert!(!trusted.redacts_phi());
}

#[tokio::test]
async fn reasoning_content_and_usage() {
    let reply = spar_testkit::FakeReply {
        content: "{\"met\": true}".into(),
        reasoning_content: Some("thinking".into()),
        ..Default::default()
    };
    let s = server(FakeServerConfig {
        chat: responders::sequence(vec![reply]),
        ..FakeServerConfig::default()
    })
    .await;
    let c = client(&s.endpoint());
    let mut req = hello().enable_thinking(true);
    req.logprobs = true;
    let r = c.chat(&req).await.unwrap();
    assert_eq!(
        (r.content.as_str(), r.reasoning_content.as_deref()),
        ("{\"met\": true}", Some("thinking"))
    );
    assert_eq!(r.logprobs.len(), 2);
    assert_eq!(
        s.requests()[0].body["chat_template_kwargs"]["enable_thinking"],
        true
    );
    assert_eq!(s.requests()[0].body["model"], "fake-model");
    assert!(c.stats().prompt_tokens > 0 && c.stats().completion_tokens > 0);
}

#[tokio::test]
async fn models_and_endpoint_urls() {
    let s = server(FakeServerConfig::default()).await;
    let c = client(&s.endpoint());
    assert_eq!(c.models().await.unwrap(), vec!["fake-model".to_string()]);
    // A base URL without a path gets /v1.
    let mut ep = s.endpoint();
    ep.base_url = format!("http://{}", s.addr());
    let c = client(&ep);
    assert_eq!(c.url("models"), format!("http://{}/v1/models", s.addr()));
    assert_eq!(c.models().await.unwrap().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_a_retryable_failure() {
    let s = server(FakeServerConfig::default()).await;
    let ep = s.endpoint();
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = client(&ep);
    let e = c.chat(&hello()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::External {
                retryable: true,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.stats().retries, ep.max_retries as u64);
}
