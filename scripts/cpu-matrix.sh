#!/usr/bin/env bash
# Several `spar train` runs at once on a many-core host (the GPU machine's CPU cores, GPU unused), each pinned to
# its own CORES cores with taskset as on the 2-core machines the demo targets. MATRIX names a file of lines
# "<name> <spar train args...>" (recipe and --set flags). Expects dist/spar.gz (stripped build) and dist/lib/
# carried; results land in $OUT (summary.txt, tables.txt, runs.tgz without weights).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/runs
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" CUDA_VISIBLE_DEVICES=""
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
CORES=${CORES:-2}
(nproc; lscpu | grep -i "model name") | tee "$OUT/env.txt"
i=0
while read -r name args; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  first=$((CORES*i)); i=$((i+1))
  cores=$(seq -s, "$first" $((first+CORES-1)))
  ( s=$(date +%s)
    eval "set -- $args"
    OMP_NUM_THREADS=$CORES MKL_NUM_THREADS=$CORES timeout "${LIMIT:-560}" taskset -c "$cores" /tmp/spar train \
      --out "/tmp/runs/$name" --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" "$@" > "/tmp/runs/$name.log" 2>&1
    echo "$name rc=$? wall=$(( $(date +%s) - s ))s" >> /tmp/runs/summary.txt ) &
done < "$MATRIX"
wait
cat /tmp/runs/summary.txt | tee "$OUT/summary.txt"
for d in /tmp/runs/*/; do n=$(basename "$d"); echo "== $n"; grep -a "\[train\]" "/tmp/runs/$n.log" | tail -8; done > "$OUT/tables.txt"
tar czf "$OUT/runs.tgz" -C /tmp/runs --exclude=checkpoints --exclude=final --exclude=tb --exclude=tokenizer .
