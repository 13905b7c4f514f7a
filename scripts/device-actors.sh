#!/usr/bin/env bash
# The small process layouts of issue 17 on the one lent GPU: the tiny recipe (recipes/tiny-cpu.toml on cuda) trained
# colocated (one process), with one actor apart from one learner (on-policy and one-step off-policy), and with two
# expert-parallel learner ranks. Two ranks share the GPU (rank r -> cuda:r mod GPUs), which NCCL refuses, so the
# layouts run over gloo (distributed.backend = "gloo"; gloo moves CUDA tensors through host memory). Expects
# dist/spar.gz (stripped build) carried. Writes to $OUT: <layout>.txt (the run's log), <layout>.jsonl (metrics),
# summary.txt (rc, wall time, per-round seconds and the held-out table of each layout). ONLY="ep2 ..." runs
# those layouts alone; TAG prefixes the output names. RECIPE (recipes/tiny-cpu.toml), MODEL (a model folder for model.path) and EXTRA (more --set
# arguments) run another workload; SHAPE (and LAYERS) make MODEL a random model of that shape
# (scripts/random-model.sh), e.g. the single-GPU recipe: RECIPE=recipes/single-gpu-qwen3-0.6b.toml SHAPE=qwen3-0.6b.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
[ -n "${SHAPE:-}" ] && [ -z "${MODEL:-}" ] && MODEL=$(scripts/random-model.sh "$SHAPE" ${LAYERS:-})
common=(--recipe "${RECIPE:-recipes/tiny-cpu.toml}" --set 'model.device="cuda"' --set trainer.sft_steps=${SFT_STEPS:-30}
        --set trainer.steps=${STEPS:-4} --set eval.max_cases=${EVAL:-2} --set trainer.save_every=0
        --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" --set 'distributed.backend="gloo"' ${MODEL:+--set "model.path=\"$MODEL\""} ${EXTRA:-})
layouts=(
  "colocated 1"
  "actor-lag0 2 --set distributed.actors=1"
  "actor-lag1 2 --set distributed.actors=1 --set distributed.max_policy_lag=1"
  "ep2 2 --set distributed.expert_parallel=2"
)
for l in "${layouts[@]}"; do
  set -- $l; layout=$1; n=$2; shift 2
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $layout "* ]] && continue
  name=${TAG:-}$layout
  s=$(date +%s)
  timeout "${LIMIT:-150}" /tmp/spar launch --nproc-per-node "$n" -- train "${common[@]}" "$@" --out "/tmp/$name" --overwrite \
    > "$OUT/$name.txt" 2>&1
  rc=$?
  cp "/tmp/$name/metrics.jsonl" "$OUT/$name.jsonl" 2>/dev/null
  { echo "== $name ($n process(es)) rc=$rc wall=$(( $(date +%s) - s ))s"
    python3 - "/tmp/$name/metrics.jsonl" <<'PY' 2>/dev/null
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rl = [r for r in rows if "rl/loss" in r]
for r in rl:
    print("  step", r["step"], {k: round(v, 3) for k, v in r.items()
          if k.startswith("time/") or k in ("rl/reward_mean", "rl/policy_lag", "rl/step_seconds")})
PY
    grep -A4 "held-out (" "$OUT/$name.txt" | head -5
    [ $rc -ne 0 ] && tail -5 "$OUT/$name.txt"; } >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
