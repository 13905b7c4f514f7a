//! The policy a recipe names: device and dtype from `[model]`, the tokenizer (the model's own, a teacher's, or
//! the CPU demo's BPE trained on the case text) and the weights (loaded, or random-init from `[model] init`).
use anyhow::{Context, Result, bail};
use spar_core::Case;
use spar_core::recipe::{ModelSection, Recipe};
use spar_model::{Qwen3Config, Qwen3Model, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

/// Device and dtype of `[model]` ("auto": CUDA 0 when available).
pub fn device_and_kind(model: &ModelSection) -> Result<(Device, Kind)> {
    Ok((
        spar_model::parse_device(&model.device)?,
        spar_model::dtype_kind(model.dtype),
    ))
}

/// A policy and the tokenizer it speaks.
pub struct PolicyParts {
    pub tokenizer: Arc<Tokenizer>,
    /// The folder whose `tokenizer.json` (and `tokenizer_config.json`) ship with the trained model.
    pub tokenizer_dir: PathBuf,
    pub model: Qwen3Model,
}

/// The tokenizer and policy a training run starts from, with the run folder `out`:
/// - `trainer.bpe_vocab_size > 0` (the CPU demo): a BPE trained on the training cases' text, kept in
///   `out/tokenizer` (reloaded on `--resume`), and a random-init model of that vocabulary;
/// - `[model] path`: the model's own tokenizer and weights;
/// - `[model] init` with distillation teachers: the first teacher's tokenizer, copied to `out/tokenizer`.
pub fn training_policy(
    recipe: &Recipe,
    out: &Path,
    resume: bool,
    train_cases: &[Case],
) -> Result<PolicyParts> {
    let model_sec = recipe.require(&recipe.model, "model")?;
    let tr = recipe.trainer.clone().unwrap_or_default();
    let (device, kind) = device_and_kind(model_sec)?;
    let seed = recipe.seed.unwrap_or(0);
    // Training only: other commands play a trained model (`--model RUN/final`) with the demo recipe as it is.
    if let (Some(p), n) = (&model_sec.path, tr.bpe_vocab_size)
        && n > 0
    {
        bail!(
            "recipe: trainer.bpe_vocab_size = {n} with model.path = {}: a pretrained model trains with its own \
             tokenizer (a new BPE is only for a random-init model.init); set trainer.bpe_vocab_size = 0",
            p.display()
        );
    }
    let (tokenizer, tokenizer_dir) = match (&model_sec.path, tr.bpe_vocab_size) {
        (_, n) if n > 0 => {
            let dir = out.join("tokenizer");
            let tok = if resume && dir.join("tokenizer.json").exists() {
                Tokenizer::from_dir(&dir)?
            } else {
                let texts = case_corpus(train_cases);
                eprintln!(
                    "[train] BPE tokenizer ({n} tokens) on {} texts from {} training cases",
                    texts.len(),
                    train_cases.len()
                );
                spar_model::train_bpe(&texts, n, &dir)?
            };
            (tok, dir)
        }
        (Some(p), _) => {
            let dir = recipe.resolve(p);
            (Tokenizer::from_dir(&dir)?, dir)
        }
        // A random-init student distilled from teachers speaks the teachers' tokenizer; a copy goes into the
        // run folder like a trained BPE would (and from there into `final/`).
        (None, _) if !tr.distill.teachers.is_empty() => {
            let src = recipe.resolve(&tr.distill.teachers[0]);
            if !src.join("tokenizer.json").exists() {
                bail!(
                    "recipe: trainer.distill.teachers[0] = {}: no tokenizer.json there (a random-init student \
                     takes the first teacher's tokenizer; is the teacher's run finished?)",
                    src.display()
                );
            }
            let dir = out.join("tokenizer");
            std::fs::create_dir_all(&dir)?;
            for f in ["tokenizer.json", "tokenizer_config.json"] {
                if src.join(f).exists() {
                    std::fs::copy(src.join(f), dir.join(f))
                        .with_context(|| format!("copying {}", src.join(f).display()))?;
                }
            }
            (Tokenizer::from_dir(&dir)?, dir)
        }
        (None, _) => bail!(
            "recipe: `model.init` needs `trainer.bpe_vocab_size` > 0 (no tokenizer to go with a random model)"
        ),
    };
    // Learners that keep the weights sharded at rest never hold them whole, not even to load them: each reads
    // its chunks from the files when its sharder is built.
    let sharded_at_rest = recipe
        .distributed
        .as_ref()
        .is_some_and(|d| d.sharded_at_rest());
    let model = match (&model_sec.path, &model_sec.init) {
        (Some(p), _) if sharded_at_rest => Qwen3Model::stand_in(&recipe.resolve(p), device, kind)?,
        (Some(p), _) => Qwen3Model::load(&recipe.resolve(p), device, kind)?,
        (None, Some(init)) => {
            let mut json = serde_json::to_value(init)?;
            json["vocab_size"] = tokenizer.vocab_size().into();
            let config = Qwen3Config::from_json_str(&json.to_string(), "recipe model.init")?;
            Qwen3Model::random(config, device, kind, seed as i64)?
        }
        (None, None) => bail!("recipe: `model` needs `path` or `init`"),
    };
    check_vocabulary(&tokenizer, &model, &tokenizer_dir)?;
    Ok(PolicyParts {
        tokenizer: Arc::new(tokenizer),
        tokenizer_dir,
        model,
    })
}

/// Refuses a tokenizer with more tokens than the model has embedding rows (`config.json` `vocab_size`): its
/// high ids would index past the embedding (an error deep in a forward, or worse, a silently wrong model when a
/// tokenizer of another model is picked up). Fewer tokens than rows is normal (Qwen3 pads its embedding).
/// Every command that loads a model with a tokenizer calls it (train, rollout, eval, serve, generate).
pub fn check_vocabulary(tokenizer: &Tokenizer, model: &Qwen3Model, dir: &Path) -> Result<()> {
    let (tokens, rows) = (tokenizer.vocab_size(), model.config.vocab_size);
    if tokens > rows {
        bail!(
            "{}: the tokenizer has {tokens} tokens but the model's embedding has {rows} rows (config.json \
             vocab_size): ids above {} would index past it; use the tokenizer the model was trained with",
            dir.display(),
            rows.saturating_sub(1)
        );
    }
    Ok(())
}

/// The tokenizer of the model folder `model_dir`.
pub fn tokenizer(model_dir: &Path) -> Result<Arc<Tokenizer>> {
    Ok(Arc::new(Tokenizer::from_dir(model_dir).with_context(
        || format!("tokenizer of {}", model_dir.display()),
    )?))
}

/// The weights in `model_dir` on `[model]`'s device and dtype, for commands that play or serve them (or, when
/// the folder has no `config.json` and the recipe gives `[model] init`, a random-init model of that shape).
pub fn saved_model(recipe: &Recipe, model_dir: &Path) -> Result<Qwen3Model> {
    let model_sec = recipe.model.clone().unwrap_or_default();
    let (device, kind) = device_and_kind(&model_sec)?;
    Ok(match &model_sec.init {
        Some(init) if !model_dir.join("config.json").exists() => Qwen3Model::random(
            Qwen3Config::from_toml_table(init, "[model] init")?,
            device,
            kind,
            recipe.seed.unwrap_or(0) as i64,
        )?,
        _ => Qwen3Model::load(model_dir, device, kind)?,
    })
}

/// Text for the demo tokenizer: every scripted expert consultation of the training cases, plus case text.
/// The demo BPE's training text: the cases' consultations, JSON and opening lines, PHI-redacted whatever
/// `[data] redact_on_ingest` says. A BPE's vocabulary is plain text shipped in `final/tokenizer.json`: trained on
/// raw text it turns a frequent patient name or MRN into a token anyone can read; redacted, it learns the
/// placeholders instead. (With ingest redaction on the cases are already redacted and this changes nothing.)
fn case_corpus(cases: &[Case]) -> Vec<String> {
    let mut texts = Vec::new();
    for c in cases {
        for t in spar_data::Expert::new(c).transcript() {
            texts.push(t.text);
        }
        texts.push(serde_json::to_string(c).unwrap_or_default());
        texts.push(spar_rollout::simulator::scripted::ScriptedPatient::opening_line(c));
    }
    let mut texts: Vec<String> = texts.iter().map(|t| spar_core::phi::redact(t)).collect();
    texts.push(spar_core::recipe::DEFAULT_SYSTEM_PROMPT.to_string());
    texts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo tokenizer never learns a patient's identifiers, even from cases read with
    /// `redact_on_ingest = false`.
    #[test]
    fn bpe_corpus_is_redacted() {
        let mut c = spar_data::generate::generate(1, 3).unwrap().remove(0);
        c.hpi = "My name is Margaret Okonkwo, MRN: A-7782341, margaret.okonkwo@example.org".into();
        c.inquiry_items[0].answer = "call me at (617) 555-0142, DOB 03/14/1962".into();
        let texts = case_corpus(std::slice::from_ref(&c)).join("\n");
        for ident in [
            "Okonkwo",
            "7782341",
            "example.org",
            "555-0142",
            "03/14/1962",
        ] {
            assert!(!texts.contains(ident), "{ident} in the BPE corpus");
        }
        assert!(texts.contains("[NAME]") && texts.contains("[PHONE]"));
    }

    /// A model folder whose tokenizer has more tokens than the embedding has rows is refused at load, naming
    /// both sizes.
    #[test]
    fn a_tokenizer_larger_than_the_embedding_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let texts: Vec<String> = (0..200)
            .map(|i| format!("patient {i} reports chest pain and fever number {}", i * 7))
            .collect();
        let tok = spar_model::train_bpe(&texts, 300, dir.path()).unwrap();
        assert!(tok.vocab_size() > 64);
        let config = spar_model::Qwen3Config::from_json_str(
            r#"{"model_type": "qwen3", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": true}"#,
            "test",
        )
        .unwrap();
        Qwen3Model::random(config, tch::Device::Cpu, tch::Kind::Float, 0)
            .unwrap()
            .save_hf(dir.path())
            .unwrap();
        let recipe = Recipe::from_toml_str(
            &format!("[model]\npath = {:?}\n", dir.path().display().to_string()),
            "r.toml",
            &[],
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = training_policy(&recipe, out.path(), false, &[])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("has 64 rows") && e.contains("tokens"), "{e}");
    }

    #[test]
    fn a_pretrained_model_never_trains_with_a_new_bpe() {
        let recipe = Recipe::from_toml_str(
            "[model]\npath = \"/no/such/model\"\n[trainer]\nbpe_vocab_size = 1024\n",
            "r.toml",
            &[],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = training_policy(&recipe, dir.path(), false, &[])
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("trainer.bpe_vocab_size") && e.contains("model.path"),
            "{e}"
        );
    }
}
