#!/usr/bin/env bash
# The fused chunked token log-probs on the lent GPU (issue 16): `spar bench logprob` at 4k and 16k tokens, H = 1024,
# V = 151,936, bf16, fused (CUDA epilogue kernels) / fused-aten (ATen epilogue) / naive (whole logits), forward +
# backward with and without the entropy bonus's gradient, a chunk sweep, and the parity lines (fused vs naive on the
# GPU) and the first-use kernel check. Expects dist/spar.gz (stripped build) and dist/lib/ carried, as
# device-sharded.sh. Writes to $OUT: logprob.jsonl (every JSON line), logprob.txt (stderr), env.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv) > "$OUT/env.txt" 2>&1
B=(bench logprob --device cuda --dtype bf16 --hidden 1024 --vocab 151936 --warmup 1 --iters ${ITERS:-5})
run() { timeout 250 /tmp/spar "${B[@]}" "$@" 2>>"$OUT/logprob.txt" | tee -a "$OUT/logprob.jsonl"; }
# Without the epilogue kernels first: their figures survive a kernel fault in the later runs.
run --tokens 4096,16384 --chunk 0 --paths naive,fused-aten
run --tokens 4096,16384 --chunk 0 --paths naive,fused
run --tokens 4096,16384 --chunk 0 --entropy-grad --temperature 0.7 --parity-tokens 2048
run --tokens 16384 --chunk 512,2048,4096 --paths fused-aten,fused --parity-tokens 0
