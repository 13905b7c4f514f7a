//! The built-in lexical sentence encoder: hashed word unigrams plus hashed character trigrams of each word,
//! L2-normalised. Deterministic and dependency-free; for offline runs, tests and the CPU demo. Recipes pick a
//! neural encoder (MiniLM in the binary, or `/v1/embeddings`) for real runs.
use crate::text::{fnv1a, words};
use async_trait::async_trait;
use spar_core::Result;
use spar_core::traits::Encoder;

/// Hashed char-n-gram + word TF vectors. Word features weigh 1, each of a word's character trigrams (with
/// boundary marks, `#fever#` -> `#fe`, `fev`, ...) weighs `1 / n_trigrams`, so that a word contributes equally
/// through both views and inflections ("fever" / "fevers") stay close.
#[derive(Clone, Debug)]
pub struct LexicalEncoder {
    dim: usize,
}

impl LexicalEncoder {
    pub const DEFAULT_DIM: usize = 1024;

    pub fn new(dim: usize) -> Self {
        LexicalEncoder { dim: dim.max(16) }
    }

    /// The vector of one text (all zeros for a text without words).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for w in words(text) {
            v[(fnv1a(format!("w:{w}").as_bytes()) % self.dim as u64) as usize] += 1.0;
            let marked: Vec<char> = format!("#{w}#").chars().collect();
            let grams: Vec<String> = marked.windows(3).map(|g| g.iter().collect()).collect();
            let share = 1.0 / grams.len().max(1) as f32;
            for g in grams {
                v[(fnv1a(format!("c:{g}").as_bytes()) % self.dim as u64) as usize] += share;
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Default for LexicalEncoder {
    fn default() -> Self {
        LexicalEncoder::new(Self::DEFAULT_DIM)
    }
}

#[async_trait]
impl Encoder for LexicalEncoder {
    fn id(&self) -> String {
        format!("lexical-v1-{}", self.dim)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

/// Cosine similarity; inputs are L2-normalised, so this is the dot product (0 for a zero vector).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_normalised_and_sensible() {
        let e = LexicalEncoder::default();
        let a = e.embed_one("Amoxicillin treats community-acquired pneumonia");
        assert_eq!(
            a,
            e.embed_one("Amoxicillin treats community-acquired pneumonia")
        );
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-6);
        let b = e.embed_one("amoxicillin treats community acquired pneumonia.");
        let c = e.embed_one("Metformin lowers blood glucose");
        assert!(cosine(&a, &b) > 0.95, "{}", cosine(&a, &b));
        assert!(cosine(&a, &c) < 0.3, "{}", cosine(&a, &c));
        assert!(e.embed_one("...").iter().all(|x| *x == 0.0));
    }
}
