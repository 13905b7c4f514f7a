//! Text <-> token ids, as the environment and the server need it. A trait (not the model crate's `Tokenizer`
//! directly) so that the environment's bookkeeping can be tested with a tiny codec and no tokenizer file.
use spar_core::grammar;
use std::sync::Arc;

/// Encodes and decodes text. `encode` parses special tokens written in the text (`<|im_start|>` becomes its id)
/// and adds none of its own, exactly as the chat template's rendered text would be tokenised.
pub trait TextCodec: Send + Sync {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String>;
    /// Id of a single (special) token, if the vocabulary has it.
    fn token_id(&self, token: &str) -> Option<u32>;
}

impl TextCodec for spar_model::Tokenizer {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        spar_model::Tokenizer::encode(self, text)
    }
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        spar_model::Tokenizer::decode(self, ids)
    }
    fn token_id(&self, token: &str) -> Option<u32> {
        spar_model::Tokenizer::token_id(self, token)
    }
}

impl<T: TextCodec + ?Sized> TextCodec for Arc<T> {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        (**self).encode(text)
    }
    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        (**self).decode(ids)
    }
    fn token_id(&self, token: &str) -> Option<u32> {
        (**self).token_id(token)
    }
}

/// Special tokens of [`ByteCodec`], ids 0.. in this order; bytes are `256 + byte`.
pub const BYTE_CODEC_SPECIALS: [&str; 6] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    grammar::INQUIRY_DONE,
];

/// A byte-level codec with the ChatML special tokens: every byte is one token, each special token one id, and
/// `decode(encode(text)) == text` for every text. The token stream of a policy served as text (a chat endpoint,
/// the scripted expert without a tokenizer), whose own tokenizer is unknown or irrelevant: the text it said is
/// kept exactly. Tests use it (as `testing::CharCodec`) to check the environment's bookkeeping token by token.
#[derive(Clone, Debug, Default)]
pub struct ByteCodec;

impl ByteCodec {
    /// Ids in use: the specials, then the 256 bytes from 256.
    pub fn vocab_size() -> usize {
        256 + 256
    }
}

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (i, s) in BYTE_CODEC_SPECIALS.iter().enumerate() {
                if let Some(r) = rest.strip_prefix(s) {
                    out.push(i as u32);
                    rest = r;
                    continue 'outer;
                }
            }
            let c = rest.chars().next().expect("non-empty");
            let mut buf = [0u8; 4];
            out.extend(c.encode_utf8(&mut buf).bytes().map(|b| 256 + b as u32));
            rest = &rest[c.len_utf8()..];
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            match id {
                0..=5 => bytes.extend_from_slice(BYTE_CODEC_SPECIALS[id as usize].as_bytes()),
                256..=511 => bytes.push((id - 256) as u8),
                _ => {}
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn token_id(&self, token: &str) -> Option<u32> {
        BYTE_CODEC_SPECIALS
            .iter()
            .position(|s| *s == token)
            .map(|i| i as u32)
    }
}
