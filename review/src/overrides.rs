//! A reviewer's override of a claim label or a rubric verdict: checked against the consultation, written to
//! the audit log first (so that nothing in the cache lacks its audit line), then to the claim cache's store
//! (claims to its override table, rubric verdicts keyed by criterion and judged reply text:
//! `spar_rewards::rubric::reviewed`), which the next scoring run answers from, then applied to the page's copy.
//! At start the log is replayed onto the loaded run, so a restarted page shows what reviewers decided.
use crate::audit::{AUDIT_VERSION, AuditEntry, AuditLog, Change};
use crate::run::Consultation;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use spar_rewards::fact::{CacheBackend, put_override};
use spar_rewards::rubric::{RubricOverride, put_rubric_override};
use spar_rewards::text::normalize;
use std::collections::HashMap;
use std::sync::Arc;

/// `POST /api/overrides`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    /// The consultation (its position in the run, as the list gives it).
    pub id: usize,
    pub kind: Kind,
    /// Index of the claim or rubric item in the consultation.
    pub index: usize,
    /// The new label (claims).
    #[serde(default)]
    pub label: Option<ClaimLabel>,
    /// The new verdict (rubric items; null: no verdict).
    #[serde(default)]
    pub met: Option<bool>,
    #[serde(default)]
    pub note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Claim,
    Rubric,
}

/// Where overrides go.
pub struct Overrides {
    pub log: AuditLog,
    /// The claim cache the run's scoring used (None: the recipe has no persistent cache; overrides then reach
    /// the log and the exported labels only). Rubric verdicts are stored beside the claims.
    pub cache: Option<Arc<dyn CacheBackend>>,
    pub reviewer: String,
}

/// Longest note a reviewer may attach.
pub const MAX_NOTE: usize = 2000;

impl Overrides {
    /// Checks `req` against `c` and records it; returns the audit entry written. Errors leave `c`, the log and
    /// the cache as they were, except a cache failure after the log line (the line then records an intent the
    /// reviewer was told failed; retrying writes it again).
    pub async fn apply(&self, c: &mut Consultation, req: &OverrideRequest) -> Result<AuditEntry> {
        if req.note.len() > MAX_NOTE {
            bail!("note: longer than {MAX_NOTE} bytes");
        }
        let note = spar_core::phi::redact(req.note.trim());
        let Some(scored) = c.scored.as_mut() else {
            bail!("consultation {}: not scored, nothing to override", req.id);
        };
        let (target, change) = match req.kind {
            Kind::Claim => {
                let Some(claim) = scored.claims.get(req.index) else {
                    bail!(
                        "index: consultation {} has {} claims",
                        req.id,
                        scored.claims.len()
                    );
                };
                let Some(after) = req.label else {
                    bail!("label: a claim override needs one (supported, refuted or uncertain)");
                };
                (
                    spar_core::phi::redact(&claim.text),
                    Change::Claim {
                        before: claim.label,
                        after,
                    },
                )
            }
            Kind::Rubric => {
                let Some(item) = scored.rubric.get(req.index) else {
                    bail!(
                        "index: consultation {} has {} rubric items",
                        req.id,
                        scored.rubric.len()
                    );
                };
                (
                    item.criterion.clone(),
                    Change::Rubric {
                        before: item.met,
                        after: req.met,
                    },
                )
            }
        };
        let entry = AuditEntry {
            schema_version: AUDIT_VERSION,
            at: crate::audit::now(),
            reviewer: self.reviewer.clone(),
            case_id: c.case_id.clone(),
            group_id: c.group_id.clone(),
            sample_idx: c.sample_idx,
            index: req.index,
            target,
            change: change.clone(),
            note,
        };
        self.log.append(&entry)?;
        if let (Change::Claim { after, .. }, Some(cache)) = (&change, &self.cache) {
            let verdict = ClaimVerdict {
                label: *after,
                evidence: if entry.note.is_empty() {
                    format!("reviewer override ({})", entry.reviewer)
                } else {
                    entry.note.clone()
                },
                source: Some(format!("review:{}", entry.reviewer)),
            };
            put_override(cache.as_ref(), &entry.target, &verdict).await?;
        }
        if let (Change::Rubric { after, .. }, Some(cache), Some(text)) =
            (&change, &self.cache, c.judged_text())
        {
            let o = RubricOverride {
                met: *after,
                note: entry.note.clone(),
                source: Some(format!("review:{}", entry.reviewer)),
            };
            put_rubric_override(cache.as_ref(), &entry.target, &text, &o).await?;
        }
        apply_change(c, req.index, &change);
        Ok(entry)
    }
}

fn apply_change(c: &mut Consultation, index: usize, change: &Change) {
    let Some(s) = c.scored.as_mut() else { return };
    match change {
        Change::Claim { after, .. } => {
            if let Some(x) = s.claims.get_mut(index) {
                x.label = *after;
            }
        }
        Change::Rubric { after, .. } => {
            if let Some(x) = s.rubric.get_mut(index) {
                x.met = *after;
            }
        }
    }
}

/// Applies the log's entries, in order, to the run's consultations; returns how many applied. An entry whose
/// consultation or item is no longer there (the run was scored again and its claims changed) is skipped: the
/// item is found by index and checked by text, never guessed.
pub fn replay(entries: &[AuditEntry], run: &mut [Consultation]) -> usize {
    let by_key: HashMap<(String, u32), usize> = run
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.group_id.clone(), c.sample_idx), i))
        .collect();
    let mut applied = 0;
    for e in entries {
        let Some(&i) = by_key.get(&(e.group_id.clone(), e.sample_idx)) else {
            continue;
        };
        let c = &mut run[i];
        let same = c.scored.as_ref().is_some_and(|s| match e.change {
            Change::Claim { .. } => s.claims.get(e.index).is_some_and(|x| {
                normalize(&spar_core::phi::redact(&x.text)) == normalize(&e.target)
            }),
            Change::Rubric { .. } => s
                .rubric
                .get(e.index)
                .is_some_and(|x| x.criterion == e.target),
        });
        if same {
            apply_change(c, e.index, &e.change);
            applied += 1;
        }
    }
    applied
}
