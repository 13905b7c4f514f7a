#!/usr/bin/env bash
# README command 1: the main job. A tiny end-to-end Baichuan-M3 reproduction on CPU: tokenizer, SFT on scripted
# expert consultations, then SPAR + Fact-Aware GRPO against the scripted patient, evaluation before / after, plots.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
echo "[demo] building spar" >&2
cargo build --bin spar
exec ./target/debug/spar train --recipe recipes/tiny-cpu.toml "$@"
