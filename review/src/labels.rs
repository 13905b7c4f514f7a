//! `spar review RUN_DIR --export-labels FILE`: the reviewers' decisions as a labelled set for judge and
//! verifier calibration. One JSON line per claim (the last decision on each distinct claim text, with the
//! label the verifier first gave) and per rubric item of a consultation (the last decision, the judge's
//! verdict, and the dialogue the judge read, PHI-redacted, since a verdict means nothing without it).
use crate::audit::{AuditEntry, Change};
use crate::run::RunFolder;
use anyhow::Result;
use serde::Serialize;
use spar_core::sample::{ClaimLabel, Role};
use spar_rewards::text::normalize;
use std::collections::BTreeMap;
use std::path::Path;

/// One labelled example.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Label {
    Claim {
        claim: String,
        /// The reviewer's label.
        label: ClaimLabel,
        /// The verifier's label before any review.
        model_label: ClaimLabel,
        reviewer: String,
        at: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        note: String,
        case_id: String,
    },
    Rubric {
        case_id: String,
        group_id: String,
        sample_idx: u32,
        criterion: String,
        points: Option<i32>,
        /// The reviewer's verdict.
        met: Option<bool>,
        /// The judge's verdict before any review.
        judge_met: Option<bool>,
        reviewer: String,
        at: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        note: String,
        dialogue: Vec<DialogueTurn>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DialogueTurn {
    pub role: Role,
    pub text: String,
}

/// The labelled set of `entries` (the audit log, in order); `run` gives rubric items their dialogue.
pub fn labels(entries: &[AuditEntry], run: &RunFolder) -> Vec<Label> {
    // First "before" per item: the model's label; last "after": the reviewer's.
    let mut claims: BTreeMap<String, (ClaimLabel, &AuditEntry)> = BTreeMap::new();
    let mut rubric: BTreeMap<(String, u32, usize), (Option<bool>, &AuditEntry)> = BTreeMap::new();
    let mut order: Vec<(bool, String, (String, u32, usize))> = Vec::new();
    for e in entries {
        match e.change {
            Change::Claim { before, .. } => {
                let k = normalize(&e.target);
                match claims.get_mut(&k) {
                    Some(slot) => slot.1 = e,
                    None => {
                        order.push((true, k.clone(), Default::default()));
                        claims.insert(k, (before, e));
                    }
                }
            }
            Change::Rubric { before, .. } => {
                let k = (e.group_id.clone(), e.sample_idx, e.index);
                match rubric.get_mut(&k) {
                    Some(slot) => slot.1 = e,
                    None => {
                        order.push((false, String::new(), k.clone()));
                        rubric.insert(k, (before, e));
                    }
                }
            }
        }
    }
    let by_key: std::collections::HashMap<(&str, u32), usize> = run
        .consultations
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.group_id.as_str(), c.sample_idx), i))
        .collect();
    order
        .into_iter()
        .filter_map(|(is_claim, ck, rk)| {
            if is_claim {
                let (model_label, e) = claims.get(&ck)?;
                let Change::Claim { after, .. } = e.change else {
                    return None;
                };
                Some(Label::Claim {
                    claim: e.target.clone(),
                    label: after,
                    model_label: *model_label,
                    reviewer: e.reviewer.clone(),
                    at: e.at.clone(),
                    note: e.note.clone(),
                    case_id: e.case_id.clone(),
                })
            } else {
                let (judge_met, e) = rubric.get(&rk)?;
                let Change::Rubric { after, .. } = e.change else {
                    return None;
                };
                let c = by_key
                    .get(&(e.group_id.as_str(), e.sample_idx))
                    .map(|&i| &run.consultations[i]);
                Some(Label::Rubric {
                    case_id: e.case_id.clone(),
                    group_id: e.group_id.clone(),
                    sample_idx: e.sample_idx,
                    criterion: e.target.clone(),
                    points: c
                        .and_then(|c| c.scored.as_ref())
                        .and_then(|s| s.rubric.get(e.index))
                        .map(|r| r.points),
                    met: after,
                    judge_met: *judge_met,
                    reviewer: e.reviewer.clone(),
                    at: e.at.clone(),
                    note: e.note.clone(),
                    dialogue: c
                        .map(|c| {
                            c.turns
                                .iter()
                                .map(|t| DialogueTurn {
                                    role: t.role,
                                    text: spar_core::phi::redact(&t.text),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
        })
        .collect()
}

/// Writes the labelled set as JSONL, atomically and owner-only; returns how many labels.
pub fn export(entries: &[AuditEntry], run: &RunFolder, out: &Path) -> Result<usize> {
    let labels = labels(entries, run);
    spar_core::fsio::write_jsonl(out, &labels)?;
    Ok(labels.len())
}
