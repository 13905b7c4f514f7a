//! `spar generate`: chat-templated generation from a model directory, one prompt at a time (the
//! high-throughput engine is `spar rollout`).

use super::common::{DeviceArgs, RecipeArgs};
use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use spar_model::generate::{SamplingParams, generate};
use spar_model::{ChatTemplate, Qwen3Model, Tokenizer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// `--model DIR` (an HF folder: config.json, safetensors, tokenizer.json, chat template), or the recipe's
    /// `[model]`; `--recipe`'s `[model]` gives the device and dtype, its `[rollout.sampling]` the sampling
    /// defaults.
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// JSONL prompts: {"messages": [...], "tools"?: [...], "id"?} (chat-templated) or {"prompt": "raw text"}.
    #[arg(long = "in", aliases = ["prompts", "input"])]
    prompts: PathBuf,
    /// JSONL output ({"index", "id"?, "text", "token_ids", "logprobs", "finish_reason"}); stdout if omitted.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Default: the recipe's `rollout.sampling.max_new_tokens`, else 256.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// 0 = greedy, at most 2. Default: the recipe's `rollout.sampling.temperature`, else 0.
    #[arg(long, value_parser = temperature_arg, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// In (0, 1]. Default: the recipe's `rollout.sampling.top_p`, else 1.
    #[arg(long, value_parser = top_p_arg, allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Seed of prompt i is seed + i, so a file's samples do not depend on its order of processing.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Qwen3 thinking mode (false adds the empty think block to the generation prompt).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enable_thinking: bool,
}

/// `--temperature`, in the range `spar serve` accepts (a NaN or negative value would reach the sampler).
fn temperature_arg(s: &str) -> std::result::Result<f64, String> {
    let t: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    spar_rollout::serve::params::check_temperature(t)
}

/// `--top-p`, in (0, 1] (0 would keep no token; libtorch would fail with a backtrace).
fn top_p_arg(s: &str) -> std::result::Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    spar_rollout::serve::params::check_top_p(p)
}

pub fn run(args: Args) -> Result<()> {
    // Generations printed to stdout have no output location to keep a manifest next to.
    let Some(out) = args.out.clone() else {
        return generate_all(&args);
    };
    let dir = args.recipe.model_choice(&args.device)?.dir;
    let spec = spar_data::audit::AuditSpec::for_file("spar generate", &out)
        .with_data([args.prompts.clone()])
        .with_model(&dir);
    super::audit::run_audited(spec, || generate_all(&args))
}

fn generate_all(args: &Args) -> Result<()> {
    let choice = args.recipe.model_choice(&args.device)?;
    let dir = &choice.dir;
    let recipe_sampling = choice
        .builder
        .recipe()
        .rollout
        .as_ref()
        .map(|r| r.sampling.clone());
    let temperature = args.temperature.unwrap_or_else(|| {
        recipe_sampling
            .as_ref()
            .map_or(0.0, |s| s.temperature as f64)
    });
    let top_p = args
        .top_p
        .unwrap_or_else(|| recipe_sampling.as_ref().map_or(1.0, |s| s.top_p as f64));
    let max_new_tokens = args.max_new_tokens.unwrap_or_else(|| {
        recipe_sampling
            .as_ref()
            .map_or(256, |s| s.max_new_tokens as usize)
    });
    let model = Qwen3Model::load(dir, choice.device, choice.kind)?;
    let tok = Tokenizer::from_dir(dir)?;
    spar_app::check_vocabulary(&tok, &model, dir)?;
    let template = ChatTemplate::from_dir(dir).ok();
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
                    dir.display()
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
            temperature,
            top_p,
            top_k: args.top_k,
            max_new_tokens,
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
