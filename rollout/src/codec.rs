//! Text <-> token ids, as the environment and the server need it. A trait (not the model crate's `Tokenizer`
//! directly) so that the environment's bookkeeping can be tested with a tiny codec and no tokenizer file.
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
