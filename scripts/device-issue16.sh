#!/usr/bin/env bash
# Issue 16's open measurements in one device call, most wanted first, each started only while the call's budget
# still has room for it (a device call may run 600 s; a machine's start costs minutes, so one call beats four).
#   prefill  the consultation round with cuDNN attention off (the default since 85609fc), then with new turns
#            sharing prefill forwards (rollout.prefill_wait_steps = 4): scripts/device-prefill.sh, RUNS="fused
#            wait", one profiled round each;
#   grpo     one GRPO iteration on TRL's workload, spar / TRL / spar, then compact state, then one profiled
#            (scripts/device-grpo.sh, ITERS=2: $OUT/grpo-profile.md says where the ~1 s learn phase goes);
#   train    the training step, 0.6B shape, plain and checkpointed, fp32 and compact optimizer state, next to
#            transformers (scripts/device-sharded.sh): MFU, tokens/s, peak memory, optimizer_state_gib, and
#            the first configuration's step profiled ($OUT/train-profile.md);
#   wait     the batched-prefill round alone (RUNS=wait), when the first call's files did not come back;
#   moe      the training step on the Qwen3-30B-A3B shape at MOE_LAYERS (4: fits an H100's 78 GiB next to
#            transformers), plain and checkpointed with the compact optimizer state, into $OUT/moe/;
#   moe-rl   the consultation RL loop on the Qwen3-30B-A3B shape at MOE_LAYERS with routing replay and the compact
#            state (MOE_RL_STATE=packed: the packed one; scripts/device-consult.sh, MOE_RL_STEPS rounds): memory and
#            the time line, into $OUT/moe-rl.*;
#   rounds   the round as the recipe now stands, then with the learner's larger micro-batches, then with sampling
#            through the torch composition (scripts/device-prefill.sh, RUNS=ROUND_RUNS: "fused micro sampling0");
#   long     a few hundred RL steps of the single-GPU recipe on the 0.6B shape (small rounds: LONG_SFT SFT
#            steps, then LONG_GROUPS x LONG_GROUP samples, LONG_NEW new tokens a turn, LONG_STEPS steps): the loss,
#            memory and time per step over the run (scripts/device-consult.sh, into $OUT/long.*). With 2 x 4 samples
#            and 32 tokens a turn (the first try) every group of the random model scored alike and no update ran.
#            More steps than one call holds: the first call with RUN_DIR=$PWD/runs/long SAVE_EVERY=N (checkpoints in a
#            git-ignored folder, which a machine that stays warm keeps), the next call on the same machine with
#            RESUME=1 as well (scripts/device-consult.sh);
#   cudnn    the round once more with cuDNN attention on (SPAR_SDPA_CUDNN=1), against the first;
#   norm0    the train step's configurations again with SPAR_ATEN_RMS_NORM=0 (the seven-op RMSNorm composition
#            under autograd), into $OUT/norm0/: the baseline of ATen's fused RMSNorm;
#   mask1    the same with SPAR_PADDING_MASK=1 (the learner's forward with an explicit padding mask: memory-efficient
#            attention over copied KV heads instead of flash), into $OUT/mask1/;
#   kernels  the GPU tests of spar-kernels (dist/tests-kernels.gz: TESTS="kernels model trainer" make-dist.sh);
#   offload  the GPU tests of the parked optimizer and the flat AdamW (dist/tests-trainer.gz);
#   trainer-tests  the trainer's GPU tests named in TRAINER_TESTS (default "learner_graphs offload adamw");
#   model-tests    the model's GPU tests named in MODEL_TESTS (default "graph_decode fused_prefill");
#   rollout-tests  the rollout crate's tests named in ROLLOUT_TESTS (default "gpu": the engine's GPU tests;
#                  dist/tests-rollout.gz: TESTS="... rollout" make-dist.sh);
#   pdl-tests      the spar-kernels GPU tests and the model's graph_decode ones under SPAR_PDL=1 (programmatic
#                  launches, the skinny projections' early-weights variants): $OUT/pdl-tests.txt;
#   decode   spar bench decode on the graph path in the variants of scripts/device-decode.sh (DECODE_VARIANTS),
#            batches DECODE_BATCH, and profiles: $OUT/decode.jsonl, $OUT/decode-profile/.
# STEPS picks and orders them (default "moe-rl grpo train mask1": what the 2026-12-06 calls left unmeasured first,
# then GRPO vs TRL and the training step again with every change since, and the padding mask's A/B; MASK_AB=1 adds
# its GRPO A/B). BUDGET (570 s) is the call's seconds; each step declares what it needs (NEED_*), so a step that
# cannot finish is skipped and said so in $OUT/steps.txt rather than killed half-way. Expects what the scripts it
# calls expect: `WHEELS=1 scripts/make-dist.sh` builds `dist/` and `.whl/`; carry ["dist", ".whl"]. Writes each
# script's files to $OUT, steps.txt (each step's start, seconds and exit code), and $OUT/issue16.tgz with every
# file (a call brings back 8 files: move the rest out of $OUT).
set -uo pipefail
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BUDGET=${BUDGET:-570}
start=$(date +%s)
step() {
  local name=$1 need=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - start) ))
  if (( left < need )); then
    echo "$name: skipped, $left s left of $BUDGET (needs $need)" >> "$OUT/steps.txt"; return
  fi
  local t0=$(date +%s)
  "$@"; local rc=$?
  echo "$name: rc=$rc, $(( $(date +%s) - t0 )) s (started at +$(( t0 - start )) s)" >> "$OUT/steps.txt"
}
for s in ${STEPS:-moe-rl grpo train mask1}; do
  case $s in
    prefill) step prefill ${NEED_PREFILL:-240} env SKIP_TESTS=1 RUNS="fused wait" LIMIT=${PREFILL_LIMIT:-110} \
               scripts/device-prefill.sh ;;
    wait) step wait ${NEED_WAIT:-140} env SKIP_TESTS=1 RUNS=wait LIMIT=${PREFILL_LIMIT:-110} \
            scripts/device-prefill.sh ;;
    moe) step moe ${NEED_MOE:-200} env OUT="$OUT/moe" SHAPE=qwen3-30b-a3b LAYERS=${MOE_LAYERS:-4} \
           CONFIGS="${MOE_CONFIGS:-plain ckpt-compact}" HF_CONFIGS=plain SKIP_TRAIN=1 ITERS=4 PROFILE= \
           scripts/device-sharded.sh ;;
    moe-rl) step moe-rl ${NEED_MOE_RL:-300} env NAME=moe-rl SHAPE=qwen3-30b-a3b LAYERS=${MOE_LAYERS:-4} \
              STEPS=${MOE_RL_STEPS:-3} LIMIT=${MOE_RL_LIMIT:-280} EXTRA="--set rollout.record_routing=true \
              --set trainer.routing_replay=true --set trainer.optimizer_state=\"${MOE_RL_STATE:-compact}\" --set rollout.max_batch=64" \
              scripts/device-consult.sh ;;
    rounds) step rounds ${NEED_ROUNDS:-330} env SKIP_TESTS=1 RUNS="${ROUND_RUNS:-fused micro sampling0}" \
              LIMIT=${PREFILL_LIMIT:-110} scripts/device-prefill.sh ;;
    long) step long ${NEED_LONG:-300} env NAME=long NGROUPS=${LONG_GROUPS:-2} GROUP=${LONG_GROUP:-8} NEW=${LONG_NEW:-64} \
            SFT=${LONG_SFT:-2} STEPS=${LONG_STEPS:-250} EVAL=1 LIMIT=${LONG_LIMIT:-500} EXTRA="--set rollout.max_batch=64" \
            scripts/device-consult.sh ;;
    cudnn) step cudnn ${NEED_CUDNN:-120} env SKIP_TESTS=1 RUNS=cudnn LIMIT=${PREFILL_LIMIT:-110} \
             scripts/device-prefill.sh ;;
    grpo) step grpo ${NEED_GRPO:-180} env ITERS=2 CUDNN_AB=${CUDNN_AB:-} FUSED_SAMPLING_AB=${FUSED_SAMPLING_AB:-} COMPACT=${COMPACT-1} PROFILE=${PROFILE-1} \
            PROFILE_MICRO=${PROFILE_MICRO:-8} SKIP_TRL_PROFILE=1 scripts/device-grpo.sh ;;
    train) step train ${NEED_TRAIN:-120} env CONFIGS="${TRAIN_CONFIGS:-plain:2 compact:2 ckpt-compact:2}" \
             HF_CONFIGS="${HF_CONFIGS:-plain:2}" SKIP_TRAIN=1 ITERS=${TRAIN_ITERS:-4} PROFILE=${PROFILE-1} \
             scripts/device-sharded.sh ;;
    norm0) step norm0 ${NEED_NORM0:-60} env OUT="$OUT/norm0" SPAR_ATEN_RMS_NORM=0 CONFIGS="${TRAIN_CONFIGS:-plain:2}" \
             SKIP_HF=1 SKIP_TRAIN=1 ITERS=${TRAIN_ITERS:-4} PROFILE= scripts/device-sharded.sh ;;
    mask1) step mask1 ${NEED_MASK1:-60} env OUT="$OUT/mask1" SPAR_PADDING_MASK=1 CONFIGS="${TRAIN_CONFIGS:-plain:2}" \
             SKIP_HF=1 SKIP_TRAIN=1 ITERS=${TRAIN_ITERS:-4} PROFILE= scripts/device-sharded.sh ;;
    kernels) step kernels ${NEED_KERNELS:-30} bash -c '. scripts/gpu-env.sh && export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" &&
               gunzip -c dist/tests-kernels.gz > /tmp/tests-kernels && chmod +x /tmp/tests-kernels && cd kernels &&
               timeout 120 /tmp/tests-kernels --test-threads 1 --nocapture > "$OUT/kernels-tests.txt" 2>&1' ;;
    offload) step offload ${NEED_OFFLOAD:-30} bash -c '. scripts/gpu-env.sh && export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" &&
               gunzip -c dist/tests-trainer.gz > /tmp/tests-trainer &&
               chmod +x /tmp/tests-trainer && cd trainer && timeout 60 /tmp/tests-trainer offload adamw \
               --test-threads 1 > "$OUT/offload-tests.txt" 2>&1' ;;
    trainer-tests) step trainer-tests ${NEED_TRAINER_TESTS:-60} bash -c '. scripts/gpu-env.sh &&
               export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" && gunzip -c dist/tests-trainer.gz > /tmp/tests-trainer &&
               chmod +x /tmp/tests-trainer && cd trainer && timeout 120 /tmp/tests-trainer ${TRAINER_TESTS:-learner_graphs offload adamw} \
               --test-threads 1 --nocapture > "$OUT/trainer-tests.txt" 2>&1' ;;
    model-tests) step model-tests ${NEED_MODEL_TESTS:-60} bash -c '. scripts/gpu-env.sh &&
               export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" && gunzip -c dist/tests-model.gz > /tmp/tests-model &&
               chmod +x /tmp/tests-model && cd model && timeout 150 /tmp/tests-model ${MODEL_TESTS:-graph_decode fused_prefill} \
               --test-threads 1 > "$OUT/model-tests.txt" 2>&1' ;;
    rollout-tests) step rollout-tests ${NEED_ROLLOUT_TESTS:-40} bash -c '. scripts/gpu-env.sh &&
               export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" && gunzip -c dist/tests-rollout.gz > /tmp/tests-rollout &&
               chmod +x /tmp/tests-rollout && cd rollout && timeout 120 /tmp/tests-rollout ${ROLLOUT_TESTS:-gpu} \
               --test-threads 1 > "$OUT/rollout-tests.txt" 2>&1' ;;
    pdl-tests) step pdl-tests ${NEED_PDL_TESTS:-60} bash -c '. scripts/gpu-env.sh && export SPAR_PDL=1 &&
               export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH" && gunzip -c dist/tests-kernels.gz > /tmp/tests-kernels &&
               gunzip -c dist/tests-model.gz > /tmp/tests-model && chmod +x /tmp/tests-kernels /tmp/tests-model &&
               (cd kernels && timeout 120 /tmp/tests-kernels --test-threads 1) > "$OUT/pdl-tests.txt" 2>&1 &&
               (cd model && timeout 150 /tmp/tests-model graph_decode --test-threads 1) >> "$OUT/pdl-tests.txt" 2>&1' ;;
    decode) step decode ${NEED_DECODE:-120} env DECODE_BATCH="${DECODE_BATCH:-1,2,4,8,16,64}" scripts/device-decode.sh ;;
    *) echo "$s: unknown step (prefill wait rounds long grpo train norm0 mask1 moe moe-rl cudnn kernels offload trainer-tests model-tests rollout-tests pdl-tests decode)" >> "$OUT/steps.txt" ;;
  esac
done
cat "$OUT/steps.txt"
# $OUT brings back at most 8 files: everything also goes back as one archive.
(cd "$OUT" && tar czf /tmp/issue16.tgz --exclude issue16.tgz . && mv /tmp/issue16.tgz .)
