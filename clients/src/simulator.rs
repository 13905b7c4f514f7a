//! `LlmPatientSimulator`: the patient played by an LLM over an OpenAI-compatible chat endpoint (method.md
//! section 6): a passive persona built from the case, answering only from it.
//!
//! The persona never contains the diagnosis, the differential or the tests, so the model cannot reveal what it
//! was not told; every reply is still checked (`consistency`: no diagnosis term the doctor has not said, no
//! contradiction of age, sex, allergies, medications) and, with `factual_check`, by a second call that compares
//! it with the case file. A reply that fails is regenerated once; a second failure is an error (the episode
//! leaves its group as `simulator_failed`).
use crate::client::OpenAiClient;
use crate::consistency::rule_violation;
use crate::fence::{data_block, data_rule, fence_id, hash12};
use crate::prompt::{LlmOptions, ask_parsed, json_payload};
use crate::wire::ChatMessage;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use spar_core::case::{Case, Sex};
use spar_core::recipe::SimulatorConfig;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{PatientReply, PatientSimulator};
use spar_core::{Error, Result, Stage};

/// The patient's marker for leaving the consultation.
pub const END_MARKER: &str = "<end/>";

/// The doctor's greeting the opening utterance answers.
const GREETING: &str = "Hello, I'm the doctor. What brings you in today?";

const PERSONA: &str = "You are role-playing a patient talking to a doctor. Stay in character as the patient described by \
the case file below; you are not an assistant.\n\
Personality: passive. Answer only what the doctor asks, briefly (one to three sentences), in everyday words. Do not \
volunteer information the doctor has not asked about.\n\
Facts: answer only from the case file. If the doctor asks about something the file does not mention, say you have \
not noticed it or do not know. Never invent test results.\n\
Never name, guess or hint at a diagnosis, and do not use medical terms the file does not use. If the doctor asks what \
you think you have, say you do not know.\n\
When the doctor has given you a diagnosis and a plan, or says goodbye, answer briefly and end your message with \
<end/>.\n\n\
Case file (JSON):\n{persona}";

const CHECK_SYSTEM: &str = "You check a simulated patient's reply against the patient's case file. The reply is \
inconsistent if it states something the file contradicts (age, sex, symptoms, their timing or severity, history, \
medications, allergies, habits) or names a diagnosis. Saying \"I don't know\" or not mentioning something is \
consistent. Reply with exactly one JSON object and nothing else: {\"consistent\": true or false, \"problem\": \"...\"} \
(problem empty when consistent).";

const CHECK_USER: &str = "{data}\n{rule}\nIs \"reply\" consistent with \"case_file\"?";

/// Knobs of the LLM patient.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatorOptions {
    /// Generation of the patient's replies (plain text, not JSON).
    pub reply: LlmOptions,
    /// The second, LLM, consistency check of each reply (`SimulatorConfig::factual_check`); the rule check
    /// always runs.
    pub factual_check: bool,
    /// Generation of the consistency check (JSON).
    pub check: LlmOptions,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            reply: LlmOptions {
                temperature: 0.7,
                max_tokens: 256,
                json_mode: false,
                parse_retries: 0,
                ..LlmOptions::default()
            },
            factual_check: true,
            check: LlmOptions {
                max_tokens: 256,
                ..LlmOptions::default()
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct LlmPatientSimulator {
    client: OpenAiClient,
    opts: SimulatorOptions,
}

/// The case as the patient knows it: no diagnosis, differential, tests or rubric.
pub fn persona(case: &Case) -> Value {
    json!({
        // A string, so that PHI redaction sees "93 years old" (ages over 89 are identifiers).
        "age": format!("{} years old", case.demographics.age),
        "sex": match case.demographics.sex { Sex::Female => "female", Sex::Male => "male" },
        "main_complaint": case.chief_complaint,
        "story_of_the_illness": case.hpi,
        "past_history": case.past_history,
        "medications": case.medications,
        "allergies": case.allergies,
        "family_history": case.family_history,
        "social_history": case.social_history,
        "if_asked": case.inquiry_items.iter().map(|i| json!({"topic": i.topic, "answer": i.answer})).collect::<Vec<_>>(),
        "if_asked_about_warning_signs": case.red_flags.iter().map(|r| json!({"topic": r.description, "answer": r.answer})).collect::<Vec<_>>(),
        "what_an_examination_finds": case.exam_findings,
    })
}

/// Splits the end marker off a reply.
fn take_end_marker(text: &str) -> (String, bool) {
    let ended = text.contains(END_MARKER);
    (text.replace(END_MARKER, "").trim().to_string(), ended)
}

impl LlmPatientSimulator {
    pub fn new(client: OpenAiClient) -> Self {
        LlmPatientSimulator {
            client,
            opts: SimulatorOptions::default(),
        }
    }

    /// From `[rollout.simulator]`: needs `kind = "llm"`'s endpoint; `factual_check` turns the LLM check on.
    pub fn from_config(cfg: &SimulatorConfig) -> Result<Self> {
        let ep = cfg.endpoint.as_ref().ok_or_else(|| {
            Error::Other("rollout.simulator: the llm simulator needs `endpoint`".into())
        })?;
        Ok(
            Self::new(OpenAiClient::new(ep)?).with_options(SimulatorOptions {
                factual_check: cfg.factual_check,
                ..SimulatorOptions::default()
            }),
        )
    }

    pub fn with_options(mut self, opts: SimulatorOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The system prompt for `case` (public for audit and tests).
    pub fn system_prompt(case: &Case) -> String {
        let p = serde_json::to_string_pretty(&persona(case))
            .expect("a serde_json::Value always serialises");
        PERSONA.replace("{persona}", &p)
    }

    /// The chat for the patient's next reply. Roles flip: the doctor is the "user", the patient the
    /// "assistant". Stage instructions (user turns of stages after inquiry) and system turns are not the
    /// patient's and are left out; consecutive turns of one side are joined.
    pub fn messages(case: &Case, dialogue: &[Turn], doctor: &str) -> Vec<ChatMessage> {
        let mut msgs = vec![ChatMessage::system(Self::system_prompt(case))];
        let mut push = |role: &str, text: String| match msgs.last_mut() {
            Some(last) if last.role == role => {
                last.content.push_str("\n\n");
                last.content.push_str(&text);
            }
            _ => msgs.push(ChatMessage {
                role: role.into(),
                content: text,
            }),
        };
        let clean = |t: &str| spar_core::grammar::strip_think(t).trim().to_string();
        for t in dialogue {
            match (t.role, t.stage) {
                (Role::Assistant, _) => push("user", clean(&t.text)),
                (Role::User, None | Some(Stage::Inquiry)) => push("assistant", clean(&t.text)),
                _ => {}
            }
        }
        let doctor = clean(doctor);
        let already_last = matches!(dialogue.last(), Some(t) if t.role == Role::Assistant && clean(&t.text) == doctor);
        if !already_last {
            push("user", doctor);
        }
        msgs
    }

    /// One reply that passes the checks, regenerated once on a violation.
    async fn checked(
        &self,
        case: &Case,
        mut messages: Vec<ChatMessage>,
        doctor_text: &str,
    ) -> Result<(String, bool)> {
        let mut problem = String::new();
        for ask in 0..2u32 {
            let resp = self
                .client
                .chat(&self.opts.reply.request(messages.clone(), false, ask))
                .await?;
            let (text, ended) =
                take_end_marker(spar_core::grammar::strip_think(&resp.content).trim());
            let violation = if text.is_empty() && !ended {
                Some("the reply is empty".to_string())
            } else if let Some(v) = rule_violation(case, &text, doctor_text) {
                Some(v)
            } else if self.opts.factual_check && !text.is_empty() {
                self.llm_check(case, &text).await?
            } else {
                None
            };
            match violation {
                None => return Ok((text, ended)),
                Some(v) => {
                    tracing::debug!(case = %case.id, ask = ask + 1, "simulated patient reply rejected: {v}");
                    messages[0].content = format!(
                        "{}\n\nYour previous answer was rejected: {v}. Answer again, only from the case file, without naming any diagnosis.",
                        Self::system_prompt(case)
                    );
                    problem = v;
                }
            }
        }
        Err(Error::external(
            "llm-simulator",
            format!(
                "case {}: the reply failed the factual check twice: {problem}",
                case.id
            ),
            false,
        ))
    }

    /// The LLM consistency check: Some(problem) when the reply contradicts the case file.
    async fn llm_check(&self, case: &Case, reply: &str) -> Result<Option<String>> {
        let data = json!({"case_file": persona(case), "reply": reply});
        let id = fence_id(&data);
        let user = CHECK_USER
            .replace("{rule}", &data_rule(&id))
            .replace("{data}", &data_block(&id, &data));
        let msgs = [ChatMessage::system(CHECK_SYSTEM), ChatMessage::user(user)];
        let (ok, problem) = ask_parsed(
            &self.client,
            "llm-simulator-check",
            &self.opts.check,
            &msgs,
            true,
            parse_check,
        )
        .await?;
        Ok((!ok).then(|| {
            if problem.trim().is_empty() {
                "the consistency check found a contradiction".into()
            } else {
                format!("inconsistent with the case: {}", problem.trim())
            }
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckReply {
    consistent: bool,
    problem: String,
}

/// Parses `{"consistent": bool, "problem": str}`.
pub fn parse_check(content: &str) -> std::result::Result<(bool, String), String> {
    let r: CheckReply = serde_json::from_str(json_payload(content))
        .map_err(|e| format!("check is not {{\"consistent\": bool, \"problem\": str}}: {e}"))?;
    Ok((r.consistent, r.problem))
}

#[async_trait]
impl PatientSimulator for LlmPatientSimulator {
    fn id(&self) -> String {
        format!(
            "llm-simulator/{}/{}",
            self.client.model(),
            hash12(&[
                PERSONA,
                GREETING,
                CHECK_SYSTEM,
                CHECK_USER,
                if self.opts.factual_check {
                    "checked"
                } else {
                    "rules"
                }
            ])
        )
    }

    async fn opening(&self, case: &Case) -> Result<String> {
        let msgs = vec![
            ChatMessage::system(Self::system_prompt(case)),
            ChatMessage::user(GREETING),
        ];
        let (text, _) = self.checked(case, msgs, GREETING).await?;
        if text.is_empty() {
            return Err(Error::external(
                "llm-simulator",
                format!("case {}: the opening utterance is empty", case.id),
                false,
            ));
        }
        Ok(text)
    }

    async fn reply(&self, case: &Case, dialogue: &[Turn], doctor: &str) -> Result<PatientReply> {
        let mut doctor_text: Vec<String> = dialogue
            .iter()
            .filter(|t| t.role == Role::Assistant)
            .map(|t| spar_core::grammar::strip_think(&t.text))
            .collect();
        doctor_text.push(spar_core::grammar::strip_think(doctor));
        let (text, ended) = self
            .checked(
                case,
                Self::messages(case, dialogue, doctor),
                &doctor_text.join("\n"),
            )
            .await?;
        let diagnosed = spar_core::grammar::ends_consultation(doctor);
        Ok(PatientReply {
            text,
            end: ended || diagnosed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_flip_and_stage_instructions_are_left_out() {
        let mut instr = Turn::new(Role::User, "List your differential.");
        instr.stage = Some(Stage::Ddx);
        let dialogue = vec![
            Turn::new(Role::User, "I have a cough."),
            Turn::new(Role::Assistant, "<think>hmm</think>Since when?"),
            instr,
        ];
        let c: Case = serde_json::from_value(json!({
            "id": "c", "department": "resp", "demographics": {"age": 40, "sex": "male"}, "chief_complaint": "cough",
            "hpi": "dry cough", "inquiry_items": [], "diagnosis": {"name": "Asthma", "icd10": "J45.909"},
            "tests": {"essential": []}
        }))
        .unwrap();
        let m = LlmPatientSimulator::messages(&c, &dialogue, "Any fever?");
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "assistant", "user"]);
        assert_eq!(m[2].content, "Since when?\n\nAny fever?");
        assert!(
            !m[0].content.contains("Asthma") && !m[0].content.contains("J45"),
            "the persona never holds the diagnosis"
        );
    }

    #[test]
    fn end_marker() {
        assert_eq!(
            take_end_marker("Thanks, bye. <end/>"),
            ("Thanks, bye.".to_string(), true)
        );
        assert_eq!(
            take_end_marker("Since Monday."),
            ("Since Monday.".to_string(), false)
        );
    }
}
