//! Ready-made fake chat models for `FakeServerConfig::chat`.
use crate::server::{ChatResponder, FakeReply, fnv1a};
use spar_clients::ChatMessage;
use std::sync::Arc;

fn last_user(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// Answers with the last user message.
pub fn echo() -> ChatResponder {
    Arc::new(|m: &[ChatMessage]| FakeReply::from(last_user(m)))
}

/// Always answers `content`.
pub fn fixed(content: impl Into<String>) -> ChatResponder {
    let content = content.into();
    Arc::new(move |_: &[ChatMessage]| FakeReply::from(content.as_str()))
}

/// Answers the given replies in turn, then repeats the last.
pub fn sequence(replies: Vec<FakeReply>) -> ChatResponder {
    let next = std::sync::atomic::AtomicUsize::new(0);
    Arc::new(move |_: &[ChatMessage]| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        replies
            .get(i.min(replies.len().saturating_sub(1)))
            .cloned()
            .unwrap_or_default()
    })
}

/// A well-formed judge verdict, `met` decided by a hash of the prompt: deterministic, about half met.
pub fn judge_by_hash() -> ChatResponder {
    Arc::new(|m: &[ChatMessage]| {
        let met = fnv1a(last_user(m).as_bytes()).is_multiple_of(2);
        FakeReply::from(serde_json::json!({"met": met, "explanation": "fake verdict"}).to_string())
    })
}
