#!/usr/bin/env bash
# Decode on the GPU machine in one call: the GPU tests of spar-kernels and graph decode, spar bench decode (uniform
# and --ragged prompts; the decode-attention kernels and SDPA), then transformers eager generate on the same config
# (what produced the 2026-11-26 figures in docs/benchmarks.md). Expects dist/ as scripts/gpu-session.sh does.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" PYTHONUNBUFFERED=1
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
python3 -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)' | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/env.log"
for t in kernels model; do gunzip -c "dist/tests-$t.gz" > "/tmp/tests-$t" && chmod +x "/tmp/tests-$t"; done
/tmp/tests-kernels --nocapture --test-threads 1 > "$OUT/tests.log" 2>&1; echo "kernels tests rc=$?"
/tmp/tests-model graph_decode --nocapture >> "$OUT/tests.log" 2>&1; echo "model graph tests rc=$?"
grep -E "test result|FAILED|panicked" "$OUT/tests.log"
S='s/"graph_stats":\{[^}]*\},//; s/"bench":"decode","device":"Cuda\(0\)","dtype":"bf16","engine":"spar",//; s/"new_tokens":128,"path":"graph",//; s/"shape":"qwen3-0.6b",//'
for r in "" "--ragged"; do
  for attn in auto sdpa auto; do
    echo "== $attn $r" | tee -a "$OUT/decode.log"
    SPAR_DECODE_ATTENTION=$attn /tmp/spar bench decode --batch 1,16,64 --prompt 128 --new 128 --dtype bf16 --device cuda --paths graph $r 2>&1 | tee -a "$OUT/decode.log" | sed -E "$S"
  done
done
echo "== transformers" | tee -a "$OUT/decode.log"
python3 rollout/bench/decode_hf.py --batch 1,16,64 --prompt 128 --new 128 --attn eager 2>&1 | grep -v '^\s*$' | tail -4 | tee -a "$OUT/decode.log"
