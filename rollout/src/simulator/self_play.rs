//! The policy's own engine as the patient (self-play on one GPU): the same weights, prompted with a persona
//! built from the case, with the roles swapped (the doctor's turns are its user turns).
use crate::codec::TextCodec;
use crate::simulator::scripted::ScriptedPatient;
use crate::stream::ChatMl;
use async_trait::async_trait;
use spar_core::case::Case;
use spar_core::grammar;
use spar_core::sample::{Role, Turn};
use spar_core::traits::{
    GenerateRequest, PatientReply, PatientSimulator, RolloutBackend, SamplingParams,
};
use std::sync::Arc;

/// Self-play simulator over any [`RolloutBackend`] (normally the built-in engine's client).
pub struct SelfPlayPatient {
    backend: Arc<dyn RolloutBackend>,
    codec: Arc<dyn TextCodec>,
    chat: ChatMl,
    sampling: SamplingParams,
}

impl SelfPlayPatient {
    pub fn new(
        backend: Arc<dyn RolloutBackend>,
        codec: Arc<dyn TextCodec>,
        sampling: SamplingParams,
    ) -> anyhow::Result<Self> {
        let chat = ChatMl::new(codec.as_ref(), false)?;
        let mut sampling = sampling;
        sampling.stop_token_ids = chat.stop_ids();
        Ok(SelfPlayPatient {
            backend,
            codec,
            chat,
            sampling,
        })
    }

    /// The persona: everything the patient may say, never the diagnosis.
    pub fn persona(case: &Case) -> String {
        let mut facts = vec![
            format!(
                "You are a {}-year-old {:?} patient seeing a doctor.",
                case.demographics.age, case.demographics.sex
            )
            .to_lowercase(),
            format!("Your complaint: {}. {}", case.chief_complaint, case.hpi),
        ];
        for (label, items) in [
            ("Past history", &case.past_history),
            ("Medications", &case.medications),
            ("Allergies", &case.allergies),
            ("Family history", &case.family_history),
            ("Social history", &case.social_history),
        ] {
            if !items.is_empty() {
                facts.push(format!("{label}: {}.", items.join("; ")));
            }
        }
        for item in &case.inquiry_items {
            facts.push(format!("If asked about {}: {}", item.topic, item.answer));
        }
        facts.push("Answer only what the doctor asks, briefly, in plain words. If the answer is not above, say you don't know. You do not know your diagnosis.".into());
        facts.join("\n")
    }
}

#[async_trait]
impl PatientSimulator for SelfPlayPatient {
    fn id(&self) -> String {
        format!("self-play:{}", self.backend.id())
    }

    async fn opening(&self, case: &Case) -> spar_core::Result<String> {
        Ok(ScriptedPatient::opening_line(case))
    }

    async fn reply(
        &self,
        case: &Case,
        dialogue: &[Turn],
        doctor: &str,
    ) -> spar_core::Result<PatientReply> {
        if grammar::ends_consultation(doctor) {
            return Ok(PatientReply {
                text: crate::simulator::scripted::GOODBYE.into(),
                end: true,
            });
        }
        let err = |e: anyhow::Error| {
            spar_core::Error::external("self-play-patient", format!("{e:#}"), false)
        };
        let c = self.codec.as_ref();
        let mut ids = self.chat.system(c, &Self::persona(case)).map_err(err)?;
        for t in dialogue {
            // Swapped roles: the doctor speaks as the user, the patient answers as the assistant.
            let piece = match t.role {
                Role::Assistant => self.chat.user_turn(c, &grammar::strip_think(&t.text)),
                Role::User => self.chat.assistant_turn(c, &t.text),
                Role::System => continue,
            };
            ids.extend(piece.map_err(err)?);
        }
        ids.extend(
            self.chat
                .user_then_prompt(c, &grammar::strip_think(doctor))
                .map_err(err)?,
        );
        let out = self
            .backend
            .generate(vec![GenerateRequest {
                prompt_ids: ids,
                sampling: self.sampling.clone(),
            }])
            .await?;
        let out = out
            .into_iter()
            .next()
            .ok_or_else(|| spar_core::Error::external("self-play-patient", "no output", false))?;
        let text = self.chat.reply_text(c, &out.token_ids).map_err(err)?;
        Ok(PatientReply { text, end: false })
    }
}
