#!/usr/bin/env bash
# Decode A/B on the GPU machine: `spar bench decode` (graph path, 128-token prompts, 128 new greedy tokens, batches
# DECODE_BATCH) once per variant of DECODE_VARIANTS, each a name and the environment it runs under:
#   default     the build's defaults (SPAR_PDL=small: programmatic launches in the graphs of 1-2-row steps);
#   nopdl       SPAR_PDL=0 (plain stream order everywhere: the default before 2026-12-06, late night);
#   cublas      SPAR_SKINNY_LINEAR=0 (every decode projection through cuBLAS);
#   skinny1     SPAR_SKINNY_LINEAR=1 (the skinny kernel at batch 1 only);
#   pdl         SPAR_PDL=1 (programmatic dependent launch of spar's decode kernels at every batch; the skinny
#               projections load their first weights before the launch wait);
#   pdl-plain   SPAR_PDL=1 SPAR_SKINNY_EARLY=0 (the same launches, the skinny projections' loads after the wait);
#   nosplit     SPAR_DECODE_ATTENTION_BLOCKS=8 (decode attention split over fewer blocks: one split at batch 1);
#   oldsplit    SPAR_DECODE_ATTENTION_BLOCKS=256 (~256 blocks whatever the device, as before the split rule looked
#               at occupancy: differs from the default only where that grid overflows one wave);
#   blocknorm   SPAR_ADD_RMS_NORM=block (the residual add + RMSNorm a block a row, not a warp a row);
#   sample      the defaults, tokens sampled at temperature 1 (as rollouts draw them) instead of greedy;
#   sample1     the same with SPAR_TEMPERATURE_PICK_PARTS=1 (a block a row for the sampling kernel at every batch);
#   kernelmerge SPAR_DECODE_ATTENTION_MERGE=kernel (split decode attention merged by a second kernel, not by the
#               last split to finish);
#   halves      SPAR_DECODE_ATTENTION=halves (decode attention folding two keys at a time, a half-warp each);
#   sync        SPAR_ASYNC_DECODE=0 (each step's tokens read before the next step is queued: the engine before
#               2026-12-07 night; the default queues step k+1 behind step k, rollout/src/engine/async_decode.rs);
#   base        the defaults of another build, dist/spar-base.gz (e.g. the commit before a kernel change: its
#               BUILT_AT in dist/BASE_AT), for an A/B of changes no variable switches;
# With DECODE_LONG (e.g. "default base"), those variants once more at 4,096-token prompts, batches
# DECODE_LONG_BATCH (1,64), 64 new tokens, into $OUT/decode-long.jsonl. Then the default (with DECODE_PROFILE_ENV,
# e.g. SPAR_PDL=1) once more with the batches of DECODE_PROFILE (default 1,64; empty: no profile) recorded by the torch
# profiler.
# Writes $OUT/decode.jsonl (one line per variant and batch, "variant" added) and $OUT/decode-profile/*.md.
# Expects dist/spar.gz and dist/lib/ (scripts/make-dist.sh); called by scripts/device-issue16.sh (STEPS=decode).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/decode-profile"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
[ -f dist/spar-base.gz ] && gunzip -c dist/spar-base.gz > /tmp/spar-base && chmod +x /tmp/spar-base
B=${DECODE_BATCH:-1,2,4,8,16,64}
# The binary, environment and extra bench arguments of variant $1, in bin, e and x.
variant() {
  bin=/tmp/spar; x=()
  case $1 in
    sample) e=(); x=(--temperature 1) ;;
    sample1) e=(SPAR_TEMPERATURE_PICK_PARTS=1); x=(--temperature 1) ;;
    default) e=() ;;
    sync) e=(SPAR_ASYNC_DECODE=0) ;;
    base) e=(); bin=/tmp/spar-base ;;
    oldsplit) e=(SPAR_DECODE_ATTENTION_BLOCKS=256) ;;
    blocknorm) e=(SPAR_ADD_RMS_NORM=block) ;;
    kernelmerge) e=(SPAR_DECODE_ATTENTION_MERGE=kernel) ;;
    cublas) e=(SPAR_SKINNY_LINEAR=0) ;;
    skinny1) e=(SPAR_SKINNY_LINEAR=1) ;;
    pdl) e=(SPAR_PDL=1) ;;
    pdl-plain) e=(SPAR_PDL=1 SPAR_SKINNY_EARLY=0) ;;
    nopdl) e=(SPAR_PDL=0) ;;
    halves) e=(SPAR_DECODE_ATTENTION=halves) ;;
    nosplit) e=(SPAR_DECODE_ATTENTION_BLOCKS=8) ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
  [ -x "$bin" ] || { echo "variant $1: no $bin (dist/spar-base.gz)" >&2; return 1; }
}
for v in ${DECODE_VARIANTS:-default nopdl pdl pdl-plain cublas}; do
  variant "$v" || continue
  env "${e[@]}" "$bin" bench decode --batch "$B" --prompt 128 --new 128 --paths graph "${x[@]}" \
    | sed "s/^{/{\"variant\":\"$v\",/" >> "$OUT/decode.jsonl"
done
for v in ${DECODE_LONG:-}; do
  variant "$v" || continue
  env "${e[@]}" "$bin" bench decode --batch "${DECODE_LONG_BATCH:-1,64}" --prompt 4096 --new 64 --paths graph "${x[@]}" \
    | sed "s/^{/{\"variant\":\"$v\",/" >> "$OUT/decode-long.jsonl"
done
[ "${DECODE_PROFILE-1,64}" = "" ] && exit 0
env ${DECODE_PROFILE_ENV:-} /tmp/spar bench decode --batch "${DECODE_PROFILE:-1,64}" --prompt 128 --new 128 --iters 2 --paths graph \
  --profile /tmp/decode-profile > /dev/null
cp /tmp/decode-profile/*.md "$OUT/decode-profile/"
