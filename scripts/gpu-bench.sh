#!/usr/bin/env bash
# Runs on the GPU machine (see docs/benchmarks.md): the bf16 forward and decode benchmarks of spar next to
# transformers on the same random configs, and the GPU-only kernel parity. Expects dist/ carried with a release
# binary (spar.gz), its non-torch shared libraries (lib/) and transformers wheels (wheels/, used only if the
# machine's Python lacks transformers). Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
python3 -c 'import transformers' 2>/dev/null || pip install -q --no-deps --no-index dist/wheels/*.whl >/dev/null 2>&1
python3 -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
log() { echo "== $*" | tee -a "$OUT/bench.log"; "$@" 2>&1 | grep -v '^\s*$' | tail -6 | tee -a "$OUT/bench.log"; }
log /tmp/spar bench forward --shape qwen3-0.6b --dtype bf16 --batch 4 --seq 2048 --device cuda
log python3 model/bench/forward_hf.py --shape qwen3-0.6b --dtype bf16 --batch 4 --seq 2048 --device cuda
log /tmp/spar bench forward --shape qwen3-30b-a3b --layers 4 --dtype bf16 --batch 4 --seq 2048 --device cuda
log python3 model/bench/forward_hf.py --shape qwen3-30b-a3b --layers 4 --dtype bf16 --batch 4 --seq 2048 --device cuda
log /tmp/spar bench decode --batch 1,16,64 --prompt 128 --new 128 --dtype bf16 --device cuda
log python3 rollout/bench/decode_hf.py --batch 1,16,64 --prompt 128 --new 128 --attn eager
