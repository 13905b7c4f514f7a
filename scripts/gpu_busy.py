#!/usr/bin/env python3
"""GPU busy share per RL round phase, from a run's metrics.jsonl and the nvidia-smi samples that
scripts/device-consult.sh writes ("unix seconds,utilization.gpu %,memory.used MiB" every 0.25 s).

A round's row is logged at its end (`time`), after `rl/step_seconds`; the round plays first (generation, then
scoring: `time/generate_s`, `time/score_s`) and learns after (`time/learn_s`). For each round and phase this
prints the mean utilization of the samples inside the window and the peak memory.

usage: python3 scripts/gpu_busy.py METRICS.jsonl GPU.csv
"""
import json
import sys


def main(metrics_path, csv_path):
    samples = []
    for line in open(csv_path):
        parts = line.strip().split(",")
        if len(parts) == 3 and parts[1].isdigit():
            samples.append((float(parts[0]), int(parts[1]), int(parts[2])))
    rows = [json.loads(l) for l in open(metrics_path) if l.strip()]
    print("step  phase     seconds  samples  gpu_busy%  peak_MiB")
    for r in rows:
        if "rl/step_seconds" not in r:
            continue
        start = r["time"] - r["rl/step_seconds"]
        gen = r.get("time/generate_s", 0.0)
        score = r.get("time/score_s", 0.0)
        learn = r.get("time/learn_s", 0.0)
        windows = [("generate", start, start + gen), ("score", start + gen, start + gen + score),
                   ("learn", r["time"] - learn, r["time"]), ("round", start, r["time"])]
        for name, a, b in windows:
            inside = [s for s in samples if a <= s[0] <= b]
            busy = sum(s[1] for s in inside) / len(inside) if inside else float("nan")
            peak = max((s[2] for s in inside), default=0)
            print(f"{r['step']:>4}  {name:<8} {b - a:8.2f}  {len(inside):7d}  {busy:9.1f}  {peak:8d}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
