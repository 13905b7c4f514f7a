//! `return_routed_experts` of `/v1/completions`: the MoE expert choices of a request, as SGLang returns them
//! (`sglext.routed_experts`: base64 of int32 `[prompt + generated - 1 tokens, hidden layers, top_k]`,
//! `spar_core::routed_wire`), so that an external-server rollout replays the routing the server used.
//!
//! The engine records routing only when `spar serve --enable-return-routed-experts` started it so (as SGLang's
//! flag of the same name): recording costs a device-to-host copy per forward, which a server that nobody asks
//! pays for nothing.
use super::ServeState;
use super::errors::{ApiError, bad_param, internal};
use crate::engine::EngineOutput;
use serde_json::{Value, json};
use spar_core::routed_wire::MoeLayout;
use spar_core::sample::RoutedExperts;

/// The field every refusal names.
const FIELD: &str = "return_routed_experts";

/// What the server can answer `return_routed_experts` with: the model's MoE layout, when it has MoE layers and
/// the engine records their choices.
#[derive(Clone, Debug)]
pub(crate) enum RoutedExpertsSupport {
    /// A dense model: there are no expert choices.
    Dense,
    /// An MoE model served without `--enable-return-routed-experts`.
    NotRecorded,
    Recorded(MoeLayout),
}

impl RoutedExpertsSupport {
    pub(crate) fn new(layout: Option<MoeLayout>, record_routing: bool) -> Self {
        match (layout, record_routing) {
            (None, _) => RoutedExpertsSupport::Dense,
            (Some(_), false) => RoutedExpertsSupport::NotRecorded,
            (Some(l), true) => RoutedExpertsSupport::Recorded(l),
        }
    }
}

/// The layout to answer a `/v1/completions` request that asked for routing with, or a 400 saying why it cannot
/// be answered. `sequences` is prompts x `n`: one payload answers one sequence, as SGLang's response-level
/// `sglext` does (it would carry the first choice's alone; spar refuses instead of dropping the others).
pub(crate) fn check(
    st: &ServeState,
    sequences: usize,
    stream: bool,
) -> Result<MoeLayout, ApiError> {
    let layout = match &st.routed_experts {
        RoutedExpertsSupport::Dense => {
            return Err(bad_param(
                FIELD,
                "the served model has no MoE layers, so there are no expert choices to return",
            ));
        }
        RoutedExpertsSupport::NotRecorded => {
            return Err(bad_param(
                FIELD,
                "this server does not record expert choices: start spar serve with --enable-return-routed-experts",
            ));
        }
        RoutedExpertsSupport::Recorded(l) => l.clone(),
    };
    if sequences != 1 {
        return Err(bad_param(
            FIELD,
            format!(
                "return_routed_experts answers one sequence per request (one prompt, n = 1); this one asks for {sequences}"
            ),
        ));
    }
    if stream {
        return Err(bad_param(
            FIELD,
            "return_routed_experts is not supported with stream = true",
        ));
    }
    Ok(layout)
}

/// `sglext` of the response: `{"routed_experts": <base64>}` for the request's one output.
pub(crate) fn sglext(layout: &MoeLayout, out: &EngineOutput) -> Result<Value, ApiError> {
    let missing = || {
        internal(anyhow::anyhow!(
            "the engine recorded no expert choices for this request"
        ))
    };
    let prompt = out.prompt_routing.as_ref().ok_or_else(missing)?;
    let generated = out.output.routed_experts.as_ref().ok_or_else(missing)?;
    let prompt = RoutedExperts {
        layers: prompt.layers,
        k: prompt.k,
        ids: prompt.ids.clone(),
    };
    let b64 = layout
        .encode_sglang(&prompt, generated)
        .map_err(|e| internal(anyhow::anyhow!(e)))?;
    Ok(json!({ "routed_experts": b64 }))
}

/// A chat request asking for routing: refused, since spar's rollouts use `/v1/completions` (token ids in and
/// out) and a chat reply's routing would also need the rendered prompt's token ids to mean anything.
pub(crate) fn refuse_on_chat() -> ApiError {
    bad_param(
        FIELD,
        "spar serve returns expert choices on /v1/completions only (token-id prompts)",
    )
}
