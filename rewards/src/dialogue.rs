//! A sample's dialogue as the verifiers read it: thinking removed, each doctor reply paired with the user turn
//! before it, and the sample's steps located among those replies.
use spar_core::grammar::strip_think;
use spar_core::sample::{Role, StepSpan, Turn};
use spar_core::{Sample, Stage};

/// One doctor reply and the user turn (patient utterance or stage instruction p_k) it answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub user: String,
    /// The reply with `<think>` blocks removed: thinking is neither judged nor fact-checked.
    pub reply: String,
    pub stage: Option<Stage>,
}

/// The dialogue of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Dialogue {
    /// Every turn, assistant turns with thinking removed.
    pub turns: Vec<Turn>,
    /// Every doctor reply in order (an injected snippet's replies and a pooled prefix's replies included).
    pub exchanges: Vec<Exchange>,
    /// `exchanges[first_step + j]` is step j's reply.
    pub first_step: usize,
}

impl Dialogue {
    /// Pairs the sample's turns. The sample's steps are its **last** `steps.len()` doctor replies: earlier
    /// replies belong to an injected snippet or to the pooled prefix of earlier stages and were not sampled.
    pub fn from_sample(s: &Sample) -> Result<Dialogue, String> {
        Dialogue::from_turns(&s.turns, &s.steps)
    }

    /// [`Dialogue::from_sample`] from a sample's turns and step spans (what a loaded transcript keeps).
    pub fn from_turns(sample_turns: &[Turn], steps: &[StepSpan]) -> Result<Dialogue, String> {
        let mut turns = Vec::with_capacity(sample_turns.len());
        let mut exchanges = Vec::new();
        let mut last_user = String::new();
        for t in sample_turns {
            let mut t = t.clone();
            match t.role {
                Role::Assistant => {
                    t.text = strip_think(&t.text).trim().to_string();
                    exchanges.push(Exchange {
                        user: std::mem::take(&mut last_user),
                        reply: t.text.clone(),
                        stage: t.stage,
                    });
                }
                Role::User => last_user = t.text.clone(),
                Role::System => {}
            }
            turns.push(t);
        }
        if exchanges.len() < steps.len() {
            return Err(format!(
                "{} steps but only {} doctor turns",
                steps.len(),
                exchanges.len()
            ));
        }
        let first_step = exchanges.len() - steps.len();
        for (j, span) in steps.iter().enumerate() {
            let ex = &mut exchanges[first_step + j];
            // The span's stage is authoritative: turns written without a stage still get one.
            ex.stage = Some(span.stage);
        }
        Ok(Dialogue {
            turns,
            exchanges,
            first_step,
        })
    }

    /// The replies of the sample's steps.
    pub fn step_replies(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges[self.first_step..].iter()
    }

    /// The sampled doctor text, steps joined by blank lines: what is judged and fact-checked.
    pub fn sampled_text(&self) -> String {
        self.step_replies()
            .map(|e| e.reply.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// The sampled replies of one stage.
    pub fn stage_replies(&self, stage: Stage) -> Vec<String> {
        self.step_replies()
            .filter(|e| e.stage == Some(stage))
            .map(|e| e.reply.clone())
            .collect()
    }
}
