//! The patient case: what the simulator answers from, what stage rewards and rubrics score against.
//! JSONL holds one `Case` per line; parquet holds the same fields (see `docs/data.md`).
use crate::grammar::normalize_icd10;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique, stable id (e.g. `cardio-0007`).
    pub id: String,
    /// Clinical department (cardiology, neurology, ...): per-department evaluation breakdown.
    pub department: String,
    pub demographics: Demographics,
    pub chief_complaint: String,
    /// History of present illness, in the patient's own framing.
    pub hpi: String,
    #[serde(default)]
    pub past_history: Vec<String>,
    #[serde(default)]
    pub medications: Vec<String>,
    #[serde(default)]
    pub allergies: Vec<String>,
    #[serde(default)]
    pub family_history: Vec<String>,
    #[serde(default)]
    pub social_history: Vec<String>,
    /// Examination findings, revealed only when the doctor examines / asks for them.
    #[serde(default)]
    pub exam_findings: Vec<String>,
    /// History items a good doctor asks about, with importance (the inquiry checklist).
    pub inquiry_items: Vec<InquiryItem>,
    /// Red flags to screen for; `present` says whether this patient has it.
    #[serde(default)]
    pub red_flags: Vec<RedFlag>,
    pub diagnosis: Diagnosis,
    /// Plausible alternatives (the reference differential, most likely first, diagnosis excluded).
    #[serde(default)]
    pub differential: Vec<Diagnosis>,
    pub tests: Tests,
    /// HealthBench-style rubric items for whole-consultation scoring (Eq. 1).
    #[serde(default)]
    pub rubric: Vec<RubricItem>,
    /// Where the case came from (generator name and version, source packages). Never real patient data.
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Female,
    Male,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demographics {
    pub age: u32,
    pub sex: Sex,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InquiryItem {
    pub id: String,
    /// Short topic ("onset", "fever", "smoking").
    pub topic: String,
    /// Words or phrases in a doctor's question that mean it asks about this item (lower case).
    pub keywords: Vec<String>,
    /// What the patient says when asked.
    pub answer: String,
    /// Importance weight (1 = routine, 2 = important, 3 = critical).
    pub weight: f32,
    #[serde(default)]
    pub critical: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedFlag {
    pub id: String,
    pub description: String,
    pub keywords: Vec<String>,
    /// Whether this patient has the red flag (the answer is then alarming).
    pub present: bool,
    pub answer: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    pub name: String,
    /// ICD-10-CM code, dotted ("J18.9").
    pub icd10: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tests {
    pub essential: Vec<TestItem>,
    #[serde(default)]
    pub optional: Vec<TestItem>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestItem {
    pub name: String,
    /// Other names that count as the same test ("CXR" for "Chest X-ray"), lower case.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// LOINC code where one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loinc: Option<String>,
    /// What the test showed for this patient, where the source records it (imported OSCE cases: "Acetylcholine
    /// receptor antibodies: present (elevated)"); the shipped synthetic cases have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// A rubric item, HealthBench-compatible (`criterion` + integer `points` in [-10, 10]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RubricItem {
    pub criterion: String,
    pub points: i32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Offline rule for the rule-based judge; HealthBench items have none and need an LLM judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleCheck>,
}

/// A keyword / regex rule: the item is met when the judged text matches (case-insensitive).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCheck {
    /// Met if any of these phrases occurs.
    #[serde(default)]
    pub any: Vec<String>,
    /// Met only if all of these occur (combined with `any` by AND when both are given).
    #[serde(default)]
    pub all: Vec<String>,
    /// A regular expression that must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Which text is checked: the doctor's whole side of the dialogue (default) or one stage's replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::Stage>,
}

/// One validation problem, with the dotted path of the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub msg: String,
}

static ICD10: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$").unwrap());

/// True for a syntactically valid dotted ICD-10-CM code.
pub fn is_icd10(code: &str) -> bool {
    ICD10.is_match(code)
}

impl Case {
    /// Checks the case; returns every problem found (field path + message), not just the first.
    pub fn validate(&self) -> Vec<FieldProblem> {
        let mut p = Vec::new();
        let mut bad = |field: String, msg: &str| {
            p.push(FieldProblem {
                field,
                msg: msg.to_string(),
            })
        };
        if self.id.trim().is_empty() {
            bad("id".into(), "must not be empty");
        }
        if self.department.trim().is_empty() {
            bad("department".into(), "must not be empty");
        }
        if self.demographics.age > 120 {
            bad("demographics.age".into(), "must be <= 120");
        }
        if self.chief_complaint.trim().is_empty() {
            bad("chief_complaint".into(), "must not be empty");
        }
        if self.inquiry_items.is_empty() {
            bad("inquiry_items".into(), "needs at least one item");
        }
        for (i, it) in self.inquiry_items.iter().enumerate() {
            if it.keywords.is_empty() {
                bad(
                    format!("inquiry_items[{i}].keywords"),
                    "needs at least one keyword",
                );
            }
            if !(it.weight > 0.0 && it.weight.is_finite()) {
                bad(
                    format!("inquiry_items[{i}].weight"),
                    "must be a positive number",
                );
            }
        }
        for (i, r) in self.red_flags.iter().enumerate() {
            if r.keywords.is_empty() {
                bad(
                    format!("red_flags[{i}].keywords"),
                    "needs at least one keyword",
                );
            }
        }
        let mut code = |field: String, c: &str| {
            if !is_icd10(c) || normalize_icd10(c) != c {
                p.push(FieldProblem {
                    field,
                    msg: format!("`{c}` is not a dotted ICD-10 code like J18.9"),
                });
            }
        };
        code("diagnosis.icd10".into(), &self.diagnosis.icd10);
        for (i, d) in self.differential.iter().enumerate() {
            code(format!("differential[{i}].icd10"), &d.icd10);
        }
        if self.tests.essential.is_empty() {
            p.push(FieldProblem {
                field: "tests.essential".into(),
                msg: "needs at least one test".into(),
            });
        }
        for (i, r) in self.rubric.iter().enumerate() {
            if !(-10..=10).contains(&r.points) || r.points == 0 {
                p.push(FieldProblem {
                    field: format!("rubric[{i}].points"),
                    msg: format!("{} is not a non-zero integer in [-10, 10]", r.points),
                });
            }
            if let Some(Some(re)) = r.rule.as_ref().map(|r| r.regex.as_ref())
                && let Err(e) = Regex::new(re)
            {
                p.push(FieldProblem {
                    field: format!("rubric[{i}].rule.regex"),
                    msg: e.to_string(),
                });
            }
        }
        p
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn tiny_case() -> Case {
        Case {
            id: "resp-0001".into(),
            department: "respiratory".into(),
            demographics: Demographics {
                age: 54,
                sex: Sex::Male,
            },
            chief_complaint: "cough and fever for 3 days".into(),
            hpi: "Productive cough with yellow sputum, fever up to 39 C.".into(),
            past_history: vec![],
            medications: vec![],
            allergies: vec!["penicillin".into()],
            family_history: vec![],
            social_history: vec!["smokes 10 cigarettes a day".into()],
            exam_findings: vec!["crackles right lower lobe".into()],
            inquiry_items: vec![InquiryItem {
                id: "fever".into(),
                topic: "fever".into(),
                keywords: vec!["fever".into(), "temperature".into()],
                answer: "Yes, up to 39 degrees.".into(),
                weight: 2.0,
                critical: false,
            }],
            red_flags: vec![],
            diagnosis: Diagnosis {
                name: "Pneumonia, unspecified organism".into(),
                icd10: "J18.9".into(),
            },
            differential: vec![Diagnosis {
                name: "Acute bronchitis".into(),
                icd10: "J20.9".into(),
            }],
            tests: Tests {
                essential: vec![TestItem {
                    name: "Chest X-ray".into(),
                    aliases: vec!["cxr".into()],
                    loinc: None,
                    result: None,
                }],
                optional: vec![],
            },
            rubric: vec![RubricItem {
                criterion: "Asks about penicillin allergy".into(),
                points: 5,
                tags: vec![],
                rule: None,
            }],
            source: "test".into(),
        }
    }

    #[test]
    fn valid_case_has_no_problems() {
        assert!(tiny_case().validate().is_empty());
    }

    #[test]
    fn problems_name_fields() {
        let mut c = tiny_case();
        c.diagnosis.icd10 = "j18.9".into();
        c.rubric[0].points = 11;
        let fields: Vec<String> = c.validate().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, vec!["diagnosis.icd10", "rubric[0].points"]);
    }

    #[test]
    fn healthbench_items_parse_as_is() {
        let r: RubricItem = serde_json::from_str(
            r#"{"criterion":"Advises emergency care","points":-7,"tags":["axis:accuracy"]}"#,
        )
        .unwrap();
        assert_eq!(r.points, -7);
    }
}
