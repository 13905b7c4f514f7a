//! `spar factcheck FILE|-`: checks the medical claims of a text on its own (plain text or markdown, or a JSONL
//! file of samples / transcripts / `{"text": ...}` records) with the recipe's `[rewards.fact]` chain: the claim
//! extractor, the verifier (knowledge base, LLM, or the knowledge base then an LLM) and the claim cache. It
//! prints every claim with its span, label, evidence and source, and the hallucination rate H (Refuted 1,
//! Uncertain 0.5, Supported 0, averaged over claims), as markdown, JSON or HTML.
//!
//! Exit codes for scripts: 0 done; 1 when `--fail-on` is met (a Refuted claim, or with `uncertain` any claim
//! not Supported); 2 on any error (unreadable input, a malformed line, a verifier endpoint that fails).
//! Text that goes to an endpoint (an LLM extractor or verifier, an embeddings encoder) is PHI-redacted first,
//! whatever the endpoint's host; the report then shows the redacted text and its spans. A report written with
//! `--out` gets its audit manifest next to it (`<out>.audit.json`, docs/privacy.md).
use super::common::RecipeArgs;
use anyhow::{Context, bail};
use spar_core::recipe::{EncoderKind, ExtractorKind, VerifierKind};
use spar_core::sample::ClaimLabel;
use spar_rewards::fact::extract::extract_claim_spans;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Report formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Md,
    Json,
    Html,
}

/// When the exit code is 1.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Any claim Refuted.
    Refuted,
    /// Any claim Refuted or Uncertain.
    Uncertain,
}

#[derive(clap::Args)]
pub struct Args {
    /// The text to check: a file (`.jsonl`: one sample, transcript or `{"text": ...}` per line; anything else:
    /// plain text or markdown), or `-` for standard input.
    pub input: String,
    /// `--recipe` (its `[rewards.fact]` chain and `[data] knowledge_base`; without one: the rule extractor and
    /// the shipped knowledge base), `--set`.
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Report format.
    #[arg(long, value_enum, default_value = "md")]
    pub format: Format,
    /// Write the report here (atomically) instead of standard output; a SQLite claim cache goes next to it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit with 1 when a claim is Refuted (`refuted`) or not Supported (`uncertain`).
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
    /// Read standard input / the file as JSONL (`jsonl`) or as one text (`text`); default: by the file's
    /// extension, and for `-` by whether every line is a JSON object.
    #[arg(long, value_parser = ["text", "jsonl"])]
    pub input_format: Option<String>,
}

/// One text to check and its name in the report.
struct Document {
    id: String,
    text: String,
}

/// One checked claim as reported.
#[derive(serde::Serialize)]
struct ClaimOut {
    text: String,
    /// Byte range in the document's (redacted) text, when the claim could be located.
    start: Option<usize>,
    end: Option<usize>,
    quote: Option<String>,
    label: ClaimLabel,
    evidence: String,
    source: Option<String>,
}

#[derive(serde::Serialize)]
struct DocOut {
    id: String,
    text: String,
    h: Option<f64>,
    claims: Vec<ClaimOut>,
}

#[derive(serde::Serialize)]
struct Report {
    input: String,
    verifier: String,
    extractor: String,
    redacted: bool,
    claims: usize,
    supported: usize,
    refuted: usize,
    uncertain: usize,
    /// Hallucination rate over every claim (None without claims).
    h: Option<f64>,
    cache_hits: usize,
    documents: Vec<DocOut>,
}

/// Runs the command and returns the process exit code (errors are printed here, code 2).
pub fn run(args: Args) -> i32 {
    let result = match &args.out {
        Some(out) => audited(&args, out),
        None => check(&args),
    };
    match result {
        Ok(report) => {
            let fail = match args.fail_on {
                None => false,
                Some(FailOn::Refuted) => report.refuted > 0,
                Some(FailOn::Uncertain) => report.refuted + report.uncertain > 0,
            };
            i32::from(fail)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// The folder a report file goes to (the SQLite claim cache's home).
fn out_folder(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`check`] with an audit manifest next to the report (`<out>.audit.json`), as every command that writes a file
/// keeps one: the input, the knowledge base's files, the recipe, the claim cache.
fn audited(args: &Args, out: &Path) -> anyhow::Result<Report> {
    let builder = args.recipe.builder()?;
    let recipe = builder.recipe();
    let mut data = Vec::new();
    if args.input != "-" {
        data.push(PathBuf::from(&args.input));
    }
    if let Some(kb) = recipe.data.as_ref().and_then(|d| d.knowledge_base.as_ref()) {
        data.extend(super::audit::files_of(&recipe.resolve(kb)));
    }
    let spec = spar_data::audit::AuditSpec::for_file("spar factcheck", out)
        .with_recipe(super::audit::recipe_toml(recipe))
        .with_data(data)
        .with_claim_cache(builder.recipe_claim_cache(Some(&out_folder(out))));
    super::audit::run_audited(spec, || check(args))
}

fn check(args: &Args) -> anyhow::Result<Report> {
    let (name, raw) = read_input(&args.input)?;
    let jsonl = match args.input_format.as_deref() {
        Some("jsonl") => true,
        Some(_) => false,
        None if args.input == "-" => {
            let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
            !lines.is_empty() && lines.iter().all(|l| l.trim_start().starts_with('{'))
        }
        None => Path::new(&args.input)
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "ndjson"),
    };
    let mut docs = if jsonl {
        documents_from_jsonl(&name, &raw)?
    } else {
        vec![Document {
            id: name.clone(),
            text: raw,
        }]
    };
    let builder = args.recipe.builder()?;
    let fact = builder.recipe().rewards.clone().unwrap_or_default().fact;
    // Text leaves the machine only redacted; the offline chain sees it as written.
    let redacted = fact.extractor == ExtractorKind::Llm
        || matches!(fact.verifier, VerifierKind::Llm | VerifierKind::KbLlm)
        || fact.encoder == EncoderKind::Openai;
    if redacted {
        for d in &mut docs {
            d.text = spar_core::phi::redact(&d.text);
        }
    }
    let out_dir = args.out.as_deref().map(out_folder);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let checker = builder.fact_checker(out_dir.as_deref()).await?;
        let mut report = Report {
            input: name.clone(),
            verifier: checker.verifier.id(),
            extractor: checker.extractor.id(),
            redacted,
            claims: 0,
            supported: 0,
            refuted: 0,
            uncertain: 0,
            h: None,
            cache_hits: 0,
            documents: Vec::new(),
        };
        let mut weight = 0.0;
        for d in &docs {
            let outcome = checker
                .check(&d.text, &[])
                .await
                .with_context(|| format!("{}: checking {}", name, d.id))?;
            if outcome.failures > 0 {
                bail!(
                    "{}: {}: {} claim(s) could not be verified: {}",
                    name,
                    d.id,
                    outcome.failures,
                    outcome.first_failure.as_deref().unwrap_or("-")
                );
            }
            report.cache_hits += outcome.cache_hits;
            let spans = extract_claim_spans(&d.text);
            let mut claims = Vec::new();
            let mut doc_weight = 0.0;
            for (i, c) in outcome.claims.iter().enumerate() {
                let span = spans
                    .iter()
                    .find(|s| s.text == c.text)
                    .map(|s| (s.start, s.end))
                    .or_else(|| d.text.find(&c.text).map(|at| (at, at + c.text.len())));
                match c.label {
                    ClaimLabel::Supported => report.supported += 1,
                    ClaimLabel::Refuted => report.refuted += 1,
                    ClaimLabel::Uncertain => report.uncertain += 1,
                }
                doc_weight += c.label.hallucination_weight();
                claims.push(ClaimOut {
                    text: c.text.clone(),
                    start: span.map(|s| s.0),
                    end: span.map(|s| s.1),
                    quote: span.map(|(a, b)| d.text[a..b].to_string()),
                    label: c.label,
                    evidence: outcome.evidence.get(i).cloned().unwrap_or_default(),
                    source: c.source.clone(),
                });
            }
            weight += doc_weight;
            report.claims += claims.len();
            report.documents.push(DocOut {
                id: d.id.clone(),
                text: d.text.clone(),
                h: (!claims.is_empty()).then(|| doc_weight / claims.len() as f64),
                claims,
            });
        }
        report.h = (report.claims > 0).then(|| weight / report.claims as f64);
        anyhow::Ok(report)
    })?;
    let rendered = match args.format {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Md => markdown(&report),
        Format::Html => html(&report),
    };
    match &args.out {
        Some(p) => spar_core::fsio::write_atomic(p, rendered.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?,
        None => print!("{rendered}"),
    }
    Ok(report)
}

fn read_input(input: &str) -> anyhow::Result<(String, String)> {
    if input == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        return Ok(("(stdin)".into(), s));
    }
    let bytes = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let text =
        String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{input}: not UTF-8 text: {e}"))?;
    Ok((input.to_string(), text))
}

/// One document per JSONL line: a sample or transcript (`turns`, the assistant's texts joined), or a record
/// with a `text` (also `response`, `reply`, `completion`) string. Errors name the line and the field.
fn documents_from_jsonl(name: &str, raw: &str) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{name}: line {n}: not JSON: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("{name}: line {n}: not a JSON object"))?;
        let text = if let Some(turns) = obj.get("turns") {
            let turns = turns.as_array().ok_or_else(|| {
                anyhow::anyhow!("{name}: line {n}: field `turns` is not an array")
            })?;
            let mut parts = Vec::new();
            for (k, t) in turns.iter().enumerate() {
                let role = t.get("role").and_then(|r| r.as_str()).ok_or_else(|| {
                    anyhow::anyhow!("{name}: line {n}: field `turns[{k}].role` is missing")
                })?;
                if matches!(role, "assistant" | "doctor") {
                    let text = t
                        .get("text")
                        .or_else(|| t.get("content"))
                        .and_then(|x| x.as_str())
                        .ok_or_else(|| {
                            anyhow::anyhow!("{name}: line {n}: field `turns[{k}].text` is missing")
                        })?;
                    parts.push(spar_core::grammar::strip_think(text));
                }
            }
            parts.join("\n\n")
        } else if let Some(t) = ["text", "response", "reply", "completion"]
            .iter()
            .find_map(|k| obj.get(*k))
        {
            t.as_str()
                .ok_or_else(|| anyhow::anyhow!("{name}: line {n}: field `text` is not a string"))?
                .to_string()
        } else {
            bail!("{name}: line {n}: no field `turns` or `text` to check");
        };
        let id = match (obj.get("case_id"), obj.get("sample_idx"), obj.get("id")) {
            (Some(c), Some(s), _) => format!("{}#{}", c.as_str().unwrap_or("?"), s),
            (Some(c), None, _) => c.as_str().unwrap_or("?").to_string(),
            (_, _, Some(id)) => id
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| id.to_string()),
            _ => format!("line {n}"),
        };
        docs.push(Document { id, text });
    }
    if docs.is_empty() {
        bail!("{name}: no records");
    }
    Ok(docs)
}

fn label_name(l: ClaimLabel) -> &'static str {
    match l {
        ClaimLabel::Supported => "supported",
        ClaimLabel::Refuted => "refuted",
        ClaimLabel::Uncertain => "uncertain",
    }
}

fn fmt_h(h: Option<f64>) -> String {
    h.map(|h| format!("{h:.3}")).unwrap_or_else(|| "-".into())
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# spar factcheck: {}\n\nH = {} over {} claims ({} supported, {} refuted, {} uncertain). Extractor `{}`, verifier `{}`{}.\n",
        md_cell(&r.input),
        fmt_h(r.h),
        r.claims,
        r.supported,
        r.refuted,
        r.uncertain,
        r.extractor,
        r.verifier,
        if r.redacted {
            "; text PHI-redacted before the endpoint"
        } else {
            ""
        }
    );
    for d in &r.documents {
        s.push_str(&format!("\n## {} (H = {})\n\n", md_cell(&d.id), fmt_h(d.h)));
        if d.claims.is_empty() {
            s.push_str("No claims.\n");
            continue;
        }
        s.push_str("| # | span | claim | label | evidence | source |\n|---|---|---|---|---|---|\n");
        for (i, c) in d.claims.iter().enumerate() {
            let span = match (c.start, c.end) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | **{}** | {} | {} |\n",
                i + 1,
                span,
                md_cell(&c.text),
                label_name(c.label),
                md_cell(&c.evidence),
                md_cell(c.source.as_deref().unwrap_or("-"))
            ));
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(r: &Report) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>spar factcheck</title><style>\
         body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{white-space:pre-wrap}\
         mark.supported{background:#c8f0c8}mark.refuted{background:#f6b8b8}mark.uncertain{background:#f6e6a8}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em;vertical-align:top}\
         </style></head><body>\n",
    );
    s.push_str(&format!(
        "<h1>spar factcheck: {}</h1>\n<p>H = {} over {} claims ({} supported, {} refuted, {} uncertain). Extractor <code>{}</code>, verifier <code>{}</code>{}.</p>\n",
        esc(&r.input),
        fmt_h(r.h),
        r.claims,
        r.supported,
        r.refuted,
        r.uncertain,
        esc(&r.extractor),
        esc(&r.verifier),
        if r.redacted { "; text PHI-redacted before the endpoint" } else { "" }
    ));
    for d in &r.documents {
        s.push_str(&format!(
            "<h2>{} (H = {})</h2>\n<pre>",
            esc(&d.id),
            fmt_h(d.h)
        ));
        // The text with each located claim marked, in order; overlapping spans keep the first.
        let mut spans: Vec<(usize, usize, &ClaimOut)> = d
            .claims
            .iter()
            .filter_map(|c| Some((c.start?, c.end?, c)))
            .collect();
        spans.sort_by_key(|x| x.0);
        let mut at = 0;
        for (a, b, c) in spans {
            if a < at {
                continue;
            }
            s.push_str(&esc(&d.text[at..a]));
            s.push_str(&format!(
                "<mark class=\"{}\" title=\"{}\">{}</mark>",
                label_name(c.label),
                esc(&c.evidence),
                esc(&d.text[a..b])
            ));
            at = b;
        }
        s.push_str(&esc(&d.text[at..]));
        s.push_str("</pre>\n<table><tr><th>#</th><th>claim</th><th>label</th><th>evidence</th><th>source</th></tr>\n");
        for (i, c) in d.claims.iter().enumerate() {
            s.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                i + 1,
                esc(&c.text),
                label_name(c.label),
                esc(&c.evidence),
                esc(c.source.as_deref().unwrap_or("-"))
            ));
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}
