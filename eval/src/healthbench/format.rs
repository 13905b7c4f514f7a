//! The HealthBench JSONL line (openai/simple-evals): `prompt` (a conversation of `{role, content}`), `rubrics`
//! (`{criterion, points, tags}`), `example_tags` and `prompt_id`. Other fields of the published files
//! (`ideal_completions_data`, `canary`, ...) are accepted and ignored.
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use spar_core::sample::{Role, Turn};
use std::path::Path;

/// One message of a HealthBench conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HbMessage {
    pub role: String,
    pub content: String,
}

/// One rubric criterion. Points are signed: negative criteria describe something the response must not do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HbRubric {
    pub criterion: String,
    pub points: f64,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One HealthBench example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HbExample {
    pub prompt_id: String,
    pub prompt: Vec<HbMessage>,
    pub rubrics: Vec<HbRubric>,
    #[serde(default)]
    pub example_tags: Vec<String>,
}

impl HbExample {
    /// The conversation as spar turns (`developer` messages count as system messages).
    pub fn conversation(&self) -> Vec<Turn> {
        self.prompt
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "assistant" => Role::Assistant,
                    "system" | "developer" => Role::System,
                    _ => Role::User,
                };
                Turn::new(role, m.content.clone())
            })
            .collect()
    }

    /// Themes of the example: its `theme:` tags, without the prefix.
    pub fn themes(&self) -> impl Iterator<Item = &str> {
        self.example_tags
            .iter()
            .filter_map(|t| t.strip_prefix("theme:"))
    }

    /// Checks what the scoring relies on; returns the offending field and why.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        if self.prompt_id.trim().is_empty() {
            return Err(("prompt_id".into(), "must not be empty".into()));
        }
        if self.prompt.is_empty() {
            return Err(("prompt".into(), "needs at least one message".into()));
        }
        for (i, m) in self.prompt.iter().enumerate() {
            if !["system", "developer", "user", "assistant"].contains(&m.role.as_str()) {
                return Err((
                    format!("prompt[{i}].role"),
                    format!("`{}` is not system, developer, user or assistant", m.role),
                ));
            }
        }
        if self.prompt.last().is_some_and(|m| m.role == "assistant") {
            return Err((
                format!("prompt[{}].role", self.prompt.len() - 1),
                "the conversation must end with a user turn for the policy to answer".into(),
            ));
        }
        if self.rubrics.is_empty() {
            return Err(("rubrics".into(), "needs at least one criterion".into()));
        }
        for (i, r) in self.rubrics.iter().enumerate() {
            if !r.points.is_finite() {
                return Err((
                    format!("rubrics[{i}].points"),
                    "must be a finite number".into(),
                ));
            }
            if r.criterion.trim().is_empty() {
                return Err((
                    format!("rubrics[{i}].criterion"),
                    "must not be empty".into(),
                ));
            }
        }
        // HealthBench's score divides by the positive points; without any the example has no score.
        if !self.rubrics.iter().any(|r| r.points > 0.0) {
            return Err((
                "rubrics".into(),
                "needs at least one criterion with positive points".into(),
            ));
        }
        Ok(())
    }
}

/// Reads a HealthBench JSONL file. Every bad line is reported (file, line, field), up to the first 20; a file with
/// any bad line is rejected, so a score never silently covers fewer examples than the file holds. Duplicate
/// `prompt_id`s are rejected too (results are keyed by it).
pub fn load_healthbench(path: &Path) -> Result<Vec<HbExample>> {
    let (examples, bad) = spar_core::fsio::read_jsonl::<HbExample>(path, None)?;
    let mut problems: Vec<(usize, String)> =
        bad.iter().map(|b| (b.line, b.error.to_string())).collect();
    // Line numbers of the good records: read_jsonl skips blank lines, so recover them from the text.
    let text = std::fs::read_to_string(path).map_err(|e| spar_core::Error::io(path, e))?;
    let bad_lines: std::collections::HashSet<usize> = bad.iter().map(|b| b.line).collect();
    let good_lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(i, l)| !l.trim().is_empty() && !bad_lines.contains(&(i + 1)))
        .map(|(i, _)| i + 1)
        .collect();
    let mut seen = std::collections::HashMap::new();
    for (ex, line) in examples.iter().zip(&good_lines) {
        if let Err((field, msg)) = ex.check() {
            problems.push((
                *line,
                format!("{}:{line}: field `{field}`: {msg}", path.display()),
            ));
        }
        if let Some(first) = seen.insert(ex.prompt_id.clone(), *line) {
            problems.push((
                *line,
                format!(
                    "{}:{line}: field `prompt_id`: `{}` already used on line {first}",
                    path.display(),
                    ex.prompt_id
                ),
            ));
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|(line, _)| *line);
        let n = problems.len();
        let shown: Vec<String> = problems.into_iter().take(20).map(|(_, m)| m).collect();
        bail!(
            "{n} problem(s) in HealthBench file {}:\n  {}",
            path.display(),
            shown.join("\n  ")
        );
    }
    if examples.is_empty() {
        bail!("{}: no HealthBench examples", path.display());
    }
    Ok(examples)
}
