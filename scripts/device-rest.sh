#!/usr/bin/env bash
# Weights sharded at rest (`[distributed] weights_at_rest = "sharded"`, the 235B recipe's layout) on the one lent GPU,
# with `spar serve` as the rollout server: two processes share the GPU.
#   1. a short SFT run of the tiny recipe gives the starting HF folder (or MODEL=<folder>);
#   2. `spar serve` serves it on loopback (port 0; the address is read from its log);
#   3. `spar launch --nproc-per-node $RANKS` trains from it fully sharded with the weights sharded at rest (NCCL for
#      one rank on cuda, gloo otherwise): every rank reads its chunks of the folder, rounds and held-out
#      evaluations play through the server, and the server loads each policy version the ranks write.
# DEVICE=cpu runs the same on the CPU with target/debug/spar (how this script is checked without a GPU); on cuda it
# expects dist/spar.gz carried. Writes to $OUT: base.txt, serve.txt, rest.txt (logs), rest.jsonl (metrics),
# serve-stats.json (the server's /stats, weight_version included) and summary.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
RANKS=${RANKS:-1}
if [ "$DEVICE" = cuda ]; then
  . scripts/gpu-env.sh
  gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
  SPAR=/tmp/spar
else
  SPAR=${SPAR:-target/debug/spar}
fi
recipe=(--recipe recipes/tiny-cpu.toml --set "model.device=\"$DEVICE\"" --set "data.cases=\"$PWD/data/cases/cases.jsonl\""
        --set eval.max_cases=${EVAL:-2} --set eval.max_new_tokens=32 --set trainer.save_every=0)
if [ -z "${MODEL:-}" ]; then
  "$SPAR" train "${recipe[@]}" --set trainer.sft_steps=${SFT_STEPS:-10} --set trainer.steps=0 --out /tmp/rest-base \
    --overwrite > "$OUT/base.txt" 2>&1 || { tail -5 "$OUT/base.txt"; exit 1; }
  MODEL=/tmp/rest-base/final
fi
"$SPAR" serve --model "$MODEL" --device "$DEVICE" --port 0 --max-model-len 2048 > /dev/null 2> "$OUT/serve.txt" &
serve_pid=$!
url=""
for _ in $(seq 240); do
  url=$(grep -o 'spar serve: http://[0-9.:]*/v1' "$OUT/serve.txt" | head -1 | cut -d' ' -f3)
  [ -n "$url" ] && break
  sleep 0.5
done
[ -z "$url" ] && { echo "spar serve did not start:"; cat "$OUT/serve.txt"; kill $serve_pid; exit 1; }
root=${url%/v1}
backend=gloo
[ "$DEVICE" = cuda ] && [ "$RANKS" = 1 ] && backend=nccl
s=$(date +%s)
timeout "${LIMIT:-300}" "$SPAR" launch --nproc-per-node "$RANKS" -- train "${recipe[@]}" --out /tmp/rest-run --overwrite \
  --set "model.path=\"$MODEL\"" --set trainer.bpe_vocab_size=0 --set trainer.kl_coef=0.0 \
  --set trainer.sft_steps=${SFT2:-2} --set trainer.steps=${STEPS:-3} --set rollout.groups_per_step=${ROUND_GROUPS:-4} \
  --set rollout.sampling.max_new_tokens=${NEW_TOKENS:-32} \
  --set 'rollout.backend="openai"' --set "rollout.endpoint={ base_url = \"$url\", model = \"rest\", timeout_s = 300.0 }" \
  --set 'rollout.weight_sync.kind="sglang"' --set "rollout.weight_sync.servers=[\"$root\"]" \
  --set 'distributed.sharding="full"' --set 'distributed.weights_at_rest="sharded"' \
  --set "distributed.backend=\"$backend\"" ${EXTRA:-} > "$OUT/rest.txt" 2>&1
rc=$?
python3 - "$root" > "$OUT/serve-stats.json" <<'PY' 2>/dev/null
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1] + "/stats", timeout=10).read().decode())
PY
kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null
cp /tmp/rest-run/metrics.jsonl "$OUT/rest.jsonl" 2>/dev/null
{ echo "== weights sharded at rest: $RANKS rank(s) over $backend, spar serve on $DEVICE: rc=$rc wall=$(( $(date +%s) - s ))s"
  grep -o "Per rank: .*" "$OUT/rest.txt" | head -1
  python3 - /tmp/rest-run/metrics.jsonl <<'PY' 2>/dev/null
import json, sys
for r in (json.loads(l) for l in open(sys.argv[1])):
    if "rl/loss" in r:
        print("  step", r["step"], {k: round(v, 3) for k, v in r.items()
              if k.startswith("time/") or k in ("rl/reward_mean", "rl/policy_lag", "rl/step_seconds")})
PY
  echo "  server: $(cat "$OUT/serve-stats.json")"
  grep -A4 "held-out (" "$OUT/rest.txt" | head -5
  [ $rc -ne 0 ] && tail -8 "$OUT/rest.txt"; } >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
