//! Every simulator call goes through [`Guarded`]: a deadline, and a check that the reply is usable. A call
//! that fails, hangs or returns garbage fails that episode with a recorded reason, never the run.
use spar_core::case::Case;
use spar_core::sample::Turn;
use spar_core::traits::{PatientReply, PatientSimulator};
use std::sync::Arc;
use std::time::Duration;

/// Longest patient utterance accepted; anything longer is treated as a broken simulator.
pub const MAX_REPLY_CHARS: usize = 4000;

/// A simulator with a per-call deadline (on top of whatever retries the simulator does itself).
#[derive(Clone)]
pub struct Guarded {
    inner: Arc<dyn PatientSimulator>,
    deadline: Duration,
}

impl Guarded {
    pub fn new(inner: Arc<dyn PatientSimulator>, deadline: Duration) -> Self {
        Guarded { inner, deadline }
    }

    pub fn id(&self) -> String {
        self.inner.id()
    }

    pub async fn opening(&self, case: &Case) -> Result<String, String> {
        match tokio::time::timeout(self.deadline, self.inner.opening(case)).await {
            Err(_) => Err(format!(
                "simulator {} opening timed out after {:?}",
                self.inner.id(),
                self.deadline
            )),
            Ok(Err(e)) => Err(format!("simulator {} opening failed: {e}", self.inner.id())),
            Ok(Ok(text)) => check_text(&text)
                .map(|_| text.trim().to_string())
                .map_err(|m| format!("simulator {} opening {m}", self.inner.id())),
        }
    }

    pub async fn reply(
        &self,
        case: &Case,
        dialogue: &[Turn],
        doctor: &str,
    ) -> Result<PatientReply, String> {
        match tokio::time::timeout(self.deadline, self.inner.reply(case, dialogue, doctor)).await {
            Err(_) => Err(format!(
                "simulator {} timed out after {:?}",
                self.inner.id(),
                self.deadline
            )),
            Ok(Err(e)) => Err(format!("simulator {} failed: {e}", self.inner.id())),
            Ok(Ok(r)) => {
                // A closing reply may be empty (the patient just leaves); an answer may not.
                if !(r.end && r.text.trim().is_empty()) {
                    check_text(&r.text)
                        .map_err(|m| format!("simulator {} reply {m}", self.inner.id()))?;
                }
                Ok(PatientReply {
                    text: r.text.trim().to_string(),
                    end: r.end,
                })
            }
        }
    }
}

fn check_text(text: &str) -> Result<(), String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("is empty".into());
    }
    if t.chars().count() > MAX_REPLY_CHARS {
        return Err(format!("is longer than {MAX_REPLY_CHARS} characters"));
    }
    // Chat-template markers in a patient turn would corrupt the token stream's structure.
    if ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
        .iter()
        .any(|m| t.contains(m))
    {
        return Err("contains chat-template control tokens".into());
    }
    if t.chars()
        .filter(|c| c.is_control() && !c.is_whitespace())
        .count()
        > 0
    {
        return Err("contains control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    struct Broken(u8);

    #[async_trait]
    impl PatientSimulator for Broken {
        fn id(&self) -> String {
            format!("broken-{}", self.0)
        }
        async fn opening(&self, _case: &Case) -> spar_core::Result<String> {
            Ok("hello".into())
        }
        async fn reply(
            &self,
            _case: &Case,
            _d: &[Turn],
            _doctor: &str,
        ) -> spar_core::Result<PatientReply> {
            match self.0 {
                0 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    unreachable!()
                }
                1 => Ok(PatientReply {
                    text: "\u{0}\u{1}<|im_end|>".into(),
                    end: false,
                }),
                _ => Err(spar_core::Error::external("sim", "HTTP 500", true)),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hangs_garbage_and_errors_become_reasons() {
        let case = crate::testing::tiny_case();
        for (mode, want) in [(0u8, "timed out"), (1, "control tokens"), (2, "HTTP 500")] {
            let g = Guarded::new(Arc::new(Broken(mode)), Duration::from_secs(5));
            let e = g.reply(&case, &[], "Any fever?").await.unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
