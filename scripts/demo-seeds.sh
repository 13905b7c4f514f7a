#!/usr/bin/env bash
# The main job over several seeds (default 0 1 2), one after another, then mean +- std of the held-out scores
# (initial, after SFT, after RL, scripted expert) from each run's comparison.json into runs/<recipe>-seeds.md.
# Usage: [RECIPE=tiny-cpu] scripts/demo-seeds.sh [SEED ...]   (default recipe: the main job's, tiny-cpu-partial).
# For arms paired on one SFT checkpoint per seed with CIs, use `spar ablate ablate-main` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
cargo build --bin spar
recipe=${RECIPE:-tiny-cpu-partial}
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
dirs=()
for s in "${seeds[@]}"; do
  d="runs/$recipe-s$s"
  echo "[demo-seeds] seed $s -> $d" >&2
  start=$(date +%s)
  ./target/debug/spar train --recipe "recipes/$recipe.toml" --set "seed=$s" --out "$d"
  echo "$(( $(date +%s) - start ))" > "$d/wall_seconds"
  dirs+=("$d")
done
"$SPAR_PYTHON" - "$recipe" "${dirs[@]}" <<'PY'
import json, statistics, sys
recipe = sys.argv[1]
runs = [(d, json.load(open(f"{d}/comparison.json")), int(open(f"{d}/wall_seconds").read())) for d in sys.argv[2:]]
def ms(xs):
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"
cols = ["reward", "inquiry", "ddx", "lab", "diag", "stage mean"]
lines = [f"# {recipe} over {len(runs)} seeds (held-out, greedy; mean ± std)", "",
         "| phase | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
for key, label in [("initial", "initial (random)"), ("before_rl", "after SFT"), ("after_rl", "after RL"), ("expert", "scripted expert")]:
    rows = [r[key] for _, r, _ in runs if key in r]
    if not rows:
        continue
    vals = [[x["reward_mean"]] + list(x["stage_means"]) + [statistics.mean(x["stage_means"])] for x in rows]
    lines.append(f"| {label} | " + " | ".join(ms([v[i] for v in vals]) for i in range(len(cols))) + " |")
gain = [r["after_rl"]["reward_mean"] - r["before_rl"]["reward_mean"] for _, r, _ in runs]
sgain = [statistics.mean(r["after_rl"]["stage_means"]) - statistics.mean(r["before_rl"]["stage_means"]) for _, r, _ in runs]
lines += ["", f"RL gain in held-out reward (after RL - after SFT): {ms(gain)}",
          f"RL gain in held-out stage mean: {ms(sgain)} (per seed: {', '.join(f'{g:+.3f}' for g in sgain)})",
          f"wall seconds per run: {', '.join(str(w) for _, _, w in runs)}",
          "seeds: " + ", ".join(str(r['seed']) for _, r, _ in runs)]
out = "\n".join(lines) + "\n"
open(f"runs/{recipe}-seeds.md", "w").write(out)
print(out)
PY
