"""transformers' training step on the same random config and batch layout as `spar bench train`.

The step a TRL / HF Trainer run with `bf16=True` takes: fp32 weights and AdamW state, bf16 autocast, token-mean
cross-entropy over micro-batches with gradient accumulation, grad-norm clipping at 1.0, torch's fused AdamW.
usage: python train_hf.py --shape qwen3-0.6b [--layers N] [--batch 8] [--micro-batch 2] [--seq 1024]
                          [--warmup 2] [--iters 5] [--gradient-checkpointing]
Prints one JSON line like spar's.
"""
import argparse, json, time
import torch
from forward_hf import SHAPES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-0.6b", choices=SHAPES)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    a = ap.parse_args()
    cfg_cls, model_cls, kw = SHAPES[a.shape]
    if a.layers:
        kw = dict(kw, num_hidden_layers=a.layers)
    config = cfg_cls(**kw)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(a.device):
        model = model_cls(config)
    model.train()
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), device=a.device)
    tokens = a.batch * (a.seq - 1)

    def step():
        for mb in ids.split(a.micro_batch):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=mb).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), mb[:, 1:].reshape(-1), reduction="sum"
            ) / tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(a.iters):
        step()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    print(json.dumps({"engine": "transformers", "bench": "train", "shape": a.shape, "layers": config.num_hidden_layers,
                      "dtype": "fp32 weights, bf16 autocast", "batch": a.batch, "micro_batch": a.micro_batch,
                      "seq": a.seq, "checkpointing": a.gradient_checkpointing, "iters": a.iters,
                      "seconds_per_step": secs / a.iters, "tokens_per_s": a.batch * a.seq * a.iters / secs,
                      "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}))


if __name__ == "__main__":
    main()
