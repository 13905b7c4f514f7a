//! Qwen3 / Qwen3-MoE in tch: HF load/save, forward with KV cache, tokenizer and chat template
