//! A simulator that hangs, errors or talks garbage fails its episodes with a recorded reason, never the run.
use super::common::ScriptedDoctor;
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::recipe::RolloutSection;
use spar_core::sample::{EndReason, Turn};
use spar_core::traits::{PatientReply, PatientSimulator};
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
