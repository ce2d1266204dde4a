"""blkc against PyTorch on the small CPU model (Pre-LN and SAS-P), per
thread count: runs `blkc bench` and bench/torch_ref.py one after the other
for each thread count and prints step times and the speed ratios.

    python bench/race.py [--threads 1 2] [--steps 10] [--compile]
        [--blkc target/release/blkc] [--python python3]

The PyTorch side needs `pip install -r bench/requirements.txt` in the
interpreter given by --python. Results also go to bench/race.json.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def blkc_side(blkc, threads, steps):
    out = subprocess.run(
        [blkc, "bench", "blocks/preln.blk", "blocks/sas-p.blk", "--threads", str(threads),
         "--steps", str(steps), "--format", "json"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {("preln" if "preln" in r["file"] else "sas-p"): r for r in json.loads(out)["records"]}


def torch_side(python, threads, steps, compiled):
    cmd = [python, "bench/torch_ref.py", "--threads", str(threads), "--steps", str(steps)]
    if compiled:
        cmd.append("--compile")
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--blkc", default=str(ROOT / "target/release/blkc"))
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    results = []
    for n in args.threads:
        ours = blkc_side(args.blkc, n, args.steps)
        theirs = torch_side(args.python, n, args.steps, args.compile)
        print(f"\n{n} thread(s): step ms (median), tokens/s, and blkc's speed relative to each")
        print(f"{'block':<7} {'impl':<16} {'step ms':>9} {'tok/s':>8} {'blkc speed':>11}")
        for block in ("preln", "sas-p"):
            b = ours[block]
            print(f"{block:<7} {'blkc':<16} {b['step_ms']:>9.1f} {b['tokens_per_s']:>8.0f} {'':>11}")
            results.append({"threads": n, "block": block, "impl": "blkc", **b})
            for t in theirs:
                if t.get("block") != block:
                    continue
                if "error" in t:
                    print(f"{block:<7} {t['impl']:<16} {'failed: ' + t['error']}")
                    continue
                ratio = t["step_ms"] / b["step_ms"]
                print(f"{block:<7} {t['impl']:<16} {t['step_ms']:>9.1f} {t['tokens_per_s']:>8.0f} {ratio:>10.2f}×")
                results.append({"threads": n, **t, "blkc_speed": ratio})
        sasp = ours["preln"]["step_ms"] / ours["sas-p"]["step_ms"]
        print(f"blkc SAS-P / Pre-LN step speed: {sasp:.3f}×")
    (ROOT / "bench/race.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
