//! A simulator that hangs, errors or talks garbage fails its episodes with a recorded reason, never the run. A
//! failing policy fails the round, unless the rollout keeps policy failures per episode (evaluation).
use super::common::{ScriptedDoctor, scripted_rollout};
use async_trait::async_trait;
use spar_core::Stage;
use spar_core::case::Case;
use spar_core::recipe::RolloutSection;
use spar_core::sample::{EndReason, Role, Turn};
use spar_core::traits::{ChatBackend, ChatReply, PatientReply, PatientSimulator, SamplingParams};
use spar_rollout::TextCodec;
use spar_rollout::testing::{CharCodec, ParseScorer, tiny_case};
use spar_rollout::{Policy, Rollout, SimulatorChoice};
use std::sync::Arc;
use std::time::Duration;

/// Mode 0 hangs on replies, 1 answers with control characters, 2 errors, 3 fails the opening.
struct Flaky(u8);

#[async_trait]
impl PatientSimulator for Flaky {
    fn id(&self) -> String {
        format!("flaky-{}", self.0)
    }
    async fn opening(&self, _case: &Case) -> spar_core::Result<String> {
        if self.0 == 3 {
            Err(spar_core::Error::external(
                "flaky",
                "connection refused",
                true,
            ))
        } else {
            Ok("I have a cough.".into())
        }
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
                text: "\u{7}\u{0}".into(),
                end: false,
            }),
            _ => Err(spar_core::Error::external(
                "flaky",
                "HTTP 503 after 3 retries",
                false,
            )),
        }
    }
}

#[test]
fn broken_simulators_fail_episodes_not_the_run() {
    for (mode, reason) in [
        (0u8, "timed out"),
        (1, "control characters"),
        (2, "HTTP 503"),
        (3, "connection refused"),
    ] {
        let cfg = RolloutSection {
            segmented: false,
            group_size: 2,
            interruption_rate: 0.0,
            turn_limits: [3, 1, 1, 1],
            ..Default::default()
        };
        let mut r = Rollout::new(
            cfg,
            vec![tiny_case()],
            Arc::new(CharCodec),
            Arc::new(ParseScorer),
            SimulatorChoice::Fixed(Arc::new(Flaky(mode))),
            "t",
        )
        .unwrap()
        .with_backend(Arc::new(ScriptedDoctor {
            codec: CharCodec,
            fail_odd_ddx: false,
        }));
        r.set_simulator_deadline(Duration::from_millis(200));
        let groups = r.collect_groups(Policy::External, 2).unwrap();
        for g in &groups {
            assert_eq!(g.samples.len(), 2);
            for s in &g.samples {
                assert_eq!(s.end_reason, EndReason::SimulatorFailed, "mode {mode}");
                s.check().unwrap();
            }
            assert_eq!(g.notes.len(), 2);
            assert!(
                g.notes.iter().all(|(_, n)| n.contains(reason)),
                "mode {mode}: {:?}",
                g.notes
            );
        }
        // The run goes on: the next round plays as usual.
        assert_eq!(r.collect_groups(Policy::External, 1).unwrap().len(), 1);
    }
}

/// A chat policy (text in, text out) that follows the grammar, or fails every call when `down`.
struct TextDoctor {
    down: bool,
}

#[async_trait]
impl ChatBackend for TextDoctor {
    fn id(&self) -> String {
        "text-doctor".into()
    }
    async fn chat(&self, conv: &[Turn], _: &SamplingParams) -> spar_core::Result<ChatReply> {
        if self.down {
            return Err(spar_core::Error::external(
                "text-doctor",
                "HTTP 500 after 2 retries",
                false,
            ));
        }
        let stage = conv.last().and_then(|t| t.stage).unwrap_or(Stage::Inquiry);
        let text = match stage {
            Stage::Inquiry => "Any fever? <ready/>".to_string(),
            Stage::Ddx => "<ddx>\n1. Pneumonia (J18.9)\n</ddx>".into(),
            Stage::Lab => "<tests>\n- Chest X-ray\n</tests>".into(),
            Stage::Diag => "<diagnosis>Pneumonia (J18.9)</diagnosis>".into(),
        };
        Ok(ChatReply {
            text,
            truncated: false,
        })
    }
}

fn chat_rollout() -> Rollout {
    let cfg = RolloutSection {
        segmented: false,
        group_size: 2,
        interruption_rate: 0.0,
        turn_limits: [3, 1, 1, 1],
        ..Default::default()
    };
    scripted_rollout(cfg, vec![tiny_case()], "t")
}

#[test]
fn a_chat_policy_plays_the_same_episode_and_its_failures_are_kept_only_when_asked() {
    let mut r = chat_rollout();
    let groups = r
        .collect_groups(Policy::Chat(Arc::new(TextDoctor { down: false })), 1)
        .unwrap();
    let s = &groups[0].samples[0];
    s.check().unwrap();
    assert_eq!(s.end_reason, EndReason::Done);
    // Every reply is in the one token stream, exactly as said, closed by `<|im_end|>`.
    assert_eq!(s.steps.len(), 4);
    let codec = CharCodec;
    for (span, t) in s
        .steps
        .iter()
        .zip(s.turns.iter().filter(|t| t.role == Role::Assistant))
    {
        let ids = &s.token_ids[span.start..span.end];
        assert_eq!(ids.last(), codec.token_id("<|im_end|>").as_ref());
        assert_eq!(codec.decode(&ids[..ids.len() - 1]).unwrap(), t.text);
    }
    assert_eq!(groups[0].truncated_replies, vec![0, 0]);

    // Training: a failing policy fails the round.
    let down = || Policy::Chat(Arc::new(TextDoctor { down: true }));
    assert!(chat_rollout().collect_groups(down(), 1).is_err());
    // Evaluation: it ends only those episodes, with the error as their note.
    let mut r = chat_rollout().keep_policy_failures();
    let g = &r.collect_groups(down(), 1).unwrap()[0];
    assert!(
        g.samples
            .iter()
            .all(|s| s.end_reason == EndReason::PolicyFailed && s.check().is_ok())
    );
    assert!(
        g.notes.iter().all(|(_, n)| n.contains("HTTP 500")),
        "{:?}",
        g.notes
    );
}
