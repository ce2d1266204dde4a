#!/usr/bin/env python3
"""Validation loss of a `blkc compare` directory at every evaluation, mean
over the seeds (min-max in brackets), as a Markdown table; then the final
value range of every trainable gain of one variant over its layers.

    python3 bench/compare_table.py runs/compare [--gains sas-p]
"""
import argparse
import json
import pathlib
import statistics


def metrics(run):
    with open(run / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--gains", help="variant whose gains to summarise (seed 0)")
    a = ap.parse_args()
    variants = sorted(p for p in a.dir.iterdir() if p.is_dir() and any(p.glob("seed-*/metrics.jsonl")))
    table = {}
    for v in variants:
        per_step = {}
        for run in sorted(v.glob("seed-*")):
            for m in metrics(run):
                if "eval_loss" in m:
                    per_step.setdefault(m["step"], []).append(m["eval_loss"])
        table[v.name] = per_step
    steps = sorted({s for t in table.values() for s in t})
    print("| variant | " + " | ".join(str(s) for s in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, per_step in table.items():
        cells = []
        for s in steps:
            xs = per_step.get(s, [])
            cells.append(f"{statistics.mean(xs):.3f}" if xs else "")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.gains:
        last = metrics(a.dir / a.gains / "seed-0")[-1]
        by_name = {}
        for key, value in last.get("gains", {}).items():
            layer, name = key.split(".", 1)
            by_name.setdefault(name, []).append(value)
        print(f"\ngains of {a.gains} (seed 0) at step {last['step']}, over the layers:")
        for name, values in sorted(by_name.items()):
            print(f"  {name}: {min(values):.3f}-{max(values):.3f}")


if __name__ == "__main__":
    main()
