//! Stage rewards G_k (method.md section 2), also the segmented pipeline's gate scores V_k: Inquiry coverage,
//! rank-aware DDX, weighted-F1 Lab, hierarchical ICD-10 Diag. Output that does not follow the stage grammar
//! (`spar_core::grammar`) scores 0 with `parsed: false`, which callers count.
use crate::text::{contains_phrase, is_question, normalize, sentences};
use serde_json::json;
use spar_core::case::{Diagnosis, TestItem};
use spar_core::grammar::{
    self, NamedDx, normalize_icd10, parse_ddx, parse_diagnosis, parse_tests, strip_think,
};
use spar_core::recipe::{DdxDiscount, StageRewardConfig};
use spar_core::sample::{Role, Turn};
use spar_core::traits::{StageScore, StageScorer};
use spar_core::{Case, Stage};
use spar_data::kb::KnowledgeBase;
use std::sync::Arc;

/// The built-in clinical stage scorer.
#[derive(Clone, Default)]
pub struct ClinicalStageScorer {
    pub cfg: StageRewardConfig,
    /// ICD-10-CM tree for chapter matches; without one, the chapter ranges of [`icd10_chapter`] are used.
    kb: Option<Arc<KnowledgeBase>>,
}

impl ClinicalStageScorer {
    pub fn new(cfg: StageRewardConfig) -> Self {
        ClinicalStageScorer { cfg, kb: None }
    }

    /// Uses the knowledge base's ICD-10-CM tree for chapter matches.
    pub fn with_knowledge_base(mut self, kb: Arc<KnowledgeBase>) -> Self {
        self.kb = Some(kb);
        self
    }

    fn chapter(&self, code: &str) -> Option<String> {
        match &self.kb {
            Some(kb) => kb
                .icd10_chapter(code)
                .map(String::from)
                .or_else(|| icd10_chapter(code).map(|c| c.to_string())),
            None => icd10_chapter(code).map(|c| c.to_string()),
        }
    }

    /// Hierarchical ICD-10 credit of `code` against the true `truth`: exact code, same 3-character category,
    /// same chapter, else 0.
    pub fn icd_credit(&self, code: &str, truth: &str) -> f64 {
        let (c, t) = (normalize_icd10(code), normalize_icd10(truth));
        if c == t {
            self.cfg.icd_exact
        } else if c.get(..3).is_some() && c.get(..3) == t.get(..3) {
            self.cfg.icd_category
        } else if self.chapter(&c).is_some() && self.chapter(&c) == self.chapter(&t) {
            self.cfg.icd_chapter
        } else {
            0.0
        }
    }

    /// Credit of a named diagnosis: the better of its code's hierarchical credit and a name match (the same
    /// name after normalisation earns exact credit; one name inside the other, category credit).
    pub fn dx_credit(&self, dx: &NamedDx, truth: &Diagnosis) -> f64 {
        let by_code = dx
            .icd10
            .as_deref()
            .map_or(0.0, |c| self.icd_credit(c, &truth.icd10));
        let (a, b) = (normalize(&dx.name), normalize(&truth.name));
        let by_name = if a == b {
            self.cfg.icd_exact
        } else if !a.is_empty() && (contains_phrase(&b, &a) || contains_phrase(&a, &b)) {
            self.cfg.icd_category
        } else {
            0.0
        };
        by_code.max(by_name)
    }

    fn discount(&self, rank: usize) -> f64 {
        match self.cfg.ddx_discount {
            DdxDiscount::Reciprocal => 1.0 / rank as f64,
            DdxDiscount::Log => 1.0 / ((rank + 1) as f64).log2(),
        }
    }

    fn inquiry(&self, case: &Case, replies: &[String], dialogue: &[Turn]) -> StageScore {
        let mut questions: Vec<String> = Vec::new();
        let doctor = dialogue
            .iter()
            .filter(|t| t.role == Role::Assistant)
            .map(|t| t.text.as_str())
            .chain(replies.iter().map(String::as_str));
        for text in doctor {
            questions.extend(
                sentences(&strip_think(text))
                    .into_iter()
                    .filter(|s| is_question(s)),
            );
        }
        let asked = |kw: &[String]| {
            questions
                .iter()
                .any(|q| kw.iter().any(|k| contains_phrase(q, k)))
        };
        let (mut got, mut total) = (0.0, 0.0);
        let (mut covered, mut missed) = (Vec::new(), Vec::new());
        let items = case
            .inquiry_items
            .iter()
            .map(|i| (&i.id, &i.keywords, i.weight as f64));
        let flags = case.red_flags.iter().map(|f| {
            (
                &f.id,
                &f.keywords,
                f.weight as f64 * self.cfg.red_flag_weight,
            )
        });
        for (id, kw, w) in items.chain(flags) {
            total += w;
            if asked(kw) {
                got += w;
                covered.push(id.clone());
            } else {
                missed.push(id.clone());
            }
        }
        let score = if total > 0.0 { got / total } else { 0.0 };
        StageScore {
            score,
            parsed: true,
            details: json!({"covered": covered, "missed": missed}),
        }
    }

    fn ddx(&self, case: &Case, replies: &[String]) -> StageScore {
        let Some(list) = last_parse(replies, parse_ddx) else {
            return unparsed(grammar::DDX_TAG);
        };
        let mut best = (0.0, None);
        for (r, dx) in list.iter().take(self.cfg.ddx_max_len).enumerate() {
            let s = self.dx_credit(dx, &case.diagnosis) * self.discount(r + 1);
            if s > best.0 {
                best = (s, Some(r + 1));
            }
        }
        StageScore {
            score: best.0,
            parsed: true,
            details: json!({"rank": best.1, "listed": list.len()}),
        }
    }

    fn lab(&self, case: &Case, replies: &[String]) -> StageScore {
        let Some(recs) = last_parse(replies, parse_tests) else {
            return unparsed(grammar::TESTS_TAG);
        };
        let gold: Vec<(&TestItem, f64)> = case
            .tests
            .essential
            .iter()
            .map(|t| (t, self.cfg.lab_essential_weight))
            .chain(
                case.tests
                    .optional
                    .iter()
                    .map(|t| (t, self.cfg.lab_optional_weight)),
            )
            .collect();
        let mut used = vec![false; gold.len()];
        let (mut tp, mut extra, mut extras) = (0.0, 0.0, Vec::new());
        for rec in &recs {
            match gold
                .iter()
                .enumerate()
                .find(|(g, (t, _))| !used[*g] && test_matches(rec, t))
            {
                Some((g, (_, w))) => {
                    used[g] = true;
                    tp += w;
                }
                None => {
                    extra += self.cfg.lab_extra_weight;
                    extras.push(rec.clone());
                }
            }
        }
        let gold_total: f64 = gold.iter().map(|(_, w)| w).sum();
        let precision = if tp + extra > 0.0 {
            tp / (tp + extra)
        } else {
            0.0
        };
        let recall = if gold_total > 0.0 {
            tp / gold_total
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        let missed: Vec<&str> = gold
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|((t, _), _)| t.name.as_str())
            .collect();
        StageScore {
            score: f1,
            parsed: true,
            details: json!({"precision": precision, "recall": recall, "extra": extras, "missed": missed}),
        }
    }

    fn diag(&self, case: &Case, replies: &[String]) -> StageScore {
        let Some(dx) = last_parse(replies, parse_diagnosis) else {
            return unparsed(grammar::DIAGNOSIS_TAG);
        };
        let score = self.dx_credit(&dx, &case.diagnosis);
        StageScore {
            score,
            parsed: true,
            details: json!({"named": dx.name, "icd10": dx.icd10}),
        }
    }
}

impl StageScorer for ClinicalStageScorer {
    fn score(
        &self,
        case: &Case,
        stage: Stage,
        doctor_replies: &[String],
        dialogue: &[Turn],
    ) -> StageScore {
        match stage {
            Stage::Inquiry => self.inquiry(case, doctor_replies, dialogue),
            Stage::Ddx => self.ddx(case, doctor_replies),
            Stage::Lab => self.lab(case, doctor_replies),
            Stage::Diag => self.diag(case, doctor_replies),
        }
    }
}

/// The stage output of the latest reply that parses (a doctor may restate its answer).
fn last_parse<T, E>(replies: &[String], parse: impl Fn(&str) -> Result<T, E>) -> Option<T> {
    replies.iter().rev().find_map(|r| parse(r).ok())
}

fn unparsed(tag: &str) -> StageScore {
    StageScore {
        score: 0.0,
        parsed: false,
        details: json!({"error": format!("no parseable {} block", grammar::open_tag(tag))}),
    }
}

fn test_matches(rec: &str, t: &TestItem) -> bool {
    std::iter::once(&t.name).chain(&t.aliases).any(|n| {
        let (a, b) = (normalize(rec), normalize(n));
        a == b || contains_phrase(&a, &b)
    })
}

/// ICD-10 chapter (1-22) of a dotted or undotted code, by the ICD-10-CM chapter ranges (used when no
/// knowledge base is loaded; the knowledge base's tree is authoritative).
pub fn icd10_chapter(code: &str) -> Option<u8> {
    let c = normalize_icd10(code);
    let letter = c.chars().next()?;
    let num: u32 = c.get(1..3)?.parse().ok()?;
    Some(match (letter, num) {
        ('A' | 'B', _) => 1,
        ('C', _) | ('D', 0..=49) => 2,
        ('D', _) => 3,
        ('E', _) => 4,
        ('F', _) => 5,
        ('G', _) => 6,
        ('H', 0..=59) => 7,
        ('H', _) => 8,
        ('I', _) => 9,
        ('J', _) => 10,
        ('K', _) => 11,
        ('L', _) => 12,
        ('M', _) => 13,
        ('N', _) => 14,
        ('O', _) => 15,
        ('P', _) => 16,
        ('Q', _) => 17,
        ('R', _) => 18,
        ('S' | 'T', _) => 19,
        ('V' | 'W' | 'X' | 'Y', _) => 20,
        ('Z', _) => 21,
        ('U', _) => 22,
        _ => return None,
    })
}
