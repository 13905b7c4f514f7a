#!/usr/bin/env bash
# One GPU-machine session for the decode and parity work (issues 3 and 4), everything in one call:
#   1. the GPU-only tests: CUDA-graph shim (spar-kernels) and graph decode == eager decode (spar-model);
#   2. spar bench decode (eager and CUDA-graph paths) next to transformers' generate in the same call;
#   3. scripts/gpu-parity.sh (bf16 parity with transformers, Qwen3-0.6B and Qwen3-30B-A3B shapes).
# Expects dist/ carried: spar.gz (stripped release build), test binaries tests-kernels.gz / tests-model.gz
# (optional), lib/ (non-torch shared libraries of this host). Logs and JSON lines go to $OUT.
# STEPS (default "tests decode parity") picks what runs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${STEPS:-tests decode parity}
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" PYTHONUNBUFFERED=1
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
python3 -c 'import transformers' 2>/dev/null || pip install -q --no-deps --no-index dist/wheels/*.whl >/dev/null 2>&1
python3 -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)' | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$OUT/env.log"
rc=0
step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if step tests; then
  for t in kernels model; do
    [ -f "dist/tests-$t.gz" ] || continue
    gunzip -c "dist/tests-$t.gz" > "/tmp/tests-$t" && chmod +x "/tmp/tests-$t"
  done
  [ -x /tmp/tests-kernels ] && { /tmp/tests-kernels --nocapture 2>&1 | tee "$OUT/tests.log" || rc=1; }
  [ -x /tmp/tests-model ] && { /tmp/tests-model graph_decode --nocapture 2>&1 | tee -a "$OUT/tests.log" || rc=1; }
fi
if step decode; then
  /tmp/spar bench decode --batch 1,16,64 --prompt 128 --new 128 --dtype bf16 --device cuda --paths both 2>&1 \
    | tee "$OUT/decode.log" || rc=1
  python3 rollout/bench/decode_hf.py --batch 1,16,64 --prompt 128 --new 128 --attn eager 2>&1 \
    | grep -v '^\s*$' | tail -4 | tee -a "$OUT/decode.log"
fi
if step parity; then
  SPAR=/tmp/spar DEVICE=cuda OUT="$OUT" WORK=/tmp/parity scripts/gpu-parity.sh 2>"$OUT/parity.err" || rc=1
  tail -5 "$OUT/parity.err"
fi
exit $rc
