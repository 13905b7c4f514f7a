//! The stage output grammar: how the doctor marks the end of inquiry, the differential, the tests and the final
//! diagnosis. Defined once here: the scripted expert renders it, the stage rewards parse it, and [`completes`] /
//! [`ends_consultation`] are the one rule by which the rollout environment (training and `spar eval` alike) moves
//! to the next stage or ends the consultation. Other crates spell the tags through [`stage_tag`] and the
//! `*_TAG` constants, never as literals.
//!
//! ```text
//! inquiry done   <ready/>                      (anywhere in the reply)
//! differential   <ddx>
//!                1. Community-acquired pneumonia (J18.9)
//!                2. Acute bronchitis (J20.9)
//!                </ddx>
//! tests          <tests>
//!                - Chest X-ray
//!                - Complete blood count
//!                </tests>
//! diagnosis      <diagnosis>Community-acquired pneumonia (J18.9)</diagnosis>
//! ```
//! Tags are case-insensitive; text outside them is free; `<think>...</think>` is ignored. The ICD-10 code in
//! parentheses is optional in `<ddx>` and `<diagnosis>`; list items may start with `1.`, `1)`, `-`, `*` or nothing.
use crate::Stage;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// Marker the doctor emits when history taking is complete and it is ready to assess.
pub const INQUIRY_DONE: &str = "<ready/>";
/// Tag of the ranked differential block, `<ddx>...</ddx>` (the DDX stage's output).
pub const DDX_TAG: &str = "ddx";
/// Tag of the recommended tests block, `<tests>...</tests>` (the Lab stage's output).
pub const TESTS_TAG: &str = "tests";
/// Tag of the final diagnosis block, `<diagnosis>...</diagnosis>` (the Diag stage's output).
pub const DIAGNOSIS_TAG: &str = "diagnosis";
/// Every block tag of the grammar, in stage order.
pub const BLOCK_TAGS: [&str; 3] = [DDX_TAG, TESTS_TAG, DIAGNOSIS_TAG];

/// The block tag `stage`'s output is written in; None for Inquiry, which ends with [`INQUIRY_DONE`] instead.
pub fn stage_tag(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Inquiry => None,
        Stage::Ddx => Some(DDX_TAG),
        Stage::Lab => Some(TESTS_TAG),
        Stage::Diag => Some(DIAGNOSIS_TAG),
    }
}

/// The opening form of a block tag: `open_tag(DDX_TAG)` is `<ddx>`.
pub fn open_tag(tag: &str) -> String {
    format!("<{tag}>")
}

/// The closing form of a block tag: `close_tag(DDX_TAG)` is `</ddx>`.
pub fn close_tag(tag: &str) -> String {
    format!("</{tag}>")
}

/// True when `reply` completes `stage`: Inquiry by saying [`INQUIRY_DONE`], every later stage by a block of its
/// tag that parses. The one rule the rollout environment (training and evaluation alike) and the scripted doctors
/// follow to move to the next stage.
pub fn completes(stage: Stage, reply: &str) -> bool {
    match stage {
        Stage::Inquiry => inquiry_done(reply),
        Stage::Ddx => parse_ddx(reply).is_ok(),
        Stage::Lab => parse_tests(reply).is_ok(),
        Stage::Diag => parse_diagnosis(reply).is_ok(),
    }
}

/// True when `reply` gives the final diagnosis, which ends the consultation in whatever stage it comes (the
/// stages not reached are not played), and which a simulated patient answers with goodbye.
pub fn ends_consultation(reply: &str) -> bool {
    completes(Stage::Diag, reply)
}

/// A diagnosis as named by the doctor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedDx {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icd10: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("no <{0}> block found")]
    Missing(&'static str),
    #[error("<{0}> block is empty")]
    Empty(&'static str),
}

static THINK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)<think>.*?(</think>|$)").unwrap());
static CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(.*?)\s*[\(\[]\s*(?:ICD-?10(?:-CM)?\s*[:：]?\s*)?([A-Za-z][0-9][0-9A-Za-z](?:\.?[0-9A-Za-z]{1,4})?)\s*[\)\]]\s*$").unwrap()
});
static BULLET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*(?:\d+\s*[.)]|[-*•])\s*").unwrap());

/// Removes `<think>` blocks (an unclosed one runs to the end): thinking is neither parsed nor fact-checked.
pub fn strip_think(text: &str) -> String {
    THINK.replace_all(text, "").into_owned()
}

/// True when the reply says history taking is complete.
pub fn inquiry_done(text: &str) -> bool {
    strip_think(text)
        .to_ascii_lowercase()
        .contains(INQUIRY_DONE)
}

/// Canonical form of an ICD-10 code: upper case, a dot after the third character ("j189" -> "J18.9").
pub fn normalize_icd10(code: &str) -> String {
    let c: String = code
        .trim()
        .chars()
        .filter(|c| *c != '.' && !c.is_whitespace())
        .collect::<String>()
        .to_uppercase();
    if c.len() > 3 {
        format!("{}.{}", &c[..3], &c[3..])
    } else {
        c
    }
}

fn block<'a>(text: &'a str, tag: &'static str) -> Result<&'a str, GrammarError> {
    let lower = text.to_ascii_lowercase();
    let open = open_tag(tag);
    let close = close_tag(tag);
    let start = lower.find(&open).ok_or(GrammarError::Missing(tag))? + open.len();
    let end = lower[start..]
        .find(&close)
        .map(|e| start + e)
        .unwrap_or(text.len());
    Ok(&text[start..end])
}

fn parse_dx(item: &str) -> Option<NamedDx> {
    let item = BULLET.replace(item.trim(), "");
    let item = item.trim().trim_end_matches(['.', ';']).trim();
    if item.is_empty() {
        return None;
    }
    Some(match CODE.captures(item) {
        Some(c) if !c[1].trim().is_empty() => NamedDx {
            name: c[1].trim().to_string(),
            icd10: Some(normalize_icd10(&c[2])),
        },
        _ => NamedDx {
            name: item.to_string(),
            icd10: None,
        },
    })
}

fn items(body: &str) -> impl Iterator<Item = &str> {
    body.lines()
        .flat_map(|l| l.split(';'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

/// Parses the ranked differential (most likely first).
pub fn parse_ddx(text: &str) -> Result<Vec<NamedDx>, GrammarError> {
    let text = strip_think(text);
    let list: Vec<NamedDx> = items(block(&text, DDX_TAG)?).filter_map(parse_dx).collect();
    if list.is_empty() {
        Err(GrammarError::Empty(DDX_TAG))
    } else {
        Ok(list)
    }
}

/// Parses the recommended tests, in the order given.
pub fn parse_tests(text: &str) -> Result<Vec<String>, GrammarError> {
    let text = strip_think(text);
    let list: Vec<String> = items(block(&text, TESTS_TAG)?)
        .map(|l| {
            BULLET
                .replace(l, "")
                .trim()
                .trim_end_matches('.')
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    if list.is_empty() {
        Err(GrammarError::Empty(TESTS_TAG))
    } else {
        Ok(list)
    }
}

/// Parses the final diagnosis.
pub fn parse_diagnosis(text: &str) -> Result<NamedDx, GrammarError> {
    let text = strip_think(text);
    parse_dx(
        block(&text, DIAGNOSIS_TAG)?
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
    )
    .ok_or(GrammarError::Empty(DIAGNOSIS_TAG))
}

fn render_dx(d: &NamedDx) -> String {
    match &d.icd10 {
        Some(c) => format!("{} ({})", d.name, c),
        None => d.name.clone(),
    }
}

/// The differential in the grammar, one numbered line per diagnosis.
pub fn render_ddx(list: &[NamedDx]) -> String {
    let lines: Vec<String> = list
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{}. {}", i + 1, render_dx(d)))
        .collect();
    format!(
        "{}\n{}\n{}",
        open_tag(DDX_TAG),
        lines.join("\n"),
        close_tag(DDX_TAG)
    )
}

/// The recommended tests in the grammar, one `- ` line per test.
pub fn render_tests(list: &[String]) -> String {
    let lines: Vec<String> = list.iter().map(|t| format!("- {t}")).collect();
    format!(
        "{}\n{}\n{}",
        open_tag(TESTS_TAG),
        lines.join("\n"),
        close_tag(TESTS_TAG)
    )
}

/// The final diagnosis in the grammar.
pub fn render_diagnosis(d: &NamedDx) -> String {
    format!(
        "{}{}{}",
        open_tag(DIAGNOSIS_TAG),
        render_dx(d),
        close_tag(DIAGNOSIS_TAG)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddx_round_trip_and_variants() {
        let l = vec![
            NamedDx {
                name: "Community-acquired pneumonia".into(),
                icd10: Some("J18.9".into()),
            },
            NamedDx {
                name: "Acute bronchitis".into(),
                icd10: None,
            },
        ];
        assert_eq!(parse_ddx(&render_ddx(&l)).unwrap(), l);
        let messy = "<think>maybe <ddx>1. wrong</ddx></think>Sure. <DDX>1) Migraine (ICD-10: g43909); * Tension headache [G44.2]</ddx>";
        let got = parse_ddx(messy).unwrap();
        assert_eq!(
            got[0],
            NamedDx {
                name: "Migraine".into(),
                icd10: Some("G43.909".into())
            }
        );
        assert_eq!(got[1].icd10.as_deref(), Some("G44.2"));
    }

    #[test]
    fn tests_and_diagnosis() {
        let t = vec!["Chest X-ray".to_string(), "CBC".to_string()];
        assert_eq!(parse_tests(&render_tests(&t)).unwrap(), t);
        let d =
            parse_diagnosis("Final: <diagnosis>\nType 2 diabetes mellitus (E11.9)\n</diagnosis>")
                .unwrap();
        assert_eq!(d.icd10.as_deref(), Some("E11.9"));
        assert_eq!(
            parse_diagnosis("no tags"),
            Err(GrammarError::Missing("diagnosis"))
        );
        assert_eq!(
            parse_tests("<tests>\n</tests>"),
            Err(GrammarError::Empty("tests"))
        );
    }

    #[test]
    fn completes_follows_each_stage_grammar() {
        let ddx = render_ddx(&[NamedDx {
            name: "Migraine".into(),
            icd10: Some("G43.909".into()),
        }]);
        let tests = render_tests(&["MRI brain".to_string()]);
        let dx = render_diagnosis(&NamedDx {
            name: "Migraine".into(),
            icd10: None,
        });
        let replies = ["Thank you. <ready/>", &ddx, &tests, &dx];
        for (i, stage) in Stage::ALL.into_iter().enumerate() {
            for (j, reply) in replies.iter().enumerate() {
                assert_eq!(completes(stage, reply), i == j, "{stage} <- {reply}");
            }
            // Thinking never completes a stage; an empty block does not either.
            assert!(!completes(
                stage,
                &format!("<think>{}</think>Hmm.", replies[i])
            ));
            if let Some(tag) = stage_tag(stage) {
                let empty = format!("{}\n{}", open_tag(tag), close_tag(tag));
                assert!(!completes(stage, &empty), "{stage}: {empty}");
            }
        }
        // Only a diagnosis ends the consultation, in any stage.
        assert!(ends_consultation(&format!("Lab first. {dx}")));
        assert!(!ends_consultation(&ddx) && !ends_consultation(&tests));
        assert!(!ends_consultation(replies[0]));
    }

    #[test]
    fn stage_tags_are_the_ones_the_instructions_ask_for() {
        assert_eq!(stage_tag(Stage::Inquiry), None);
        let tags: Vec<&str> = Stage::ALL.into_iter().filter_map(stage_tag).collect();
        assert_eq!(tags, BLOCK_TAGS);
        for stage in Stage::ALL {
            let p = stage.default_instruction();
            match stage_tag(stage) {
                Some(tag) => {
                    assert!(
                        p.contains(&open_tag(tag)) && p.contains(&close_tag(tag)),
                        "{p}"
                    )
                }
                None => assert!(p.is_empty()),
            }
        }
        assert!(crate::recipe::DEFAULT_SYSTEM_PROMPT.contains(INQUIRY_DONE));
    }

    #[test]
    fn inquiry_marker_ignores_thinking() {
        assert!(inquiry_done("Thank you. <READY/>"));
        assert!(!inquiry_done(
            "<think>I'll say <ready/> later</think>Any fever?"
        ));
        assert_eq!(normalize_icd10(" i21.4 "), "I21.4");
        assert_eq!(normalize_icd10("R51"), "R51");
    }
}
