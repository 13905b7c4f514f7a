#!/usr/bin/env bash
# The fully sharded learner on the lent GPU (world size 1): `spar bench train` on the Qwen3-0.6B shape, plain
# (without and with activation checkpointing), sharded in one process, and sharded through `spar launch
# --nproc-per-node 1` (ProcessGroupNCCL: the real all-gathers and reduce-scatters); then a short `spar train` of
# the tiny recipe sharded through NCCL (SKIP_TRAIN=1 skips it); then transformers' step on the same shape and batch
# (model/bench/train_hf.py; SKIP_HF=1 skips it). Expects dist/spar.gz (stripped build) and dist/lib/ carried.
# Writes to $OUT: bench.jsonl (one line per configuration), bench.txt, train.txt, train.jsonl, env.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
(nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv) > "$OUT/env.txt" 2>&1
SH=(--shape ${SHAPE:-qwen3-0.6b} ${LAYERS:+--layers $LAYERS})
B=(bench train "${SH[@]}" --dtype bf16 --batch ${BATCH:-8} --seq ${SEQ:-1024}
   --warmup 2 --iters ${ITERS:-5})
# CONFIGS picks spar's configurations (default: all four): plain ckpt sharded launch, and compact / ckpt-compact
# (plain / ckpt with trainer.optimizer_state = "compact": no fp32 masters, bf16 first moments), packed /
# ckpt-packed (the same with "packed": an int8 compensation, a 24-bit second moment), compact-adam0 (compact with
# the AdamW step as chunked torch ops: SPAR_FUSED_ADAMW=0), graphs /
# graphs-compact / graphs-ckpt-compact (the same with the micro-steps replayed as CUDA graphs), graphs-adam0 (graphs
# with the AdamW step as torch ops: SPAR_FUSED_ADAMW=0); NAME:M runs one with
# micro-batches of M sequences (e.g. "plain:8"). PROFILE=1 records one more step of the first configuration
# with the torch profiler: $OUT/train-profile.md.
prof=${PROFILE:+--profile /tmp/train-profile}
for name in ${CONFIGS:-plain ckpt sharded launch}; do
  envs=(); micro=(--micro-batch ${MICRO:-2}); [[ $name == *:* ]] && micro=(--micro-batch "${name#*:}") && name=${name%%:*}
  case $name in
    plain) cfg=() ;; ckpt) cfg=(--checkpointing) ;; sharded) cfg=(--sharded) ;;
    compact) cfg=(--optimizer-state compact) ;; ckpt-compact) cfg=(--checkpointing --optimizer-state compact) ;;
    packed) cfg=(--optimizer-state packed) ;; ckpt-packed) cfg=(--checkpointing --optimizer-state packed) ;;
    compact-adam0) cfg=(--optimizer-state compact); envs=(SPAR_FUSED_ADAMW=0) ;;
    graphs) cfg=(--learner-graphs) ;; graphs-compact) cfg=(--learner-graphs --optimizer-state compact) ;;
    graphs-ckpt-compact) cfg=(--learner-graphs --checkpointing --optimizer-state compact) ;;
    graphs-packed) cfg=(--learner-graphs --optimizer-state packed) ;;
    graphs-adam0) cfg=(--learner-graphs); envs=(SPAR_FUSED_ADAMW=0) ;;
    launch) timeout 200 /tmp/spar launch --nproc-per-node 1 -- "${B[@]}" "${micro[@]}" --sharded 2>>"$OUT/bench.txt" \
              | sed 's/^\[rank 0\] //' | tail -1 >> "$OUT/bench.jsonl"; continue ;;
  esac
  env "${envs[@]}" timeout 200 /tmp/spar "${B[@]}" "${micro[@]}" "${cfg[@]}" $prof 2>>"$OUT/bench.txt" | tail -1 >> "$OUT/bench.jsonl"
  [ -n "$prof" ] && cp /tmp/train-profile/train.md "$OUT/train-profile.md" 2>/dev/null; prof=""
done
if [ -z "${SKIP_TRAIN:-}" ]; then
run=(train --recipe recipes/tiny-cpu.toml --set 'model.device="cuda"' --set trainer.sft_steps=${SFT_STEPS:-20}
     --set trainer.steps=${STEPS:-3} --set eval.max_cases=${EVAL_CASES:-2} --set 'distributed.sharding="full"'
     --set 'distributed.backend="nccl"' --set "data.cases=\"$PWD/data/cases/cases.jsonl\"")
timeout "${LIMIT:-200}" /tmp/spar launch --nproc-per-node 1 -- "${run[@]}" --out /tmp/sharded > "$OUT/train.txt" 2>&1
echo "train rc=$?" >> "$OUT/train.txt"; cp /tmp/sharded/metrics.jsonl "$OUT/train.jsonl" 2>/dev/null
ls -R /tmp/sharded/checkpoints | head -30 >> "$OUT/train.txt"
fi
# transformers' step on the same shape and batch (fp32 weights + bf16 autocast, as TRL / Trainer with bf16=True).
if [ -z "${SKIP_HF:-}" ]; then
  for name in ${HF_CONFIGS:-plain ckpt}; do
    hm=${MICRO:-2}; [[ $name == *:* ]] && hm=${name#*:} && name=${name%%:*}
    cfg=""; [ "$name" = ckpt ] && cfg=--gradient-checkpointing
    (cd model/bench && timeout 200 python3 train_hf.py "${SH[@]}" --batch ${BATCH:-8} --micro-batch $hm \
      --seq ${SEQ:-1024} --iters ${ITERS:-5} $cfg 2>>"$OUT/bench.txt" | tail -1 >> "$OUT/bench.jsonl")
  done
fi
