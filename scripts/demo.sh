#!/usr/bin/env bash
# README command 1: the main job. A tiny end-to-end Baichuan-M3 reproduction on CPU: tokenizer, SFT on a good but
# imperfect scripted expert's consultations, then SPAR + Fact-Aware GRPO against the scripted patient, held-out
# evaluation before / during / after RL next to the full expert, plots (recipes/tiny-cpu-partial.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
# Charts need no system font: their text is set in a font compiled into spar (spar-plot-text).
echo "[demo] building spar" >&2
cargo build --bin spar
exec ./target/debug/spar train --recipe recipes/tiny-cpu-partial.toml "$@"
