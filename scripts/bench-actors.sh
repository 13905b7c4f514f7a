#!/usr/bin/env bash
# Actors apart from learners vs colocated, on this machine's CPU: the tiny recipe's RL rounds in three layouts,
# each launched as one job (`spar launch`, OMP_NUM_THREADS=1 per rank):
#   colocated   1 rank plays and learns, one after the other
#   lag0        1 learner + 1 actor, max_policy_lag = 0 (on-policy: they take turns)
#   lag1        1 learner + 1 actor, max_policy_lag = 1 (the actor plays round t+1 while the learner learns t)
# and prints each layout's mean seconds per RL round (rounds after the first) and the learner's time line.
# Usage: scripts/bench-actors.sh [ROUNDS] (default 6). SPAR (default target/debug/spar) names the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-6}
SPAR=${SPAR:-${CARGO_TARGET_DIR:-target}/debug/spar}
OUT=$(mktemp -d)
common=(--recipe recipes/tiny-cpu.toml --set trainer.sft_steps=2 --set "trainer.steps=$ROUNDS"
  --set trainer.sft_batch=4 --set rollout.groups_per_step=4 --set rollout.group_size=4
  --set rollout.sampling.max_new_tokens=48 --set eval.max_cases=1 --set eval.max_new_tokens=8
  --set data.max_cases=8 --set trainer.bpe_vocab_size=400 --set trainer.entropy_coef=0.01 --set trainer.eval_every=0)
run() { # name nproc extra...
  local name=$1 n=$2; shift 2
  echo "[bench-actors] $name: $n rank(s)" >&2
  "$SPAR" launch --nproc-per-node "$n" -- train "${common[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
    || { tail -20 "$OUT/$name.log"; exit 1; }
}
run colocated 1
run lag0 2 --set distributed.actors=1 --set distributed.max_policy_lag=0
run lag1 2 --set distributed.actors=1 --set distributed.max_policy_lag=1
python3 - "$OUT" <<'PY'
import json, sys, statistics as st
out = sys.argv[1]
keys = ["rl/step_seconds", "time/play_s", "time/learner_wait_s", "time/learn_s", "time/publish_s", "time/actor_busy_s"]
print(f"{'layout':10} " + " ".join(f"{k.split('/')[1]:>16}" for k in keys) + "  (mean over RL rounds 2..N, s)")
base = None
for name in ["colocated", "lag0", "lag1"]:
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    rows = [r for r in rows if "rl/step_seconds" in r][1:]
    means = [st.mean(r[k] for r in rows) if all(k in r for r in rows) else float("nan") for k in keys]
    base = base or means[0]
    print(f"{name:10} " + " ".join(f"{m:16.3f}" for m in means) + f"  x{base / means[0]:.2f} vs colocated")
PY
rm -rf "$OUT"
