#!/usr/bin/env bash
# bf16 parity of spar with HF transformers on random models (issue 3): for each case spar writes a random model
# (HF format, bf16 weights), input ids and its fp32 / bf16 logits (`spar bench forward --parity-dir`), then
# scripts/gpu_parity.py runs transformers on the same weights and prints one JSON line of differences.
#
# GPU (default when CUDA is visible): Qwen3-0.6B shape (28 layers) and Qwen3-30B-A3B shape with 2 layers.
# CPU (DEVICE=cpu, or no GPU): tiny dense and MoE configs, including the dense config of the model test
# `bf16_forward_is_close_to_fp32` with its x4 weights, whose bf16 drift is large in spar AND transformers.
#
# Env: SPAR (the spar binary; default: target/release/spar, else target/debug/spar), PYTHON (default
# $SPAR_PYTHON or python3), DEVICE (cuda|cpu), OUT (results: parity.jsonl), WORK (case folders, default a
# temp dir, deleted at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-${SPAR_PYTHON:-python3}}
if [ -z "${SPAR:-}" ]; then
  for s in target/release/spar target/debug/spar; do [ -x "$s" ] && SPAR=$s && break; done
fi
[ -x "${SPAR:-}" ] || { echo "gpu-parity.sh: no spar binary (set SPAR=...)" >&2; exit 2; }
if [ -z "${DEVICE:-}" ]; then
  DEVICE=$("$PYTHON" -c 'import torch;print("cuda" if torch.cuda.is_available() else "cpu")')
fi
OUT=${OUT:-/tmp/spar-parity}; mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d)}; trap 'rm -rf "$WORK"' EXIT
RESULTS="$OUT/parity.jsonl"; : > "$RESULTS"
fail=0

case_run() { # name, spar bench forward args...
  local name=$1; shift
  echo "== $name" >&2
  if ! "$SPAR" bench forward --device "$DEVICE" --parity-dir "$WORK/$name" "$@" >&2; then
    echo "gpu-parity.sh: spar failed on $name" >&2; fail=1; return
  fi
  if ! "$PYTHON" scripts/gpu_parity.py "$WORK/$name" --device "$DEVICE" --name "$name" | tee -a "$RESULTS"; then
    echo "gpu-parity.sh: transformers side failed on $name" >&2; fail=1
  fi
  rm -rf "${WORK:?}/$name"
}

if [ "$DEVICE" = cpu ]; then
  cat > "$WORK/dense_tiny.json" <<'EOF'
{"model_type":"qwen3","vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
 "num_attention_heads":4,"num_key_value_heads":1,"head_dim":8,"tie_word_embeddings":true}
EOF
  cat > "$WORK/moe_tiny.json" <<'EOF'
{"model_type":"qwen3_moe","vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":3,
 "num_attention_heads":4,"num_key_value_heads":2,"head_dim":8,"num_experts":6,"num_experts_per_tok":2,
 "moe_intermediate_size":16,"norm_topk_prob":true,"decoder_sparse_step":1,"mlp_only_layers":[1]}
EOF
  # The model test's configs and x4 weights, then the same configs at transformers' own init scale.
  case_run dense_tiny_x4 --config "$WORK/dense_tiny.json" --init-scale 4 --batch 1 --seq 7
  case_run moe_tiny_x4 --config "$WORK/moe_tiny.json" --init-scale 4 --batch 1 --seq 7
  case_run dense_tiny_x1 --config "$WORK/dense_tiny.json" --batch 2 --seq 32
  case_run moe_tiny_x1 --config "$WORK/moe_tiny.json" --batch 2 --seq 32
else
  case_run qwen3-0.6b --shape qwen3-0.6b --batch 2 --seq 128
  case_run qwen3-30b-a3b-2l --shape qwen3-30b-a3b --layers 2 --batch 2 --seq 128
fi
"$PYTHON" - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'case':<18} {'spar16-hf16 max/mean':>24} {'hf16-hf32 max/mean':>22} {'spar16-spar32':>16} {'spar32-hf32':>12} {'top1 s16/h16':>12} parity")
for r in rows:
    p, y, s, f = r["spar_bf16_vs_hf_bf16"], r["hf_bf16_vs_hf_fp32"], r["spar_bf16_vs_spar_fp32"], r["spar_fp32_vs_hf_fp32"]
    print(f"{r['case']:<18} {p['max_abs']:>11.4g}/{p['mean_abs']:<11.3g} {y['max_abs']:>10.4g}/{y['mean_abs']:<10.3g} "
          f"{s['max_abs']:>7.3g} r{s['rel']:<7.2g} {f['max_abs']:>11.2g} {p['top1']:>12.3f} {r['parity']}")
EOF
exit $fail
