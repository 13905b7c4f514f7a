//! The model directory's `tokenizer.json` through the `tokenizers` crate, with the end-of-sequence and padding
//! ids gathered from `tokenizer_config.json`, `generation_config.json` and `config.json`.

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use std::path::Path;

/// A loaded tokenizer plus the special ids generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    pad: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: not valid JSON", path.display())
    })?))
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}` (older AddedToken dumps).
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` alone (no eos/pad metadata beyond `<|im_end|>` / `<|endoftext|>` if present).
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut t = Tokenizer {
            inner,
            eos: Vec::new(),
            pad: None,
        };
        t.eos = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|s| t.token_id(s))
            .collect();
        t.pad = t.token_id("<|endoftext|>");
        Ok(t)
    }

    /// Loads `dir/tokenizer.json` and the special ids of `tokenizer_config.json` (`eos_token`, `pad_token`),
    /// `generation_config.json` and `config.json` (`eos_token_id`, `pad_token_id`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut t = Tokenizer {
            inner,
            eos: Vec::new(),
            pad: None,
        };
        let mut eos = Vec::new();
        if let Some(tc) = read_json(&dir.join("tokenizer_config.json"))? {
            if let Some(s) = tc.get("eos_token").and_then(token_text) {
                let id = t.token_id(&s).ok_or_else(|| {
                    anyhow!(
                        "{}: eos_token {s:?} is not in tokenizer.json",
                        dir.join("tokenizer_config.json").display()
                    )
                })?;
                eos.push(id);
            }
            if let Some(s) = tc.get("pad_token").and_then(token_text) {
                t.pad = t.token_id(&s);
            }
        }
        for f in ["generation_config.json", "config.json"] {
            if let Some(v) = read_json(&dir.join(f))? {
                if let Some(e) = v.get("eos_token_id") {
                    eos.extend(ids_of(e));
                }
                if t.pad.is_none() {
                    t.pad = v
                        .get("pad_token_id")
                        .and_then(|p| p.as_u64())
                        .map(|p| p as u32);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos.retain(|x| seen.insert(*x));
        if eos.is_empty() {
            eos = ["<|im_end|>", "<|endoftext|>"]
                .iter()
                .filter_map(|s| t.token_id(s))
                .collect();
        }
        t.eos = eos;
        Ok(t)
    }

    /// Token ids of `text`. No special tokens are added; special tokens written in the text
    /// (`<|im_start|>`, ...) are recognised as such, as transformers does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// Id of a token string (regular or added), if it exists.
    pub fn token_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// Vocabulary size including added tokens (may be below the model's embedding rows, which are padded).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids that end a generation.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    /// Padding id, if the directory names one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Qwen3's special tokens in id order (from 151643 in the real vocabulary).
pub const QWEN3_SPECIAL_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
];

/// Trains a tiny byte-level BPE on `texts` for the CPU demo: `vocab_size` entries in all, Qwen3's special
/// tokens appended after the merges (`<tool_call>`, `<think>`, ... are not "special" in Qwen3: they stay
/// visible in decoded text). Writes `tokenizer.json` and a `tokenizer_config.json` carrying the Qwen3 chat
/// template into `out_dir` (atomically) and returns the loaded tokenizer.
pub fn train_bpe(texts: &[String], vocab_size: usize, out_dir: &Path) -> Result<Tokenizer> {
    use tokenizers::models::TrainerWrapper;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, PreTokenizerWrapper};

    let n_special = QWEN3_SPECIAL_TOKENS.len();
    anyhow::ensure!(
        vocab_size > 256 + n_special,
        "train_bpe: vocab_size {vocab_size} must exceed 256 bytes + {n_special} special tokens"
    );
    anyhow::ensure!(!texts.is_empty(), "train_bpe: no training text");
    let mut tok = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - n_special)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter())
        .map_err(|e| anyhow!("train_bpe: {e}"))?;
    // One at a time so ids follow Qwen3's order whether a token is special or a plain added token.
    for s in QWEN3_SPECIAL_TOKENS {
        let special = !matches!(
            *s,
            "<tool_call>"
                | "</tool_call>"
                | "<tool_response>"
                | "</tool_response>"
                | "<think>"
                | "</think>"
        );
        if special {
            tok.add_special_tokens(&[AddedToken::from(*s, true)]);
        } else {
            tok.add_tokens(&[AddedToken::from(*s, false)]);
        }
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json = tok
        .to_string(true)
        .map_err(|e| anyhow!("train_bpe: serialising: {e}"))?;
    spar_core::fsio::write_atomic(&out_dir.join("tokenizer.json"), json.as_bytes())?;
    let cfg = serde_json::json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": false,
        "add_prefix_space": false,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "clean_up_tokenization_spaces": false,
        "split_special_tokens": false,
        "model_max_length": 131072,
        "chat_template": crate::chat::QWEN3_CHAT_TEMPLATE,
    });
    spar_core::fsio::write_atomic(
        &out_dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?.as_bytes(),
    )?;
    Tokenizer::from_dir(out_dir)
}
