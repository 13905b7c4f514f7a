"""transformers' `generate` on the same random Qwen3 shape as `spar bench decode`: decode tokens/s at several
batch sizes (bf16, random prompts, greedy, no early stop). Run both in the same session on the same GPU:

    python rollout/bench/decode_hf.py --batch 1,16,64 --prompt 128 --new 128
    spar bench decode --batch 1,16,64 --prompt 128 --new 128
"""
import argparse
import json
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

SHAPES = {
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960),
}

p = argparse.ArgumentParser()
p.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
p.add_argument("--layers", type=int)
p.add_argument("--batch", default="1,16,64")
p.add_argument("--prompt", type=int, default=128)
p.add_argument("--new", type=int, default=128)
p.add_argument("--iters", type=int, default=3)
p.add_argument("--attn", default="eager", help="attn_implementation: eager | sdpa")
p.add_argument("--device", default="cuda")
a = p.parse_args()

cfg = dict(SHAPES[a.shape])
if a.layers:
    cfg["num_hidden_layers"] = a.layers
torch.manual_seed(0)
config = Qwen3Config(**cfg)
config._attn_implementation = a.attn
model = Qwen3ForCausalLM(config).to(device=a.device, dtype=torch.bfloat16).eval()


def sync():
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def run(b, new):
    ids = torch.randint(10, cfg["vocab_size"] - 1000, (b, a.prompt), device=a.device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == a.prompt + new, out.shape


for b in [int(x) for x in a.batch.split(",")]:
    run(b, 4)
    best = float("inf")
    for _ in range(a.iters):
        sync()
        t0 = time.perf_counter()
        run(b, a.new)
        sync()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"bench": "decode", "engine": f"transformers-{a.attn}", "shape": a.shape, "batch": b,
                      "prompt": a.prompt, "new_tokens": a.new, "seconds": best, "tokens_per_s": b * a.new / best}))
