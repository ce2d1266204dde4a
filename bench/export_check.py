"""Holds `blkc export --format pytorch` to blkc: for each export directory
given (holding model.py, model.safetensors and expected.json, the logits
blkc computed for `tokens`), loads the PyTorch model and compares its
logits. Run by bench/export-check.sh; needs PyTorch.

    python bench/export_check.py DIR...
"""

import importlib.util
import json
import sys

import torch


def check(d):
    spec = importlib.util.spec_from_file_location("exported", f"{d}/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.load(f"{d}/model.safetensors")
    want = json.load(open(f"{d}/expected.json"))
    tokens = torch.tensor([want["tokens"]])
    with torch.no_grad():
        got = m(tokens)[0]
    exp = torch.tensor(want["logits"])
    diff = (got - exp).abs().max().item()
    scale = exp.abs().max().item()
    return diff, scale


def main():
    worst = 0.0
    for d in sys.argv[1:]:
        diff, scale = check(d)
        worst = max(worst, diff / max(scale, 1e-6))
        print(f"{d}: max |torch - blkc| = {diff:.3e} (logits up to {scale:.3f})")
    print(f"worst relative difference {worst:.3e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
