//! Expert choices on the wire of an external rollout server, in SGLang's encoding (`--enable-return-routed-experts`,
//! per request `"return_routed_experts": true`).
//!
//! SGLang records, for every token it forwarded, the top-k expert ids of each hidden layer in an int32 buffer of
//! shape `[tokens, num_hidden_layers, top_k]` (dense layers are never written and read 0), and returns a
//! request's rows as the base64 of their little-endian bytes: `meta_info.routed_experts` on `/generate`,
//! `sglext.routed_experts` on `/v1/completions`. The rows cover the prompt and every generated token except the
//! last (`seqlen - 1` tokens: the last sampled token was never fed to the model, so it has no routing).
//! `spar serve` writes the same bytes and `spar_clients::OpenAiRolloutBackend` reads them back.
//!
//! spar's own [`RoutedExperts`] count only the MoE layers and give every generated token a row (the last one
//! repeats the row before it, as the built-in engine does: it influences no log-prob). [`MoeLayout`] maps one to
//! the other.
use crate::sample::RoutedExperts;
use base64::Engine as _;

/// Where a model's MoE layers sit among its hidden layers, and how many experts each token picks: what it takes
/// to write or read a routing payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoeLayout {
    pub num_hidden_layers: usize,
    /// Indices of the MoE layers among the hidden layers, in order (spar's MoE-layer index m is `moe_layers[m]`).
    pub moe_layers: Vec<usize>,
    pub top_k: usize,
}

/// A request's expert choices split the way the built-in engine reports them: the prompt's (one row per prompt
/// token, what the environment gives the positions it fed) and the generated tokens' (one row per generated
/// token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRouting {
    pub prompt: RoutedExperts,
    pub generated: RoutedExperts,
}

impl MoeLayout {
    /// Ids per token in spar's form (MoE layers x top-k).
    fn per_token(&self) -> usize {
        self.moe_layers.len() * self.top_k
    }

    /// SGLang's payload for a request of `prompt_len` prompt tokens and `generated` tokens: rows for the prompt
    /// and every generated token but the last, each `num_hidden_layers x top_k` int32 (dense layers 0), as
    /// base64. `prompt` and `generated` are spar's rows (MoE layers only), as the built-in engine records them.
    pub fn encode_sglang(
        &self,
        prompt: &RoutedExperts,
        generated: &RoutedExperts,
    ) -> Result<String, String> {
        let per = self.per_token();
        for (name, r) in [("prompt", prompt), ("generated", generated)] {
            if r.layers != self.moe_layers.len()
                || r.k != self.top_k
                || !r.ids.len().is_multiple_of(per.max(1))
            {
                return Err(format!(
                    "{name} routing is {} layers x top-{} over {} ids; the model has {} MoE layers x top-{}",
                    r.layers,
                    r.k,
                    r.ids.len(),
                    self.moe_layers.len(),
                    self.top_k
                ));
            }
        }
        let gen_rows = (generated.ids.len() / per.max(1)).saturating_sub(1);
        let rows = prompt
            .ids
            .chunks(per.max(1))
            .chain(generated.ids.chunks(per.max(1)).take(gen_rows));
        let mut bytes = Vec::new();
        for row in rows {
            let mut full = vec![0i32; self.num_hidden_layers * self.top_k];
            for (m, &layer) in self.moe_layers.iter().enumerate() {
                for j in 0..self.top_k {
                    full[layer * self.top_k + j] = row[m * self.top_k + j] as i32;
                }
            }
            bytes.extend(full.iter().flat_map(|e| e.to_le_bytes()));
        }
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads SGLang's payload of a request of `prompt_len` prompt tokens that generated `generated_len`: the
    /// prompt's rows and the generated tokens' (the last generated token's row repeats the one before it, as
    /// the built-in engine's). The rows may hold every hidden layer (SGLang) or the MoE layers alone. Errors
    /// say what does not fit.
    pub fn decode_sglang(
        &self,
        payload: &str,
        prompt_len: usize,
        generated_len: usize,
    ) -> Result<SplitRouting, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        if !bytes.len().is_multiple_of(4) {
            return Err(format!(
                "{} bytes is not a whole number of int32 expert ids",
                bytes.len()
            ));
        }
        let ids: Vec<i32> = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if generated_len == 0 {
            return Err(
                "no generated tokens: the routing of the last prompt token is not returned".into(),
            );
        }
        let tokens = prompt_len + generated_len - 1;
        let k = self.top_k;
        let layers = match ids.len().checked_div(tokens * k) {
            Some(l) if l * tokens * k == ids.len() => l,
            _ => {
                return Err(format!(
                    "{} expert ids do not divide into {tokens} tokens (the {prompt_len} prompt tokens and all \
                     but the last of the {generated_len} generated) x top-{k}",
                    ids.len()
                ));
            }
        };
        // SGLang writes every hidden layer (the dense ones 0); a server could write the MoE layers alone.
        let picked: Vec<usize> = if layers == self.num_hidden_layers {
            self.moe_layers.clone()
        } else if layers == self.moe_layers.len() {
            (0..layers).collect()
        } else {
            return Err(format!(
                "{layers} layers per token; the model has {} hidden layers of which {} are MoE",
                self.num_hidden_layers,
                self.moe_layers.len()
            ));
        };
        let per = self.per_token();
        let mut rows: Vec<u16> = Vec::with_capacity((tokens + 1) * per);
        for t in 0..tokens {
            for (m, &layer) in picked.iter().enumerate() {
                for j in 0..k {
                    let e = ids[(t * layers + layer) * k + j];
                    let e = u16::try_from(e).map_err(|_| {
                        format!("expert id {e} of token {t}, MoE layer {m} is not an expert")
                    })?;
                    rows.push(e);
                }
            }
        }
        let generated_ids = {
            let mut g = rows.split_off(prompt_len * per);
            // The last generated token was never forwarded: its row repeats the one before it (the last prompt
            // token's when only one token was generated), as the built-in engine does.
            let prev = if g.len() >= per {
                g[g.len() - per..].to_vec()
            } else {
                rows[rows.len() - per..].to_vec()
            };
            g.extend(prev);
            g
        };
        let of = |ids| RoutedExperts {
            layers: self.moe_layers.len(),
            k,
            ids,
        };
        Ok(SplitRouting {
            prompt: of(rows),
            generated: of(generated_ids),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> MoeLayout {
        // Three hidden layers, the middle one dense.
        MoeLayout {
            num_hidden_layers: 3,
            moe_layers: vec![0, 2],
            top_k: 2,
        }
    }

    fn re(ids: Vec<u16>) -> RoutedExperts {
        RoutedExperts {
            layers: 2,
            k: 2,
            ids,
        }
    }

    #[test]
    fn round_trips_and_fills_the_last_generated_row() {
        let l = layout();
        let prompt = re(vec![1, 2, 3, 4, 5, 6, 7, 0]);
        // The engine's last generated row already repeats the one before it.
        let generated = re(vec![3, 1, 0, 2, 3, 1, 0, 2]);
        let b64 = l.encode_sglang(&prompt, &generated).unwrap();
        let split = l.decode_sglang(&b64, 2, 2).unwrap();
        assert_eq!(split.prompt, prompt);
        assert_eq!(split.generated, generated);
        // 3 rows (2 prompt + 1 generated) x 3 hidden layers x top-2 int32, the dense layer's row zero.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .unwrap();
        assert_eq!(raw.len(), 3 * 3 * 2 * 4);
        assert_eq!(&raw[8..16], &[0u8; 8]);
    }

    #[test]
    fn one_generated_token_repeats_the_last_prompt_row() {
        let l = layout();
        let prompt = re(vec![1, 2, 3, 4]);
        let b64 = l.encode_sglang(&prompt, &re(vec![9, 9, 9, 9])).unwrap();
        let split = l.decode_sglang(&b64, 1, 1).unwrap();
        assert_eq!(split.generated.ids, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_payload_of_the_wrong_size_says_what_it_expected() {
        let l = layout();
        let b64 = base64::engine::general_purpose::STANDARD.encode([0u8; 4 * 5]);
        let e = l.decode_sglang(&b64, 2, 2).unwrap_err();
        assert!(e.contains("3 tokens") && e.contains("top-2"), "{e}");
        assert!(l.decode_sglang("@@", 2, 2).unwrap_err().contains("base64"));
        let neg =
            base64::engine::general_purpose::STANDARD.encode((-1i32).to_le_bytes().repeat(12));
        assert!(l.decode_sglang(&neg, 1, 2).unwrap_err().contains("-1"));
    }
}
