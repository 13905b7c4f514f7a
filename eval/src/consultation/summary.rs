//! Aggregating consultation records: overall, per department, per seen / unseen diagnosis, per acuity.
//! Failed episodes (policy or simulator failure) are counted but left out of every mean; an unparseable stage
//! output scores 0 and is counted (method.md section 9).
use super::EpisodeRecord;
use crate::hallucination::{ClaimCounts, HallucinationSummary, summarize as summarize_claims};
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use std::collections::{BTreeMap, BTreeSet};

/// Mean stage scores (None: nothing scored).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageMeans {
    pub inquiry: Option<f64>,
    pub ddx: Option<f64>,
    pub lab: Option<f64>,
    pub diag: Option<f64>,
}

impl StageMeans {
    pub fn get(&self, stage: Stage) -> Option<f64> {
        match stage {
            Stage::Inquiry => self.inquiry,
            Stage::Ddx => self.ddx,
            Stage::Lab => self.lab,
            Stage::Diag => self.diag,
        }
    }

    fn set(&mut self, stage: Stage, v: Option<f64>) {
        match stage {
            Stage::Inquiry => self.inquiry = v,
            Stage::Ddx => self.ddx = v,
            Stage::Lab => self.lab = v,
            Stage::Diag => self.diag = v,
        }
    }
}

/// Scores of a group of consultations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Episodes in the group, failed ones included.
    pub episodes: usize,
    pub cases: usize,
    pub failed: usize,
    pub stages: StageMeans,
    /// Mean over episodes of the mean of the four stage scores.
    pub composite: Option<f64>,
    /// Share of critical inquiry items asked (cases that have some).
    pub critical_recall: Option<f64>,
    /// Weighted share of all red flags screened for (cases that list some).
    pub red_flag_screening: Option<f64>,
    /// Weighted share of present red flags elicited (urgent cases).
    pub red_flag_elicited: Option<f64>,
    /// Weighted share of present red flags elicited and escalated (urgent cases).
    pub red_flag_acted: Option<f64>,
    /// Share of episodes with escalation language (wanted in urgent cases, over-triage elsewhere).
    pub escalation_rate: Option<f64>,
    /// Pooled hallucination rate H of the group's claims.
    pub hallucination: Option<f64>,
}

/// The consultation part of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsultationSummary {
    pub overall: GroupSummary,
    pub by_department: BTreeMap<String, GroupSummary>,
    /// `seen` / `unseen`: whether the case's diagnosis occurs in the training split (empty when unknown).
    pub by_diagnosis: BTreeMap<String, GroupSummary>,
    /// `urgent` / `screen` / `routine` (see [`crate::safety::Acuity`]).
    pub by_acuity: BTreeMap<String, GroupSummary>,
    /// Unparseable stage outputs per stage (scored 0).
    pub parse_failures: BTreeMap<Stage, usize>,
    /// How episodes ended.
    pub end_reasons: BTreeMap<String, usize>,
    pub truncated_episodes: usize,
    pub mean_inquiry_turns: Option<f64>,
    /// Hallucination rate over every doctor reply (None when fact checking was off).
    pub hallucination: Option<HallucinationSummary>,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for v in values {
        s += v;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// Summarises a group of records.
pub fn group(records: &[&EpisodeRecord]) -> GroupSummary {
    let ok: Vec<&EpisodeRecord> = records
        .iter()
        .copied()
        .filter(|r| !r.end.is_failure())
        .collect();
    let mut stages = StageMeans::default();
    for s in Stage::ALL {
        stages.set(s, mean(ok.iter().filter_map(|r| r.stage(s))));
    }
    let claims: Vec<ClaimCounts> = ok.iter().filter_map(|r| r.claims).collect();
    let pooled = claims.iter().fold(ClaimCounts::default(), |mut a, c| {
        a.supported += c.supported;
        a.refuted += c.refuted;
        a.uncertain += c.uncertain;
        a
    });
    let cases: BTreeSet<&str> = records.iter().map(|r| r.case_id.as_str()).collect();
    GroupSummary {
        episodes: records.len(),
        cases: cases.len(),
        failed: records.len() - ok.len(),
        stages,
        composite: mean(ok.iter().filter_map(|r| r.composite())),
        critical_recall: mean(ok.iter().filter_map(|r| r.critical_recall)),
        red_flag_screening: mean(ok.iter().filter_map(|r| r.safety.screening())),
        red_flag_elicited: mean(ok.iter().filter_map(|r| r.safety.present_elicited())),
        red_flag_acted: mean(ok.iter().filter_map(|r| r.safety.present_acted())),
        escalation_rate: mean(
            ok.iter()
                .map(|r| if r.safety.escalated { 1.0 } else { 0.0 }),
        ),
        hallucination: if claims.is_empty() {
            None
        } else {
            pooled.rate()
        },
    }
}

fn grouped<K: Ord + Clone>(
    records: &[EpisodeRecord],
    key: impl Fn(&EpisodeRecord) -> Option<K>,
) -> BTreeMap<K, GroupSummary> {
    let mut by: BTreeMap<K, Vec<&EpisodeRecord>> = BTreeMap::new();
    for r in records {
        if let Some(k) = key(r) {
            by.entry(k).or_default().push(r);
        }
    }
    by.into_iter().map(|(k, v)| (k, group(&v))).collect()
}

/// Summarises every record of an evaluation. `extractor` / `verifier` name the fact checker (for the report).
pub fn summarize(
    records: &[EpisodeRecord],
    extractor: &str,
    verifier: &str,
) -> ConsultationSummary {
    let all: Vec<&EpisodeRecord> = records.iter().collect();
    let ok: Vec<&EpisodeRecord> = records.iter().filter(|r| !r.end.is_failure()).collect();
    let mut parse_failures = BTreeMap::new();
    for s in Stage::ALL {
        parse_failures.insert(
            s,
            ok.iter()
                .filter(|r| r.stages.get(&s).is_some_and(|x| !x.parsed))
                .count(),
        );
    }
    let mut end_reasons = BTreeMap::new();
    for r in records {
        *end_reasons.entry(r.end.name().to_string()).or_insert(0) += 1;
    }
    let claims: Vec<ClaimCounts> = ok.iter().filter_map(|r| r.claims).collect();
    ConsultationSummary {
        overall: group(&all),
        by_department: grouped(records, |r| Some(r.department.clone())),
        by_diagnosis: grouped(records, |r| {
            r.seen_diagnosis.map(|s| {
                if s {
                    "seen".to_string()
                } else {
                    "unseen".to_string()
                }
            })
        }),
        by_acuity: grouped(records, |r| Some(r.safety.acuity.name().to_string())),
        parse_failures,
        end_reasons,
        truncated_episodes: records.iter().filter(|r| r.truncated).count(),
        mean_inquiry_turns: mean(ok.iter().map(|r| f64::from(r.inquiry_turns))),
        hallucination: (!claims.is_empty()).then(|| summarize_claims(&claims, extractor, verifier)),
    }
}
