#!/usr/bin/env bash
# Writes a random-init HF model folder of one of model/bench/forward_hf.py's shapes (transformers' own init, bf16,
# saved on the GPU machine) with the official Qwen3 tokenizer from dist/tokenizer/, and prints its path:
#   M=$(scripts/random-model.sh qwen3-0.6b)        # /tmp/qwen3-0.6b-all-random
#   M=$(scripts/random-model.sh qwen3-30b-a3b 4)   # the 30B-A3B shape at 4 layers
# An existing folder is reused.
set -euo pipefail
SHAPE=${1:?usage: random-model.sh SHAPE [LAYERS]}; LAYERS=${2:-}
M=/tmp/$SHAPE-${LAYERS:-all}-random
if [ ! -f "$M/config.json" ]; then
  python3 - "$M" "$SHAPE" "${LAYERS:-0}" >&2 <<'PY'
import sys, torch
sys.path.insert(0, "model/bench")
from forward_hf import SHAPES
cfg_cls, model_cls, kw = SHAPES[sys.argv[2]]
if int(sys.argv[3]):
    kw = dict(kw, num_hidden_layers=int(sys.argv[3]))
torch.manual_seed(0)
config = cfg_cls(**kw, bos_token_id=151643, eos_token_id=151645, torch_dtype="bfloat16")
with torch.device("cuda"):
    model = model_cls(config).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
PY
  cp dist/tokenizer/* "$M/"
fi
echo "$M"
