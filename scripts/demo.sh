#!/usr/bin/env bash
# README command 1: the main job. A tiny end-to-end Baichuan-M3 reproduction on CPU: tokenizer, SFT on a good but
# imperfect scripted expert's consultations, then SPAR + Fact-Aware GRPO against the scripted patient, held-out
# evaluation before / during / after RL next to the full expert, plots (recipes/tiny-cpu-partial.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
# Charts need one system font; a bare Debian/Ubuntu image has none.
if ! fc-list 2>/dev/null | grep -q . && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[demo] installing a font for the charts (fonts-dejavu-core)" >&2
  (apt-get install -y -qq fonts-dejavu-core fontconfig >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq fonts-dejavu-core fontconfig >/dev/null 2>&1)) \
    || echo "[demo] no font installable here: the run goes on without charts" >&2
fi
echo "[demo] building spar" >&2
cargo build --bin spar
exec ./target/debug/spar train --recipe recipes/tiny-cpu-partial.toml "$@"
