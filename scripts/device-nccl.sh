#!/usr/bin/env bash
# ProcessGroupNCCL on the lent GPU (world size 1): the collectives self-test, then the same short RL run of the
# tiny recipe on the GPU twice, in one process and through `spar launch --nproc-per-node 1` (NCCL), to compare
# round times. Expects dist/spar.gz and dist/spar-dist-selftest.gz (stripped builds) and dist/lib/ carried.
# Writes to $OUT: selftest.txt, plain.txt / nccl.txt (console), plain.jsonl / nccl.jsonl (metrics), env.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
for b in spar spar-dist-selftest; do gunzip -c "dist/$b.gz" > "/tmp/$b" && chmod +x "/tmp/$b"; done
(nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv) > "$OUT/env.txt" 2>&1
timeout 120 /tmp/spar launch --nproc-per-node 1 --program /tmp/spar-dist-selftest -- --backend nccl \
  > "$OUT/selftest.txt" 2>&1; echo "selftest rc=$?" >> "$OUT/selftest.txt"
run=(train --recipe recipes/tiny-cpu.toml --set 'model.device="cuda"' --set trainer.sft_steps=${SFT_STEPS:-40}
     --set trainer.steps=${STEPS:-6} --set eval.max_cases=${EVAL_CASES:-3}
     --set "data.cases=\"$PWD/data/cases/cases.jsonl\"")
timeout "${LIMIT:-200}" /tmp/spar "${run[@]}" --out /tmp/plain > "$OUT/plain.txt" 2>&1
echo "plain rc=$?" >> "$OUT/plain.txt"; cp /tmp/plain/metrics.jsonl "$OUT/plain.jsonl"
timeout "${LIMIT:-200}" /tmp/spar launch --nproc-per-node 1 -- "${run[@]}" --set 'distributed.backend="nccl"' \
  --out /tmp/nccl > "$OUT/nccl.txt" 2>&1
echo "nccl rc=$?" >> "$OUT/nccl.txt"; cp /tmp/nccl/metrics.jsonl "$OUT/nccl.jsonl"
