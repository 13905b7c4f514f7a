#!/usr/bin/env bash
# Issue 16's prefill question in one device call: is the engine's prefill of new turns bound by host dispatch
# (~70 ms per forward on an H100 whatever its size), and does the fused prefill (model/src/fused_prefill.rs) cut it?
#   1. the GPU tests of the fused prefill and the graph decode (dist/tests-model.gz, a stripped release test
#      binary of spar-model, when carried);
#   2. the consultation round (scripts/device-consult.sh: the single-GPU recipe on a random 0.6B shape, SFT steps
#      first so that turns are short) twice, fused prefill and plain forward (SPAR_FUSED_PREFILL=0), with RL round 2
#      recorded by the torch profiler in both: where each prefill's time goes (host ops, CUDA runtime calls, GPU
#      kernels) and the round's time line.
# Expects dist/spar.gz, dist/lib/, dist/tokenizer/ carried (and dist/tests-model.gz for step 1). Knobs: NGROUPS (8),
# ROUND_STEPS (2 RL rounds after the SFT steps; the second is profiled),
# SFT (2), NEW (128), LIMIT (240 s per run), EXTRA (more --set arguments), RUNS (below), SKIP_TESTS (no step 1).
# Writes to $OUT: gpu-tests.txt, prefill-RUN.{jsonl,txt} and prefill-RUN-profile.md for each run (the .txt ends with
# scripts/gpu_busy.py's table: nvidia-smi's GPU busy share of each round's generation, scoring and learning).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
if [ -f dist/tests-model.gz ] && [ -z "${SKIP_TESTS:-}" ]; then
  gunzip -c dist/tests-model.gz > /tmp/tests-model && chmod +x /tmp/tests-model
  (cd model && timeout 120 /tmp/tests-model fused_prefill graph_decode --test-threads 1) > "$OUT/gpu-tests.txt" 2>&1
  echo "rc=$?" >> "$OUT/gpu-tests.txt"
fi
export NGROUPS=${NGROUPS:-8} STEPS=${ROUND_STEPS:-2} EVAL=1 SFT=${SFT:-2} NEW=${NEW:-128} PROFILE=2 LIMIT=${LIMIT:-240}
export EXTRA="--set rollout.max_batch=64 --set rollout.gpu_memory_utilization=0.85 --set eval.max_new_tokens=16 ${EXTRA:-}"
# RUNS picks the rounds (default "fused plain"): fused (the defaults), plain (SPAR_FUSED_PREFILL=0), padded
# (SPAR_VARLEN_PREFILL=0: the fused prefill's turns right-padded through SDPA, not packed through flash), overlap
# (SPAR_PREFILL_OVERLAP=1: the decode step queued ahead of the prefill, the default from 20089e5 to the 2026-12-07
# day), serial (SPAR_PREFILL_OVERLAP=0: the prefill first, the default again), old (the padded prefill, serial:
# the prefill of 918ed62), cudnn
# (SPAR_SDPA_CUDNN=1: torch's cuDNN attention kept, as before 2026-12-06), wait (rollout.prefill_wait_steps = WAIT,
# default 4: new turns share prefill forwards), micro (the learner's micro-batches of 16 rows and 24,576 tokens
# without activation checkpointing, instead of the recipe's 4 rows, 16,384 tokens, checkpointed), sampling0
# (SPAR_FUSED_SAMPLING=0: temperature sampling through the torch composition instead of one kernel), graphs (the
# defaults with trainer.learner_cuda_graphs = true), gp0
# (SPAR_GRAPH_PREFILL_TOKENS=0: every prefill eager, none replayed from a CUDA graph, as before 2026-12-07 evening),
# gp2048 (SPAR_GRAPH_PREFILL_TOKENS=2048: prefills of up to 2,048 new tokens replayed from graphs, not 512),
# async0 (SPAR_ASYNC_DECODE=0: each decode step's tokens read before the next is queued, as before 2026-12-07 night),
# keep0 / keep1 (SPAR_KEEP_GRAPHS=0 / 1: the engine's graphs captured anew each round, or kept from the last round
# with the KV cache at fixed addresses, rollout/src/engine/kept_graphs.rs), gp2048-keep1 (both), halves
# (SPAR_DECODE_ATTENTION=halves: decode attention two keys at a time, a half-warp each), micro-graphs (micro's
# learner with the graphs), base (the defaults of the build in dist/spar-base.gz: an A/B against another commit).
for r in ${RUNS:-fused plain}; do
  case $r in
    fused) NAME=prefill-fused scripts/device-consult.sh ;;
    base) NAME=prefill-base SPAR_GZ=dist/spar-base.gz scripts/device-consult.sh ;;
    plain) NAME=prefill-plain SPAR_FUSED_PREFILL=0 scripts/device-consult.sh ;;
    padded) NAME=prefill-padded SPAR_VARLEN_PREFILL=0 scripts/device-consult.sh ;;
    overlap) NAME=prefill-overlap SPAR_PREFILL_OVERLAP=1 scripts/device-consult.sh ;;
    serial) NAME=prefill-serial SPAR_PREFILL_OVERLAP=0 scripts/device-consult.sh ;;
    old) NAME=prefill-old SPAR_VARLEN_PREFILL=0 SPAR_PREFILL_OVERLAP=0 scripts/device-consult.sh ;;
    cudnn) NAME=prefill-cudnn SPAR_SDPA_CUDNN=1 scripts/device-consult.sh ;;
    wait) NAME=prefill-wait EXTRA="$EXTRA --set rollout.prefill_wait_steps=${WAIT:-4}" scripts/device-consult.sh ;;
    micro) NAME=prefill-micro EXTRA="$EXTRA --set trainer.micro_batch=16 --set trainer.token_budget=24576 \
             --set model.activation_checkpointing=false" scripts/device-consult.sh ;;
    gp0) NAME=prefill-gp0 SPAR_GRAPH_PREFILL_TOKENS=0 scripts/device-consult.sh ;;
    gp2048) NAME=prefill-gp2048 SPAR_GRAPH_PREFILL_TOKENS=2048 scripts/device-consult.sh ;;
    async0) NAME=prefill-async0 SPAR_ASYNC_DECODE=0 scripts/device-consult.sh ;;
    keep0) NAME=prefill-keep0 SPAR_KEEP_GRAPHS=0 scripts/device-consult.sh ;;
    keep1) NAME=prefill-keep1 SPAR_KEEP_GRAPHS=1 scripts/device-consult.sh ;;
    halves) NAME=prefill-halves SPAR_DECODE_ATTENTION=halves scripts/device-consult.sh ;;
    gp2048-keep1) NAME=prefill-gp2048-keep1 SPAR_GRAPH_PREFILL_TOKENS=2048 SPAR_KEEP_GRAPHS=1 scripts/device-consult.sh ;;
    sampling0) NAME=prefill-sampling0 SPAR_FUSED_SAMPLING=0 scripts/device-consult.sh ;;
    graphs) NAME=prefill-graphs EXTRA="$EXTRA --set trainer.learner_cuda_graphs=true" scripts/device-consult.sh ;;
    micro-graphs) NAME=prefill-micro-graphs EXTRA="$EXTRA --set trainer.micro_batch=16 --set trainer.token_budget=24576 \
             --set model.activation_checkpointing=false --set trainer.learner_cuda_graphs=true" scripts/device-consult.sh ;;
  esac
done
# The unprofiled rounds' GPU busy share by phase (nvidia-smi's utilization, sampled every 0.25 s), kept in the run's
# .txt before the samples go: the profiled round's share counts the profiler's host overhead as idle.
for csv in "$OUT"/*-gpu.csv; do
  [ -f "$csv" ] && python3 scripts/gpu_busy.py "${csv%-gpu.csv}.jsonl" "$csv" >> "${csv%-gpu.csv}.txt" 2>&1
done
rm -f "$OUT"/*-gpu.csv "$OUT"/*.trace.json.gz
true
