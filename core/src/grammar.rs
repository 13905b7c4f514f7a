//! The stage output grammar: how the doctor marks the end of inquiry, the differential, the tests and the final
//! diagnosis. Defined once here; the scripted expert renders it, the stage rewards parse it.
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
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// Marker the doctor emits when history taking is complete and it is ready to assess.
pub const INQUIRY_DONE: &str = "<ready/>";

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
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
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
    let list: Vec<NamedDx> = items(block(&text, "ddx")?).filter_map(parse_dx).collect();
    if list.is_empty() {
        Err(GrammarError::Empty("ddx"))
    } else {
        Ok(list)
    }
}

/// Parses the recommended tests, in the order given.
pub fn parse_tests(text: &str) -> Result<Vec<String>, GrammarError> {
    let text = strip_think(text);
    let list: Vec<String> = items(block(&text, "tests")?)
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
        Err(GrammarError::Empty("tests"))
    } else {
        Ok(list)
    }
}

/// Parses the final diagnosis.
pub fn parse_diagnosis(text: &str) -> Result<NamedDx, GrammarError> {
    let text = strip_think(text);
    parse_dx(
        block(&text, "diagnosis")?
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .as_str(),
    )
    .ok_or(GrammarError::Empty("diagnosis"))
}

fn render_dx(d: &NamedDx) -> String {
    match &d.icd10 {
        Some(c) => format!("{} ({})", d.name, c),
        None => d.name.clone(),
    }
}

pub fn render_ddx(list: &[NamedDx]) -> String {
    let lines: Vec<String> = list
        .iter()
        .enumerate()
        .map(|(i, d)| format!("{}. {}", i + 1, render_dx(d)))
        .collect();
    format!("<ddx>\n{}\n</ddx>", lines.join("\n"))
}

pub fn render_tests(list: &[String]) -> String {
    let lines: Vec<String> = list.iter().map(|t| format!("- {t}")).collect();
    format!("<tests>\n{}\n</tests>", lines.join("\n"))
}

pub fn render_diagnosis(d: &NamedDx) -> String {
    format!("<diagnosis>{}</diagnosis>", render_dx(d))
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
    fn inquiry_marker_ignores_thinking() {
        assert!(inquiry_done("Thank you. <READY/>"));
        assert!(!inquiry_done(
            "<think>I'll say <ready/> later</think>Any fever?"
        ));
        assert_eq!(normalize_icd10(" i21.4 "), "I21.4");
        assert_eq!(normalize_icd10("R51"), "R51");
    }
}
