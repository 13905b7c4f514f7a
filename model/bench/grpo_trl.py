"""TRL's GRPO iteration on the workload of `spar bench grpo`: a random-init model of a real shape, P prompts of
exactly L random tokens, G completions each of up to N new tokens (temperature 1, no vLLM), a cheap rule reward,
the DAPO loss (token-level, clip 0.2 / 0.28, no KL), one optimizer step per generation batch.

The tokenizer is a word-level one over the model's whole vocabulary ("t0" .. "tV-1"), so a prompt of L words is
exactly L tokens and any generated id decodes; the reward is the fraction of even token ids in the completion
(the same rule as spar's side).
usage: python grpo_trl.py [--shape qwen3-0.6b] [--layers N] [--prompts 8] [--group 8] [--prompt-len 128]
                          [--new 256] [--micro-batch 8] [--warmup 1] [--iters 3]
Prints one JSON line per timed step and a summary line.
"""
import argparse, json, os, statistics, tempfile, time
import torch
from forward_hf import SHAPES


def word_tokenizer(vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t151643", eos_token="t151645",
                                   unk_token="t0")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-0.6b", choices=SHAPES)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", help="write the last step's torch profiler Chrome trace here (read it with "
                    "`spar bench trace`, next to spar's `bench grpo --profile`)")
    a = ap.parse_args()
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg_cls, model_cls, kw = SHAPES[a.shape]
    if a.layers:
        kw = dict(kw, num_hidden_layers=a.layers)
    config = cfg_cls(**kw)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(a.device):
        model = model_cls(config)
    if a.device == "cuda":
        model = model.to(torch.bfloat16)
    tok = word_tokenizer(config.vocab_size)
    steps = a.warmup + a.iters
    g = torch.Generator().manual_seed(1)
    prompts = [" ".join(f"t{int(x)}" for x in torch.randint(10, config.vocab_size - 1000, (a.prompt_len,), generator=g))
               for _ in range(a.prompts * steps)]
    data = Dataset.from_dict({"prompt": prompts})

    def even_share(completions, **_):
        out = []
        for c in completions:
            ids = [int(w[1:]) for w in c.split() if w.startswith("t") and w[1:].isdigit()]
            out.append(sum(1 for i in ids if i % 2 == 0) / max(len(ids), 1))
        return out

    batch = a.prompts * a.group
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=batch // a.micro_batch, num_generations=a.group,
        max_completion_length=a.new, temperature=1.0, loss_type="dapo", beta=0.0, epsilon=0.2,
        epsilon_high=0.28, learning_rate=1e-6, bf16=a.device == "cuda", use_cpu=a.device == "cpu", max_steps=steps, logging_steps=1, report_to=[],
        save_strategy="no", use_vllm=False, num_iterations=1, shuffle_dataset=False, seed=0,
    )

    times = []

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    class Clock(TrainerCallback):
        prof = None

        def on_step_begin(self, *_, **__):
            sync()
            if a.profile and len(times) == steps - 1:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if a.device == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            sync()
            times.append(time.perf_counter() - self.t)
            if self.prof is not None:
                self.prof.__exit__(None, None, None)
                self.prof.export_chrome_trace(a.profile)
                self.prof = None

    trainer = GRPOTrainer(model=model, reward_funcs=even_share, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[Clock()])
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = times[a.warmup:]
    for i, t in enumerate(timed):
        print(json.dumps({"bench": "grpo", "engine": "trl", "step": i, "seconds": t}))
    import trl
    print(json.dumps({
        "bench": "grpo", "engine": "trl", "trl": trl.__version__, "shape": a.shape, "prompts": a.prompts,
        "group": a.group, "prompt_len": a.prompt_len, "new_tokens": a.new, "micro_batch": a.micro_batch,
        "median_s": statistics.median(timed), "steps": len(timed),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None}))


if __name__ == "__main__":
    main()
