//! One consultation as the page draws it: the dialogue split into text pieces with each claim marked where
//! the doctor said it, each doctor reply with its step's violations, gamma and advantage, rubric verdicts, and
//! rewards per stage. Pieces instead of offsets: the browser counts UTF-16 units, Rust bytes, and a piece
//! needs no counting at all.
use crate::query::violation_type;
use crate::run::Consultation;
use serde::Serialize;
use spar_core::Stage;
use spar_core::sample::{ClaimLabel, EpisodeMode, Role};
use std::collections::BTreeMap;

/// A piece of a turn's text; `claim` is the index into [`Detail::claims`] of the claim it states.
#[derive(Clone, Debug, Serialize)]
pub struct Piece {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TurnView {
    pub role: Role,
    pub stage: Option<Stage>,
    /// Index into [`Detail::steps`] when this turn is a sampled doctor reply.
    pub step: Option<usize>,
    pub pieces: Vec<Piece>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepView {
    pub stage: Stage,
    pub turn: Option<usize>,
    pub violations: Vec<String>,
    pub gamma: Option<f64>,
    pub advantage: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClaimView {
    pub text: String,
    pub label: ClaimLabel,
    pub saliency: f64,
    pub source: Option<String>,
    /// The turn the claim was found in (None: not found verbatim in any reply).
    pub turn: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RubricView {
    pub criterion: String,
    pub points: i32,
    pub met: Option<bool>,
    pub explanation: String,
}

/// Per stage: G_k where the record carries one, and the stage's steps summed.
#[derive(Clone, Debug, Serialize)]
pub struct StageRewards {
    pub stage: Stage,
    pub steps: usize,
    pub stage_score: Option<f64>,
    pub advantage_sum: f64,
    pub mean_gamma: Option<f64>,
    pub violations: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rewards {
    pub reward: f64,
    pub r_task: f64,
    pub r_fact: f64,
    pub lambda: f64,
    pub stage_score: Option<f64>,
    pub components: BTreeMap<String, f64>,
    pub drop_reason: Option<String>,
}

/// The detail view of one consultation.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    pub id: usize,
    pub case_id: String,
    pub department: String,
    pub group_id: String,
    pub sample_idx: u32,
    pub stages: Vec<Stage>,
    pub mode: EpisodeMode,
    pub end_reason: String,
    pub rewards: Option<Rewards>,
    pub stage_rewards: Vec<StageRewards>,
    pub turns: Vec<TurnView>,
    pub steps: Vec<StepView>,
    pub claims: Vec<ClaimView>,
    pub rubric: Vec<RubricView>,
}

/// Where `needle` occurs in `hay` ignoring ASCII case, as a byte range of `hay`; a claim's final full stop
/// is not required (extractors drop it).
fn find_ci(hay: &str, needle: &str) -> Option<(usize, usize)> {
    let needle = needle.trim().trim_end_matches('.').trim();
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    (0..=h.len() - n.len())
        .filter(|&i| hay.is_char_boundary(i) && hay.is_char_boundary(i + n.len()))
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
        .map(|i| (i, i + n.len()))
}

/// Splits `text` into pieces, marking the first occurrence of each claim in `claims` (index, text) that does
/// not overlap one marked before it.
fn pieces(
    text: &str,
    claims: &[(usize, &str)],
    found: &mut [Option<usize>],
    turn: usize,
) -> Vec<Piece> {
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for &(ci, ct) in claims {
        if found[ci].is_some() {
            continue;
        }
        if let Some((a, b)) = find_ci(text, ct)
            && !spans.iter().any(|&(x, y, _)| a < y && x < b)
        {
            spans.push((a, b, ci));
            found[ci] = Some(turn);
        }
    }
    spans.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (a, b, ci) in spans {
        if a > at {
            out.push(Piece {
                text: text[at..a].to_string(),
                claim: None,
            });
        }
        out.push(Piece {
            text: text[a..b].to_string(),
            claim: Some(ci),
        });
        at = b;
    }
    if at < text.len() || out.is_empty() {
        out.push(Piece {
            text: text[at..].to_string(),
            claim: None,
        });
    }
    out
}

impl Detail {
    /// The detail view of consultation `id`.
    pub fn of(id: usize, c: &Consultation) -> Detail {
        let scored = c.scored.as_ref();
        let step_turns = c.step_turns();
        let claim_texts: Vec<(usize, &str)> = scored
            .map(|s| {
                s.claims
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (i, x.text.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let mut found = vec![None; claim_texts.len()];
        let turns = c
            .turns
            .iter()
            .enumerate()
            .map(|(ti, t)| {
                let step = step_turns.iter().position(|&x| x == ti);
                // Claims are the doctor's: only replies are searched.
                let pieces = if t.role == Role::Assistant {
                    pieces(&t.text, &claim_texts, &mut found, ti)
                } else {
                    vec![Piece {
                        text: t.text.clone(),
                        claim: None,
                    }]
                };
                TurnView {
                    role: t.role,
                    stage: t.stage.or_else(|| step.map(|s| c.steps[s].stage)),
                    step,
                    pieces,
                }
            })
            .collect();
        let steps: Vec<StepView> = c
            .steps
            .iter()
            .enumerate()
            .map(|(i, sp)| {
                let sc = scored.and_then(|s| s.steps.get(i));
                StepView {
                    stage: sp.stage,
                    turn: step_turns.get(i).copied(),
                    violations: sc.map(|x| x.violations.clone()).unwrap_or_default(),
                    gamma: sc.map(|x| x.gamma),
                    advantage: sc.map(|x| x.advantage),
                }
            })
            .collect();
        let stage_rewards = stage_rewards(c, &steps);
        Detail {
            id,
            case_id: c.case_id.clone(),
            department: c.department.clone(),
            group_id: c.group_id.clone(),
            sample_idx: c.sample_idx,
            stages: c.stages.clone(),
            mode: c.mode,
            end_reason: c.end.clone(),
            rewards: scored.map(|s| Rewards {
                reward: s.reward,
                r_task: s.r_task,
                r_fact: s.r_fact,
                lambda: s.lambda,
                stage_score: s.stage_score,
                components: s.components.clone(),
                drop_reason: s.drop_reason.clone(),
            }),
            stage_rewards,
            turns,
            steps,
            claims: scored
                .map(|s| {
                    s.claims
                        .iter()
                        .zip(&found)
                        .map(|(x, t)| ClaimView {
                            text: x.text.clone(),
                            label: x.label,
                            saliency: x.saliency,
                            source: x.source.clone(),
                            turn: *t,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            rubric: scored
                .map(|s| {
                    s.rubric
                        .iter()
                        .map(|r| RubricView {
                            criterion: r.criterion.clone(),
                            points: r.points,
                            met: r.met,
                            explanation: r.explanation.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn stage_rewards(c: &Consultation, steps: &[StepView]) -> Vec<StageRewards> {
    let stage_score = c.scored.as_ref().and_then(|s| s.stage_score);
    c.stages
        .iter()
        .map(|&stage| {
            let of: Vec<&StepView> = steps.iter().filter(|s| s.stage == stage).collect();
            let gammas: Vec<f64> = of.iter().filter_map(|s| s.gamma).collect();
            StageRewards {
                stage,
                steps: of.len(),
                // G_k belongs to a segment, which covers one stage; a whole episode's record has none, an
                // evaluation's has one per stage.
                stage_score: c
                    .stage_scores
                    .get(&stage)
                    .copied()
                    .or(if c.stages.len() == 1 {
                        stage_score
                    } else {
                        None
                    }),
                advantage_sum: of.iter().filter_map(|s| s.advantage).sum(),
                mean_gamma: (!gammas.is_empty())
                    .then(|| gammas.iter().sum::<f64>() / gammas.len() as f64),
                violations: of
                    .iter()
                    .flat_map(|s| &s.violations)
                    .filter(|v| !violation_type(v).is_empty())
                    .count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_marked_in_place_ignoring_case_and_the_final_stop() {
        let mut found = vec![None, None, None];
        let p = pieces(
            "Hello. Aspirin is safe in children, and Ibuprofen helps.",
            &[
                (0, "aspirin is safe in children."),
                (1, "ibuprofen helps"),
                (2, "not there"),
            ],
            &mut found,
            3,
        );
        let texts: Vec<(&str, Option<usize>)> =
            p.iter().map(|x| (x.text.as_str(), x.claim)).collect();
        assert_eq!(
            texts,
            [
                ("Hello. ", None),
                ("Aspirin is safe in children", Some(0)),
                (", and ", None),
                ("Ibuprofen helps", Some(1)),
                (".", None)
            ]
        );
        assert_eq!(found, [Some(3), Some(3), None]);
    }

    #[test]
    fn non_ascii_text_never_splits_a_character() {
        let mut found = vec![None];
        let p = pieces("Fièvre — fever 39 °C", &[(0, "fever 39 °c")], &mut found, 0);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].text, "fever 39 °C");
    }
}
