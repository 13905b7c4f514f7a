#!/usr/bin/env python3
"""The transformers half of scripts/gpu-parity.sh: compares spar's logits with HF transformers' on one case.

A case folder (written by `spar bench forward --parity-dir DIR`) holds `model/` (HF format, bf16 weights),
`inputs.safetensors` (input_ids) and spar's fp32 / bf16 logits. This loads the same weights into transformers
in fp32 and bf16, runs the same ids, and prints one JSON line:

  spar_bf16_vs_hf_bf16   the parity figure (bf16 cannot match bit for bit)
  hf_bf16_vs_hf_fp32     transformers' own bf16 drift: the yardstick for the line above
  spar_bf16_vs_spar_fp32 spar's own bf16 drift
  spar_fp32_vs_hf_fp32   fp32 parity (should be ~1e-5 or below)
  spar_bf16_vs_hf_fp32   both errors together

each with max_abs, mean_abs, rel (max_abs / max |reference|) and top1 (argmax agreement over positions).
"parity" is judged as: spar_bf16_vs_hf_bf16.max_abs <= 2 x hf_bf16_vs_hf_fp32.max_abs, and the same for the
mean. Exit status 0 either way (the figures are the result); 2 when files are missing.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file


def compare(a, b):
    a64, b64 = a.double(), b.double()
    d = (a64 - b64).abs()
    return {
        "max_abs": d.max().item(),
        "mean_abs": d.mean().item(),
        "rel": d.max().item() / max(b64.abs().max().item(), 1e-12),
        "top1": (a.argmax(-1) == b.argmax(-1)).double().mean().item(),
    }


def hf_logits(model_dir, ids, dtype, device, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    model.to(device).eval()
    with torch.no_grad():
        out = model(input_ids=ids.to(device)).logits.float().cpu()
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("case", help="folder written by spar bench forward --parity-dir")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--attn", default="sdpa", help="transformers attention implementation")
    ap.add_argument("--name", default=None, help="label for the JSON line")
    a = ap.parse_args()
    need = ["model/config.json", "inputs.safetensors", "spar_fp32.safetensors", "spar_bf16.safetensors"]
    missing = [n for n in need if not os.path.exists(os.path.join(a.case, n))]
    if missing:
        print(f"gpu_parity.py: {a.case} lacks {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    ids = load_file(os.path.join(a.case, "inputs.safetensors"))["input_ids"]
    spar32 = load_file(os.path.join(a.case, "spar_fp32.safetensors"))["logits"]
    spar16 = load_file(os.path.join(a.case, "spar_bf16.safetensors"))["logits"]
    model_dir = os.path.join(a.case, "model")
    hf32 = hf_logits(model_dir, ids, torch.float32, a.device, a.attn)
    hf16 = hf_logits(model_dir, ids, torch.bfloat16, a.device, a.attn)
    res = {
        "case": a.name or os.path.basename(os.path.normpath(a.case)),
        "device": a.device,
        "attn": a.attn,
        "tokens": ids.numel(),
        "spar_bf16_vs_hf_bf16": compare(spar16, hf16),
        "hf_bf16_vs_hf_fp32": compare(hf16, hf32),
        "spar_bf16_vs_spar_fp32": compare(spar16, spar32),
        "spar_fp32_vs_hf_fp32": compare(spar32, hf32),
        "spar_bf16_vs_hf_fp32": compare(spar16, hf32),
    }
    p, y = res["spar_bf16_vs_hf_bf16"], res["hf_bf16_vs_hf_fp32"]
    res["parity"] = bool(p["max_abs"] <= 2 * y["max_abs"] and p["mean_abs"] <= 2 * y["mean_abs"])
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
