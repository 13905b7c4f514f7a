#!/usr/bin/env bash
# One GRPO iteration on TRL's workload (Qwen3-0.6B shape, 8 prompts x 8 completions, 128-token prompts, 256 new
# tokens, DAPO loss), spar and TRL in the same call, interleaved: spar, TRL, spar (GPU timings drift between
# calls). Expects dist/spar.gz, dist/lib/ and the TRL wheels (.whl/: trl, datasets, dill, multiprocess) carried.
# Writes to $OUT: grpo.jsonl (spar's per-iteration lines, TRL's per-step and summary lines), grpo.txt, env.txt.
# MICROS="32 64" adds spar runs with those micro-batch sizes after the others (the DAPO loss is a token mean over the
# whole batch, so the micro-batching changes only speed and memory, not the update). A/B runs, each one more spar
# run: SAMPLING_AB=1 with SPAR_GRAPH_SAMPLING=0, FUSED_SAMPLING_AB=1 with SPAR_FUSED_SAMPLING=0, CUDNN_AB=1 with
# SPAR_SDPA_CUDNN=1, NORM_AB=1 with SPAR_ATEN_RMS_NORM=0, MASK_AB=1 with SPAR_PADDING_MASK=1, COMPACT=1 with the
# compact optimizer state. PROFILE=1 adds a spar run (micro-batch PROFILE_MICRO) and a TRL run (unless
# SKIP_TRL_PROFILE=1; PROFILE_ARGS: more arguments of the profiled spar run) whose last iteration the torch profiler records, summarised alike: $OUT/grpo-profile.md (spar)
# and $OUT/grpo-trl-profile.md
# (TRL's trace through `spar bench trace`).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv; python3 -c 'import torch, transformers;
print(torch.__version__, transformers.__version__)') > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >> "$OUT/env.txt" 2>&1
W=(--prompts ${PROMPTS:-8} --group ${GROUP:-8} --prompt-len ${PROMPT_LEN:-128} --new ${NEW:-256})
spar() { timeout 300 /tmp/spar bench grpo "${W[@]}" --micro-batch ${MB:-${MICRO:-8}} --warmup 1 --iters ${ITERS:-3} "$@" 2>>"$OUT/grpo.txt" \
  | grep '^{' >> "$OUT/grpo.jsonl"; }
spar
(cd model/bench && PYTHONPATH=/tmp/site timeout 400 python3 grpo_trl.py "${W[@]}" --micro-batch ${MICRO:-8} --warmup 1 --iters ${ITERS:-3} \
  2>>"$OUT/grpo.txt" | grep '^{' >> "$OUT/grpo.jsonl")
spar
[ -n "${CKPT:-}" ] && spar --checkpointing
for m in ${MICROS:-}; do MB=$m spar; done
# GRAPH_MICROS="8 64": spar again with the learner's micro-steps replayed as CUDA graphs (--learner-graphs) at each
# of those micro-batch sizes (the lines carry "learner_graphs").
for m in ${GRAPH_MICROS:-}; do MB=$m spar --learner-graphs; done
# SAMPLING_AB=1: spar once more with the sampling outside the decode graphs (the lines carry "graph_sampling").
[ -n "${SAMPLING_AB:-}" ] && SPAR_GRAPH_SAMPLING=0 spar
# FUSED_SAMPLING_AB=1: spar once more with temperature sampling through the torch composition instead of one kernel
# (SPAR_FUSED_SAMPLING=0; the lines carry "fused_sampling").
[ -n "${FUSED_SAMPLING_AB:-}" ] && SPAR_FUSED_SAMPLING=0 spar
# CUDNN_AB=1: spar once more with torch's cuDNN attention allowed (the lines carry "sdpa_cudnn").
[ -n "${CUDNN_AB:-}" ] && SPAR_SDPA_CUDNN=1 spar
# NORM_AB=1: spar once more with the seven-op RMSNorm composition under autograd (the lines carry "aten_rms_norm").
[ -n "${NORM_AB:-}" ] && SPAR_ATEN_RMS_NORM=0 spar
# MASK_AB=1: spar once more with the padding mask in the learner's forward (the lines carry "padding_mask").
[ -n "${MASK_AB:-}" ] && SPAR_PADDING_MASK=1 spar
# COMPACT=1: spar once more with trainer.optimizer_state = "compact" (peak memory against TRL's bf16 AdamW state).
[ -n "${COMPACT:-}" ] && spar --optimizer-state compact
if [ -n "${PROFILE:-}" ]; then
  MB=${PROFILE_MICRO:-${MICRO:-8}} spar --profile /tmp/grpo-profile ${PROFILE_ARGS:-}
  cp /tmp/grpo-profile/grpo.md "$OUT/grpo-profile.md"
  if [ -z "${SKIP_TRL_PROFILE:-}" ]; then
  (cd model/bench && PYTHONPATH=/tmp/site timeout 400 python3 grpo_trl.py "${W[@]}" --micro-batch ${MICRO:-8} --warmup 1 \
    --iters 1 --profile /tmp/grpo-trl-trace.json 2>>"$OUT/grpo.txt" | grep '^{' >> "$OUT/grpo.jsonl")
  /tmp/spar bench trace /tmp/grpo-trl-trace.json > "$OUT/grpo-trl-profile.md" 2>>"$OUT/grpo.txt"
  fi
fi
true
