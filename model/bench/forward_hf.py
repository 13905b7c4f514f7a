"""transformers' forward (or forward + backward) tokens/s on the same random config as `spar bench forward`.

usage: python forward_hf.py --shape qwen3-0.6b|qwen3-30b-a3b [--layers N] [--dtype bf16] [--batch 4] [--seq 1024]
                            [--device cuda] [--warmup 3] [--iters 10] [--backward] [--experts eager|grouped_mm|batched_mm]
Prints one JSON line like spar's.
"""
import argparse, json, time
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

SHAPES = {
    "qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM, dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
        num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960)),
    "qwen3-30b-a3b": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(vocab_size=151936, hidden_size=2048,
        intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=40960, num_experts=128,
        num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-0.6b", choices=SHAPES)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--experts", default=None, help="transformers experts implementation (MoE only)")
    a = ap.parse_args()
    cfg_cls, model_cls, kw = SHAPES[a.shape]
    if a.layers:
        kw = dict(kw, num_hidden_layers=a.layers)
    config = cfg_cls(**kw)
    config._attn_implementation = "sdpa"
    if a.experts:
        config._experts_implementation = a.experts
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    with torch.device(a.device):
        model = model_cls(config).to(dtype)
    model.train(a.backward)
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), device=a.device)

    def step():
        if a.backward:
            out = model(input_ids=ids)
            out.logits.float().mean().backward()
            model.zero_grad(set_to_none=False)
        else:
            with torch.no_grad():
                model(input_ids=ids)

    for _ in range(a.warmup):
        step()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.iters):
        step()
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    print(json.dumps({"engine": "transformers", "shape": a.shape, "layers": config.num_hidden_layers, "dtype": a.dtype,
                      "batch": a.batch, "seq": a.seq, "device": a.device, "backward": a.backward, "iters": a.iters,
                      "seconds": secs, "tokens_per_s": a.batch * a.seq * a.iters / secs,
                      "experts_implementation": getattr(config, "_experts_implementation", None)}))


if __name__ == "__main__":
    main()
