#!/usr/bin/env bash
# The main job over several seeds (default 0 1 2), one after another, then mean +- std of the held-out scores
# (initial, after SFT, after RL, scripted expert) from each run's comparison.json into runs/tiny-cpu-seeds.md.
# Usage: scripts/demo-seeds.sh [SEED ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
cargo build --bin spar
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
dirs=()
for s in "${seeds[@]}"; do
  d="runs/tiny-cpu-s$s"
  echo "[demo-seeds] seed $s -> $d" >&2
  start=$(date +%s)
  ./target/debug/spar train --recipe recipes/tiny-cpu.toml --set "seed=$s" --out "$d"
  echo "$(( $(date +%s) - start ))" > "$d/wall_seconds"
  dirs+=("$d")
done
"$SPAR_PYTHON" - "${dirs[@]}" <<'PY'
import json, statistics, sys
runs = [(d, json.load(open(f"{d}/comparison.json")), int(open(f"{d}/wall_seconds").read())) for d in sys.argv[1:]]
def ms(xs):
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"
cols = ["reward", "inquiry", "ddx", "lab", "diag"]
lines = [f"# tiny-cpu over {len(runs)} seeds (held-out, greedy; mean ± std)", "",
         "| phase | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
for key, label in [("initial", "initial (random)"), ("before_rl", "after SFT"), ("after_rl", "after RL"), ("expert", "scripted expert")]:
    rows = [r[key] for _, r, _ in runs if key in r]
    if not rows:
        continue
    vals = [[x["reward_mean"]] + list(x["stage_means"]) for x in rows]
    lines.append(f"| {label} | " + " | ".join(ms([v[i] for v in vals]) for i in range(len(cols))) + " |")
gain = [r["after_rl"]["reward_mean"] - r["before_rl"]["reward_mean"] for _, r, _ in runs]
lines += ["", f"RL gain in held-out reward (after RL - after SFT): {ms(gain)}",
          f"wall seconds per run: {', '.join(str(w) for _, _, w in runs)}",
          "seeds: " + ", ".join(str(r['seed']) for _, r, _ in runs)]
out = "\n".join(lines) + "\n"
open("runs/tiny-cpu-seeds.md", "w").write(out)
print(out)
PY
