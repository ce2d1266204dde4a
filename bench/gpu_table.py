"""The table of bench/gpu-check.sh: blkc's rows beside PyTorch's, tokens/s
of a whole training step at the CodeParrot shape, and issue 15's targets
as ratios.

    python bench/gpu_table.py OUT_DIR > table.md

Reads what `bench/gpu-check.sh run` wrote to OUT_DIR: `blkc*-{fp32,tf32,bf16}-b{N}.json`
(`blkc bench --format json`), `torch-{fp32,tf32,bf16}-b{N}[-compile].jsonl`
(bench/torch_ref.py), `device.txt`, `device-resume.txt` and `device-fused.txt` (the
device test's outputs) and
`curve-{fp32,bf16}.jsonl` (metrics of two training runs). A missing file
leaves its cells empty.
"""

import json
import re
import sys
from pathlib import Path

BLOCKS = ("preln", "sas-p")


def blkc_rows(out):
    """{(binary, precision, batch): {block: record}}"""
    rows = {}
    for f in sorted(out.glob("blkc*-b*.json")):
        m = re.fullmatch(r"(blkc(?:-\w+)?)-(fp32|tf32|bf16)-b(\d+)\.json", f.name)
        if not m:
            continue
        try:
            records = json.loads(f.read_text())["records"]
        except (ValueError, KeyError):
            continue
        by_block = {}
        for r in records:
            by_block["sas-p" if "sas-p" in r["file"] else "preln"] = r
        rows[(m[1], m[2], int(m[3]))] = by_block
    return rows


def torch_rows(out):
    """{(impl, dtype, batch): {block: record}}"""
    rows = {}
    for f in sorted(out.glob("torch-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "error" in r or "step_ms" not in r:
                continue
            rows.setdefault((r["impl"], r["dtype"], r["batch"]), {})[r["block"]] = r
    return rows


def k(x):
    return f"{x / 1e3:.1f}K" if x else ""


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def tps(row, block):
    r = (row or {}).get(block)
    return r["tokens_per_s"] if r else None


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu-check")
    ours, theirs = blkc_rows(out), torch_rows(out)
    gpu = (out / "gpu.csv").read_text().strip().splitlines()[-1] if (out / "gpu.csv").exists() else "?"
    print(f"GPU: {gpu}\n")
    print("Tokens/s of a whole training step, CodeParrot shape (18 × 768, 12 heads, T 128, vocab 50k);")
    print("MiB: device memory the allocator holds after a step (blkc: the process's pool, both models of the")
    print("run; PyTorch: its peak reserved, one model);")
    print("MFU against the device's measured rate for a large product in that precision.\n")
    print("| | precision | batch | Pre-LN | SAS-P | SAS-P / Pre-LN | MiB (Pre-LN / SAS-P) | MFU (Pre-LN / SAS-P) |")
    print("|---|---|---|---|---|---|---|---|")
    names = {"pytorch-eager": "PyTorch eager", "pytorch-compile": "torch.compile"}
    labels = {"fp32": " (TF32 off)", "tf32": " (TF32 on)", "bf16": " (autocast)"}
    for dtype in ("fp32", "tf32", "bf16"):
        for batch in (32, 128):
            for (binary, p, b), row in sorted(ours.items()):
                if (p, b) != (dtype, batch):
                    continue
                a, s = tps(row, "preln"), tps(row, "sas-p")
                mib = " / ".join(f"{row[x]['peak_mib']:.0f}" if row.get(x, {}).get("peak_mib") else "–" for x in BLOCKS)
                mfu = " / ".join(f"{row[x]['mfu'] * 100:.0f}%" if row.get(x, {}).get("mfu") else "–" for x in BLOCKS)
                print(f"| {binary} | {p} | {b} | {k(a)} | {k(s)} | {ratio(s, a)} | {mib} | {mfu} |")
            for impl in ("pytorch-eager", "pytorch-compile"):
                row = theirs.get((impl, dtype, batch))
                if not row:
                    continue
                a, s = tps(row, "preln"), tps(row, "sas-p")
                mib = " / ".join(f"{row[x]['peak_mib']:.0f}" if row.get(x, {}).get("peak_mib") else "–" for x in BLOCKS)
                label = names[impl] + labels[dtype]
                print(f"| {label} | {dtype} | {batch} | {k(a)} | {k(s)} | {ratio(s, a)} | {mib} | |")
    print("\nTargets (issue 15): ratios of tokens/s")
    print("| target | batch | block | blkc | against | ratio |")
    print("|---|---|---|---|---|---|")
    for dtype in ("fp32", "tf32", "bf16"):
        for batch in (32, 128):
            eager = theirs.get(("pytorch-eager", dtype, batch))
            for (binary, p, b), row in sorted(ours.items()):
                if (p, b) != (dtype, batch):
                    continue
                for block in BLOCKS:
                    print(f"| {dtype} blkc ≥ 1.0× eager | {batch} | {block} | {binary} | eager {dtype} "
                          f"| {ratio(tps(row, block), tps(eager, block))} |")
    compiled = theirs.get(("pytorch-compile", "bf16", 32))
    for (binary, p, b), row in sorted(ours.items()):
        if p == "bf16" and b == 32:
            print(f"| blkc bf16 SAS-P ≥ torch.compile bf16 Pre-LN | 32 | sas-p / preln | {binary} | compile bf16 "
                  f"| {ratio(tps(row, 'sas-p'), tps(compiled, 'preln'))} |")
    for (binary, p, b), row in sorted(ours.items()):
        print(f"| SAS-P / Pre-LN ≥ 1.15 | {b} | {p} | {binary} | itself | {ratio(tps(row, 'sas-p'), tps(row, 'preln'))} |")
    for name, what in (("device.txt", "Device checks"), ("device-resume.txt", "Resume check"),
                       ("device-fused.txt", "Device checks with fusion")):
        device = out / name
        if device.exists():
            text = device.read_text()
            results = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
            print(f"\n{what} (runtime/tests/device.rs): {results or f'no result (see {name})'}")
    curves = {}
    for p in ("fp32", "bf16"):
        f = out / f"curve-{p}.jsonl"
        if f.exists():
            lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            curves[p] = {line["step"]: line for line in lines}
    if len(curves) == 2:
        print("\nQuick SAS-P on CUDA, fp32 against bf16 (training loss; validation loss where evaluated):")
        print("| step | fp32 | bf16 |")
        print("|---|---|---|")
        for step in sorted(set(curves["fp32"]) & set(curves["bf16"])):
            a, b = curves["fp32"][step], curves["bf16"][step]
            if step % 50 and step != 10:
                continue
            ev = lambda r: f" ({r['eval_loss']:.3f})" if r.get("eval_loss") is not None else ""
            print(f"| {step} | {a['loss']:.3f}{ev(a)} | {b['loss']:.3f}{ev(b)} |")


if __name__ == "__main__":
    main()
