//! How a consultation starts (method.md section 6): empty history (the patient's opening line), or an injected
//! snippet of an earlier consultation ending in a patient question, visible to the doctor only.
use super::{Consultation, Env};
use crate::simulator::scripted::ScriptedPatient;
use crate::stream::TokenStream;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::Stage;
use spar_core::case::Case;
use spar_core::sample::{EpisodeMode, Role, Turn};

/// Questions a patient interrupts with; `{topic}` is an inquiry topic of the case.
const PATIENT_QUESTIONS: &[&str] = &[
    "Is this something serious, doctor?",
    "Do I need any tests?",
    "Could this be related to my {topic}?",
    "Should I be worried?",
    "Can I keep working while this is going on?",
];

/// A dialogue snippet: alternating doctor questions and patient answers drawn from the case record, the last
/// patient turn ending in a question of the patient's own.
pub fn snippet(case: &Case, seed: u64) -> Vec<Turn> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut turns = vec![Turn {
        role: Role::User,
        text: ScriptedPatient::opening_line(case),
        stage: Some(Stage::Inquiry),
    }];
    let n = rng.random_range(1..=2usize).min(case.inquiry_items.len());
    let picked: Vec<_> = case.inquiry_items.choose_multiple(&mut rng, n).collect();
    for item in &picked {
        turns.push(Turn {
            role: Role::Assistant,
            text: format!("Can you tell me about {}?", item.topic),
            stage: Some(Stage::Inquiry),
        });
        turns.push(Turn {
            role: Role::User,
            text: item.answer.clone(),
            stage: Some(Stage::Inquiry),
        });
    }
    let topic = picked
        .first()
        .map(|i| i.topic.as_str())
        .unwrap_or("symptoms");
    let q = PATIENT_QUESTIONS
        .choose(&mut rng)
        .expect("non-empty")
        .replace("{topic}", topic);
    let last = turns.last_mut().expect("at least the opening");
    last.text = format!("{} {q}", last.text);
    turns
}

impl Env {
    /// A consultation of `case` ready to play Inquiry. `seed` picks the snippet of an interrupted episode.
    pub async fn open(
        &self,
        case: &Case,
        mode: EpisodeMode,
        seed: u64,
    ) -> Result<Consultation, String> {
        let codec = self.codec.as_ref();
        let fail = |e: anyhow::Error| format!("rendering the opening: {e:#}");
        let mut stream = TokenStream::new();
        if let Some((layers, k)) = self.cfg.track_routing {
            stream.track_routing(layers, k);
        }
        let mut turns = Vec::new();
        if !self.cfg.system_prompt.is_empty() {
            stream.push_context(
                &self
                    .chat
                    .system(codec, &self.cfg.system_prompt)
                    .map_err(fail)?,
            );
            turns.push(Turn {
                role: Role::System,
                text: self.cfg.system_prompt.clone(),
                stage: None,
            });
        }
        let (next_user, heard, sim_dialogue) = match mode {
            EpisodeMode::Fresh => (self.simulator.opening(case).await?, true, Vec::new()),
            EpisodeMode::Interrupted => {
                let mut snip = snippet(case, seed);
                let last = snip.pop().expect("a snippet ends with a patient turn");
                for t in &snip {
                    let ids = match t.role {
                        Role::User => self.chat.user_turn(codec, &t.text),
                        _ => self.chat.assistant_turn(codec, &t.text),
                    };
                    stream.push_context(&ids.map_err(fail)?);
                }
                turns.extend(snip);
                // The simulator never saw the snippet: its dialogue starts empty.
                (last.text, false, Vec::new())
            }
        };
        Ok(Consultation {
            case_id: case.id.clone(),
            mode,
            stream,
            turns,
            sim_dialogue,
            next_user: Some(next_user),
            next_user_from_simulator: heard,
            stage: Stage::Inquiry,
            truncated_replies: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_alternates_and_ends_in_a_patient_question() {
        let case = crate::testing::tiny_case();
        for seed in 0..10 {
            let s = snippet(&case, seed);
            assert!(s.len() >= 3 && s.len() % 2 == 1);
            for (i, t) in s.iter().enumerate() {
                assert_eq!(
                    t.role,
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    }
                );
            }
            assert!(s.last().unwrap().text.ends_with('?'));
            assert!(!s.iter().any(|t| t.text.contains(&case.diagnosis.name)));
        }
        assert_eq!(snippet(&case, 3), snippet(&case, 3));
    }
}
