#!/usr/bin/env bash
# `spar ablate` on the GPU host, several specs at once: `scripts/device-ablate.sh SPEC[:JOBS]...`.
# Expects dist/spar.gz (stripped build) and dist/lib/ carried (as scripts/cpu-matrix.sh). Extra `spar ablate`
# flags for every spec in ABLATE_ARGS (e.g. `--set model.device="cuda"`); LIMIT seconds per spec (default 540).
# Results land in $OUT: <spec>.txt (the ablation's console table) and ablate.tgz (every run folder without weights,
# checkpoints or transcripts), to aggregate here with `spar ablate SPEC --out DIR --report-only`.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/abl
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nproc; nvidia-smi --query-gpu=name,memory.used --format=csv) > "$OUT/env.txt" 2>&1
for arg in "$@"; do
  spec=${arg%%:*}; jobs=${arg#*:}; [ "$jobs" = "$arg" ] && jobs=4
  name=$(basename "$spec" .toml)
  ( s=$(date +%s)
    eval "set -- ${ABLATE_ARGS:-}"
    timeout "${LIMIT:-540}" /tmp/spar ablate "$spec" --out "/tmp/abl/$name" --jobs "$jobs" \
      --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" "$@" > "/tmp/abl/$name.txt" 2>&1
    echo "$name rc=$? wall=$(( $(date +%s) - s ))s" >> "/tmp/abl/$name.txt" ) &
done
wait
cp /tmp/abl/*.txt "$OUT/"
tar czf "$OUT/ablate.tgz" -C /tmp/abl --exclude=checkpoints --exclude=final --exclude=tb --exclude=tokenizer \
  --exclude=transcripts .
