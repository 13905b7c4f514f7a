//! `spar generate`: chat-templated generation from a model directory, one prompt at a time (the
//! high-throughput engine is `spar rollout`).

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use spar_model::generate::{SamplingParams, generate};
use spar_model::{ChatTemplate, Qwen3Model, Tokenizer, parse_device, parse_kind};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (config.json, safetensors, tokenizer.json, chat template).
    #[arg(long)]
    model: PathBuf,
    /// JSONL prompts: {"messages": [...], "tools"?: [...], "id"?} (chat-templated) or {"prompt": "raw text"}.
    #[arg(long = "prompts", visible_aliases = ["in", "input"])]
    prompts: PathBuf,
    /// JSONL output ({"index", "id"?, "text", "token_ids", "logprobs", "finish_reason"}); stdout if omitted.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of prompt i is seed + i, so a file's samples do not depend on its order of processing.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Qwen3 thinking mode (false adds the empty think block to the generation prompt).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_thinking: bool,
    #[arg(long, default_value = "fp32")]
    dtype: String,
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(args: Args) -> Result<()> {
    // Generations printed to stdout have no output location to keep a manifest next to.
    let Some(out) = args.out.clone() else {
        return generate_all(&args);
    };
    let spec = spar_data::audit::AuditSpec::for_file("spar generate", &out)
        .with_data([args.prompts.clone()])
        .with_model(&args.model);
    super::audit::run_audited(spec, || generate_all(&args))
}

fn generate_all(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model = Qwen3Model::load(&args.model, device, parse_kind(&args.dtype)?)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    let template = ChatTemplate::from_dir(&args.model).ok();
    let path = &args.prompts;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} prompts {elapsed}/{eta}")
            .expect("static template"),
    );
    let mut out = String::new();
    for (n, (i, line)) in lines.iter().enumerate() {
        let ln = i + 1;
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{ln}: not valid JSON", path.display()))?;
        let prompt = if let Some(m) = v.get("messages") {
            let t = template.as_ref().ok_or_else(|| {
                anyhow!(
                    "{}: the model directory has no chat template",
                    args.model.display()
                )
            })?;
            t.render(m, v.get("tools"), true, args.enable_thinking)
                .with_context(|| format!("{}:{ln}", path.display()))?
        } else if let Some(p) = v.get("prompt").and_then(|p| p.as_str()) {
            p.to_string()
        } else {
            bail!(
                "{}:{ln}: missing field `messages` (or `prompt`)",
                path.display()
            );
        };
        let ids = tok.encode(&prompt)?;
        let params = SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            max_new_tokens: args.max_new_tokens,
            stop_ids: tok.eos_ids(),
            seed: args.seed + n as u64,
        };
        let g = generate(&model, &ids, &params)?;
        let mut rec = json!({
            "index": n,
            "text": tok.decode(&g.tokens)?,
            "token_ids": g.tokens,
            "logprobs": g.logprobs,
            "finish_reason": if g.stopped { "stop" } else { "length" },
        });
        if let Some(id) = v.get("id") {
            rec["id"] = id.clone();
        }
        out.push_str(&rec.to_string());
        out.push('\n');
        bar.inc(1);
    }
    bar.finish_and_clear();
    match &args.out {
        Some(p) => {
            spar_core::fsio::write_atomic(p, out.as_bytes())?;
            eprintln!("wrote {} generations to {}", lines.len(), p.display());
        }
        None => print!("{out}"),
    }
    Ok(())
}
