#!/usr/bin/env bash
# The CPU demo over several seeds and variants at once on a many-core host (the GPU machine's 16 Xeon cores, GPU
# unused): each run pinned to its own 2 cores with taskset, as on the 2-core machines the demo targets. The
# figures "on 2-core slices of a Xeon host" in docs/training.md come from this script (the runs below are the last
# matrix: the recipe as it stands over seeds 0-4, and plain GRPO over seeds 0-2). Other matrices of session 3 swapped
# the `run` lines for variants (--set trainer.lr=..., trainer.kl_coef=..., trainer.sft_steps=...,
# trainer.sft_fraction=..., rewards.spar.estimator="mean_only", rewards.spar.detectors=[]).
# Expects dist/spar.gz (stripped release build) and dist/lib/ carried, as scripts/gpu-session.sh does; results land
# in $OUT (summary, tables, runs.tgz).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" CUDA_VISIBLE_DEVICES=""
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nproc; lscpu | grep -i "model name") | tee "$OUT/env.txt"
i=0
run() {
  local name=$1; shift
  local cores="$((2*i)),$((2*i+1))"; i=$((i+1))
  ( s=$(date +%s)
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 timeout ${LIMIT:-590} taskset -c "$cores" /tmp/spar train \
      --recipe recipes/tiny-cpu.toml --out "/tmp/runs/$name" --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" "$@" > "/tmp/runs/$name.log" 2>&1
    echo "$name rc=$? wall=$(( $(date +%s) - s ))s" >> /tmp/runs/summary.txt ) &
}
run spar-s0 --set seed=0
run spar-s1 --set seed=1
run spar-s2 --set seed=2
run spar-s3 --set seed=3
run spar-s4 --set seed=4
run grpo-s0 --set seed=0 --set rewards.spar.estimator=\"grpo\"
run grpo-s1 --set seed=1 --set rewards.spar.estimator=\"grpo\"
run grpo-s2 --set seed=2 --set rewards.spar.estimator=\"grpo\"
wait
cat /tmp/runs/summary.txt | tee "$OUT/summary.txt"
for d in /tmp/runs/*-s?/; do n=$(basename "$d"); echo "== $n"; grep -a "\[train\]" "/tmp/runs/$n.log" | tail -6; done | tee "$OUT/tables.txt"
tar czf "$OUT/runs.tgz" -C /tmp/runs --exclude=checkpoints --exclude=final --exclude=tb --exclude=plots .
