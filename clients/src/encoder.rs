//! `OpenAiEncoder`: sentence embeddings from an OpenAI-compatible `/embeddings` endpoint, L2-normalised.
use crate::client::OpenAiClient;
use async_trait::async_trait;
use futures::future::try_join_all;
use spar_core::recipe::EndpointConfig;
use spar_core::traits::Encoder;
use spar_core::{Error, Result};

/// Texts per `/embeddings` request; batches run concurrently within the client's limit.
const BATCH: usize = 128;

#[derive(Clone, Debug)]
pub struct OpenAiEncoder {
    client: OpenAiClient,
    dim: usize,
}

impl OpenAiEncoder {
    /// An encoder whose vectors have `dim` components (checked on every reply).
    pub fn new(client: OpenAiClient, dim: usize) -> Self {
        OpenAiEncoder { client, dim }
    }

    /// Learns the dimension from one embedding of a probe text.
    pub async fn probe(client: OpenAiClient) -> Result<Self> {
        let v = client.embeddings(&["dimension probe".to_string()]).await?;
        let dim = v.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(Error::external(
                client.url("embeddings"),
                "the probe embedding is empty",
                false,
            ));
        }
        Ok(Self::new(client, dim))
    }

    pub async fn from_endpoint(cfg: &EndpointConfig) -> Result<Self> {
        Self::probe(OpenAiClient::new(cfg)?).await
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let raw = self.client.embeddings(texts).await?;
        raw.into_iter()
            .enumerate()
            .map(|(i, v)| {
                if v.len() != self.dim {
                    return Err(Error::external(
                        self.client.url("embeddings"),
                        format!(
                            "embedding {i} has {} components, expected {}",
                            v.len(),
                            self.dim
                        ),
                        false,
                    ));
                }
                l2_normalise(v).ok_or_else(|| {
                    Error::external(
                        self.client.url("embeddings"),
                        format!("embedding {i} is zero or not finite"),
                        false,
                    )
                })
            })
            .collect()
    }
}

/// `v / |v|`; None for a zero or non-finite vector (no direction to keep).
pub fn l2_normalise(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    for x in &mut v {
        *x = (*x as f64 / norm) as f32;
    }
    Some(v)
}

#[async_trait]
impl Encoder for OpenAiEncoder {
    fn id(&self) -> String {
        format!("openai-encoder/{}/{}", self.client.model(), self.dim)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let parts = try_join_all(texts.chunks(BATCH).map(|c| self.embed_batch(c))).await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(l2_normalise(vec![3.0, 4.0]), Some(vec![0.6, 0.8]));
        assert_eq!(l2_normalise(vec![0.0, 0.0]), None);
        assert_eq!(l2_normalise(vec![f32::NAN]), None);
    }
}
