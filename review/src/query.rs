//! The list view's filters, search and server-side paging: the page asks for one page of rows at a time, so a
//! run of 10k consultations never reaches the browser whole.
use crate::run::Consultation;
use serde::{Deserialize, Serialize};
use spar_core::Stage;
use spar_core::sample::ClaimLabel;
use std::collections::BTreeSet;

/// Most rows one page may hold.
pub const MAX_PAGE: usize = 500;
/// Rows of a page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;

/// Filters and paging of `GET /api/consultations` (query string; every field optional).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    pub department: Option<String>,
    /// Consultations covering this stage.
    pub stage: Option<Stage>,
    /// Final reward R at least this (unscored consultations never match a reward bound).
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    /// Only consultations with a refuted claim.
    #[serde(default)]
    pub hallucinated: bool,
    /// Only consultations with a step carrying this violation type ([`violation_type`]).
    pub violation: Option<String>,
    /// Case-insensitive substring of the dialogue, case id, group id or department.
    pub q: Option<String>,
}

/// One row of the list.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Position in the run; the id of `GET /api/consultations/{id}`.
    pub id: usize,
    pub case_id: String,
    pub department: String,
    pub group_id: String,
    pub sample_idx: u32,
    pub stages: Vec<Stage>,
    pub end_reason: String,
    pub reward: Option<f64>,
    pub r_task: Option<f64>,
    pub r_fact: Option<f64>,
    pub claims: usize,
    pub refuted: usize,
    pub violations: usize,
    pub dropped: bool,
}

/// One page of rows, and how many rows match in all.
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub total: usize,
    pub offset: usize,
    pub rows: Vec<Row>,
}

/// The type of a violation string: detectors may add detail after a colon ("repeated_question: ...").
pub fn violation_type(v: &str) -> &str {
    v.split(':').next().unwrap_or(v).trim()
}

/// Whether a consultation has a refuted claim (the page's "hallucinated").
pub fn hallucinated(c: &Consultation) -> bool {
    c.scored
        .as_ref()
        .is_some_and(|s| s.claims.iter().any(|x| x.label == ClaimLabel::Refuted))
}

impl ListQuery {
    /// Whether `c` passes every filter; `q` must be lower-cased by the caller.
    fn matches(&self, c: &Consultation, q: Option<&str>) -> bool {
        if let Some(d) = &self.department
            && !d.is_empty()
            && &c.department != d
        {
            return false;
        }
        if let Some(s) = self.stage
            && !c.stages.contains(&s)
        {
            return false;
        }
        let reward = c.scored.as_ref().map(|s| s.reward);
        if let Some(lo) = self.min_reward
            && !reward.is_some_and(|r| r >= lo)
        {
            return false;
        }
        if let Some(hi) = self.max_reward
            && !reward.is_some_and(|r| r <= hi)
        {
            return false;
        }
        if self.hallucinated && !hallucinated(c) {
            return false;
        }
        if let Some(v) = self.violation.as_deref().filter(|v| !v.is_empty()) {
            let has = c.scored.as_ref().is_some_and(|s| {
                s.steps
                    .iter()
                    .flat_map(|st| &st.violations)
                    .any(|x| violation_type(x) == v)
            });
            if !has {
                return false;
            }
        }
        match q {
            Some(q) => c.haystack.contains(q),
            None => true,
        }
    }

    /// The page of `all` this query asks for.
    pub fn page(&self, all: &[Consultation]) -> Page {
        let offset = self.offset.unwrap_or(0);
        let limit = self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let q = self
            .q
            .as_deref()
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        let mut total = 0;
        let mut rows = Vec::new();
        for (id, c) in all.iter().enumerate() {
            if !self.matches(c, q.as_deref()) {
                continue;
            }
            if total >= offset && rows.len() < limit {
                rows.push(row(id, c));
            }
            total += 1;
        }
        Page {
            total,
            offset,
            rows,
        }
    }
}

fn row(id: usize, c: &Consultation) -> Row {
    let s = c.scored.as_ref();
    Row {
        id,
        case_id: c.case_id.clone(),
        department: c.department.clone(),
        group_id: c.group_id.clone(),
        sample_idx: c.sample_idx,
        stages: c.stages.clone(),
        end_reason: c.end.clone(),
        reward: s.map(|s| s.reward),
        r_task: s.map(|s| s.r_task),
        r_fact: s.map(|s| s.r_fact),
        claims: s.map_or(0, |s| s.claims.len()),
        refuted: s.map_or(0, |s| {
            s.claims
                .iter()
                .filter(|c| c.label == ClaimLabel::Refuted)
                .count()
        }),
        violations: s.map_or(0, |s| s.steps.iter().map(|x| x.violations.len()).sum()),
        dropped: s.is_some_and(|s| s.drop_reason.is_some()),
    }
}

/// What the filter controls offer: the run's departments, stages and violation types, and its reward range.
#[derive(Clone, Debug, Serialize)]
pub struct Facets {
    pub consultations: usize,
    pub scored: usize,
    pub departments: Vec<String>,
    pub stages: Vec<Stage>,
    pub violations: Vec<String>,
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
}

impl Facets {
    pub fn of(all: &[Consultation]) -> Facets {
        let mut departments = BTreeSet::new();
        let mut stages = BTreeSet::new();
        let mut violations = BTreeSet::new();
        let (mut lo, mut hi) = (None::<f64>, None::<f64>);
        let mut scored = 0;
        for c in all {
            departments.insert(c.department.clone());
            stages.extend(c.stages.iter().copied());
            if let Some(s) = &c.scored {
                scored += 1;
                if s.reward.is_finite() {
                    lo = Some(lo.map_or(s.reward, |x| x.min(s.reward)));
                    hi = Some(hi.map_or(s.reward, |x| x.max(s.reward)));
                }
                for v in s.steps.iter().flat_map(|x| &x.violations) {
                    violations.insert(violation_type(v).to_string());
                }
            }
        }
        Facets {
            consultations: all.len(),
            scored,
            departments: departments.into_iter().collect(),
            stages: stages.into_iter().collect(),
            violations: violations.into_iter().collect(),
            min_reward: lo,
            max_reward: hi,
        }
    }
}
