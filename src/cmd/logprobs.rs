//! `spar logprobs`: per-token log-probabilities of given token sequences (or texts) under a model directory.

use super::common::{DeviceArgs, RecipeArgs};
use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use spar_model::{ForwardInput, LmHead, LogprobOptions, Qwen3Model, Tokenizer, head_logprobs};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(clap::Args)]
pub struct Args {
    /// `--model DIR` (an HF folder: config.json, safetensors; tokenizer.json for "text" inputs), or the
    /// recipe's `[model]`, which also gives the device and dtype.
    #[command(flatten)]
    recipe: RecipeArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// JSONL input: one {"token_ids": [...]} or {"text": "..."} per line (an "id" field is copied through).
    #[arg(long = "in", alias = "input")]
    input: PathBuf,
    /// JSONL output: `{"index", "id"?, "token_ids", "logprobs"}` per line; `logprobs[0]` is null (no context).
    #[arg(long)]
    out: PathBuf,
    /// Sequences per forward (right-padded).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

struct Item {
    id: Option<Value>,
    ids: Vec<i64>,
}

fn read_items(
    args: &Args,
    model_dir: &std::path::Path,
    tok: &mut Option<Tokenizer>,
    vocab: usize,
) -> Result<Vec<Item>> {
    let path = &args.input;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{ln}: not valid JSON", path.display()))?;
        let ids: Vec<i64> = if let Some(ids) = v.get("token_ids") {
            let arr = ids.as_array().ok_or_else(|| {
                anyhow!("{}:{ln}: field `token_ids` must be a list", path.display())
            })?;
            arr.iter()
                .map(|x| x.as_u64().filter(|t| (*t as usize) < vocab).map(|t| t as i64))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow!("{}:{ln}: field `token_ids` holds a value that is not a token id below vocab_size {vocab}", path.display()))?
        } else if let Some(t) = v.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| anyhow!("{}:{ln}: field `text` must be a string", path.display()))?;
            if tok.is_none() {
                *tok = Some(Tokenizer::from_dir(model_dir)?);
            }
            tok.as_ref()
                .expect("loaded above")
                .encode(t)?
                .into_iter()
                .map(|x| x as i64)
                .collect()
        } else {
            bail!(
                "{}:{ln}: missing field `token_ids` (or `text`)",
                path.display()
            );
        };
        if ids.is_empty() {
            bail!("{}:{ln}: empty sequence", path.display());
        }
        items.push(Item {
            id: v.get("id").cloned(),
            ids,
        });
    }
    Ok(items)
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.recipe.model_choice(&args.device)?.dir;
    let spec = spar_data::audit::AuditSpec::for_file("spar logprobs", &args.out)
        .with_data([args.input.clone()])
        .with_model(&dir);
    super::audit::run_audited(spec, || logprobs(&args))
}

fn logprobs(args: &Args) -> Result<()> {
    let choice = args.recipe.model_choice(&args.device)?;
    let model = Qwen3Model::load(&choice.dir, choice.device, choice.kind)?;
    let mut tok = None;
    let items = read_items(args, &choice.dir, &mut tok, model.config.vocab_size)?;
    let bar = ProgressBar::new(items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sequences {elapsed}/{eta}")
            .expect("static template"),
    );
    let _g = tch::no_grad_guard();
    let mut out = String::new();
    for (chunk_i, chunk) in items.chunks(args.batch_size.max(1)).enumerate() {
        let t = chunk.iter().map(|it| it.ids.len()).max().unwrap_or(1);
        let mut ids = vec![0i64; chunk.len() * t];
        let mut mask = vec![0i64; chunk.len() * t];
        for (r, it) in chunk.iter().enumerate() {
            ids[r * t..r * t + it.ids.len()].copy_from_slice(&it.ids);
            mask[r * t..r * t + it.ids.len()]
                .iter_mut()
                .for_each(|m| *m = 1);
        }
        let x = Tensor::from_slice(&ids)
            .view([chunk.len() as i64, t as i64])
            .to_device(choice.device);
        let m = Tensor::from_slice(&mask)
            .view([chunk.len() as i64, t as i64])
            .to_device(choice.device);
        // The final hidden states and the fused chunked head: no [tokens x vocab] logits.
        let o = model.forward(ForwardInput::new(&x).mask(&m).hidden_only())?;
        let lp = if t > 1 {
            let Some(LmHead::Hidden { hidden, weight }) = &o.head else {
                anyhow::bail!("the model returned no hidden states");
            };
            let hidden = hidden.narrow(1, 0, t as i64 - 1);
            head_logprobs(
                &hidden,
                weight,
                &x.narrow(1, 1, t as i64 - 1),
                &LogprobOptions::default(),
            )?
            .logp
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
        } else {
            Tensor::zeros([chunk.len() as i64, 0], (Kind::Float, tch::Device::Cpu))
        };
        let flat: Vec<f32> = Vec::<f32>::try_from(lp.reshape([-1]))?;
        for (r, it) in chunk.iter().enumerate() {
            let n = it.ids.len();
            let mut lps: Vec<Value> = vec![Value::Null];
            lps.extend(
                flat[r * (t - 1)..r * (t - 1) + n - 1]
                    .iter()
                    .map(|x| json!(x)),
            );
            let mut line = json!({"index": chunk_i * args.batch_size.max(1) + r, "token_ids": it.ids, "logprobs": lps});
            if let Some(id) = &it.id {
                line["id"] = id.clone();
            }
            out.push_str(&line.to_string());
            out.push('\n');
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    spar_core::fsio::write_atomic(&args.out, out.as_bytes())?;
    eprintln!(
        "wrote log-probs of {} sequences to {}",
        items.len(),
        args.out.display()
    );
    Ok(())
}
