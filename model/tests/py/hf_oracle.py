"""Reference outputs of HF transformers for spar-model's parity tests.

usage: hf_oracle.py make SPEC.json OUT_DIR    build each tiny random model, save_pretrained it to OUT_DIR/<name>,
                                             write OUT_DIR/oracle.safetensors (inputs, logits, grads) and
                                             OUT_DIR/oracle.json (greedy generations, aux losses, margins)
       hf_oracle.py check SPEC.json OUT_DIR  load OUT_DIR/<name>/resaved (written by spar) with transformers and
                                             write OUT_DIR/check.safetensors (logits) and the weight comparison
One process per test group keeps the suite fast.
"""
import json, sys, os
import torch
from safetensors.torch import save_file, load_file
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

torch.set_num_threads(2)


def build(spec):
    cfg = dict(spec["config"])
    mt = cfg.pop("model_type")
    if mt == "qwen3":
        config, cls = Qwen3Config(**cfg), Qwen3ForCausalLM
    else:
        config, cls = Qwen3MoeConfig(**cfg), Qwen3MoeForCausalLM
    config._attn_implementation = "sdpa"
    config._experts_implementation = "eager"  # the reference loop; grouped_mm needs 16-byte aligned shapes
    torch.manual_seed(spec["seed"])
    model = cls(config).float().eval()
    with torch.no_grad():
        # Larger-than-default weights and non-unit norms: peaked logits and every norm weight exercised.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(spec.get("init_std", 0.08) * torch.randn_like(p))
    return model


def greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True,
                         eos_token_id=None, pad_token_id=0, min_new_tokens=n)
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return out.sequences[0, len(prompt):].tolist(), min(margins)


def make(spec_path, out):
    specs = json.load(open(spec_path))
    tensors, meta = {}, {"transformers": transformers.__version__}
    for spec in specs:
        name = spec["name"]
        model = build(spec)
        d = os.path.join(out, name)
        model.save_pretrained(d)
        vocab = spec["config"]["vocab_size"]
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        b, t = spec.get("batch", 2), spec.get("seq", 12)
        ids = torch.randint(0, vocab, (b, t), generator=g)
        targets = torch.randint(0, vocab, (b, t), generator=g)
        tensors[f"{name}.input_ids"] = ids
        tensors[f"{name}.targets"] = targets
        model.zero_grad()
        with torch.enable_grad():
            o = model(input_ids=ids, output_router_logits=spec["config"]["model_type"] == "qwen3_moe")
            lp = torch.log_softmax(o.logits.float(), -1).gather(-1, targets[..., None])[..., 0]
            loss = -lp.mean()
            m = {}
            if spec["config"]["model_type"] == "qwen3_moe":
                aux = load_balancing_loss_func(o.router_logits, model.config.num_experts, model.config.num_experts_per_tok)
                m["aux_loss"] = float(aux)
                loss = loss + 0.1 * aux
            loss.backward()
        m["loss"] = float(loss)
        tensors[f"{name}.logits"] = o.logits.detach().contiguous()
        params = dict(model.named_parameters())
        for p in spec["grad_params"]:
            tensors[f"{name}.grad.{p}"] = params[p].grad.detach().contiguous()
        gens = []
        for prompt in spec.get("prompts", []):
            toks, margin = greedy(model, prompt, spec.get("gen_tokens", 32))
            gens.append({"prompt": prompt, "tokens": toks, "min_margin": margin})
        m["generations"] = gens
        meta[name] = m
    save_file(tensors, os.path.join(out, "oracle.safetensors"))
    json.dump(meta, open(os.path.join(out, "oracle.json"), "w"))


def check(spec_path, out):
    specs = json.load(open(spec_path))
    oracle = load_file(os.path.join(out, "oracle.safetensors"))
    tensors, meta = {}, {}
    for spec in specs:
        name = spec["name"]
        d = os.path.join(out, name, "resaved")
        if not os.path.isdir(d):
            continue
        cls = Qwen3ForCausalLM if spec["config"]["model_type"] == "qwen3" else Qwen3MoeForCausalLM
        model = cls.from_pretrained(d, dtype=torch.float32, experts_implementation="eager").eval()
        ref = cls.from_pretrained(os.path.join(out, name), dtype=torch.float32, experts_implementation="eager").eval()
        with torch.no_grad():
            tensors[f"{name}.logits"] = model(input_ids=oracle[f"{name}.input_ids"]).logits.contiguous()
        a, b = model.state_dict(), ref.state_dict()
        same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
        meta[name] = {"weights_identical": same}
    save_file(tensors, os.path.join(out, "check.safetensors"))
    json.dump(meta, open(os.path.join(out, "check.json"), "w"))


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2], sys.argv[3])
