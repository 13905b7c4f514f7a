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
# then the default (with DECODE_PROFILE_ENV, e.g. SPAR_PDL=1) once more with the batches of DECODE_PROFILE (default
# 1,64) recorded by the torch profiler.
# Writes $OUT/decode.jsonl (one line per variant and batch, "variant" added) and $OUT/decode-profile/*.md.
# Expects dist/spar.gz and dist/lib/ (scripts/make-dist.sh); called by scripts/device-issue16.sh (STEPS=decode).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/decode-profile"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c dist/spar.gz > /tmp/spar && chmod +x /tmp/spar
B=${DECODE_BATCH:-1,2,4,8,16,64}
for v in ${DECODE_VARIANTS:-default nopdl pdl pdl-plain cublas}; do
  case $v in
    default) e=() ;;
    cublas) e=(SPAR_SKINNY_LINEAR=0) ;;
    skinny1) e=(SPAR_SKINNY_LINEAR=1) ;;
    pdl) e=(SPAR_PDL=1) ;;
    pdl-plain) e=(SPAR_PDL=1 SPAR_SKINNY_EARLY=0) ;;
    nopdl) e=(SPAR_PDL=0) ;;
    nosplit) e=(SPAR_DECODE_ATTENTION_BLOCKS=8) ;;
    *) echo "unknown variant $v" >&2; continue ;;
  esac
  env "${e[@]}" /tmp/spar bench decode --batch "$B" --prompt 128 --new 128 --paths graph \
    | sed "s/^{/{\"variant\":\"$v\",/" >> "$OUT/decode.jsonl"
done
env ${DECODE_PROFILE_ENV:-} /tmp/spar bench decode --batch "${DECODE_PROFILE:-1,64}" --prompt 128 --new 128 --iters 2 --paths graph \
  --profile /tmp/decode-profile > /dev/null
cp /tmp/decode-profile/*.md "$OUT/decode-profile/"
