"""Holds `blkc export --format pytorch` to blkc: for each export directory
given (holding model.py, model.safetensors and expected.json, the logits
blkc computed for `tokens`), loads the PyTorch model and compares its
logits; where the directory also holds grads.safetensors (blkc's gradient
of the mean next-token cross-entropy on `tokens`, from
runtime/examples/grads.rs) and expected.json its `loss`, compares the loss
and every parameter's gradient under PyTorch's autograd. Run by
bench/export-check.sh; needs PyTorch.

    python bench/export_check.py DIR...
"""

import importlib.util
import json
import os
import sys

import torch


def exported(d):
    """The export's module, its model with the weights, what blkc
    computed (expected.json) and its tokens as a batch of one."""
    spec = importlib.util.spec_from_file_location("exported", f"{d}/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    want = json.load(open(f"{d}/expected.json"))
    return mod, mod.load(f"{d}/model.safetensors"), want, torch.tensor([want["tokens"]])


def check(d):
    _, m, want, tokens = exported(d)
    with torch.no_grad():
        got = m(tokens)[0]
    exp = torch.tensor(want["logits"])
    diff = (got - exp).abs().max().item()
    scale = exp.abs().max().item()
    return diff, scale


def check_grads(d):
    """The loss's difference, and the worst gradient's (over its largest
    entry) with its name; None without blkc's gradients."""
    if not os.path.exists(f"{d}/grads.safetensors"):
        return None
    mod, m, want, tokens = exported(d)
    logits = m(tokens[:, :-1])[0]
    loss = torch.nn.functional.cross_entropy(logits, tokens[0, 1:])
    loss.backward()
    theirs = mod.read_safetensors(f"{d}/grads.safetensors")
    worst, name = 0.0, ""
    trained = dict(m.named_parameters())
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in trained.items()}
    # A gradient that is zero in exact arithmetic (a key's bias: the
    # softmax does not see it, and blkc leaves it out) is round-off in
    # PyTorch: gaps are measured against a thousandth of the largest
    # gradient of the model at least.
    floor = 1e-3 * max(g.abs().max().item() for g in grads.values())
    for n, g in grads.items():
        b = theirs[n]
        gap = (g - b).abs().max().item() / max(g.abs().max().item(), floor, 1e-12)
        if gap > worst:
            worst, name = gap, n
    # What does not train in PyTorch (a reparameterised map's W_init, a
    # buffer) has no gradient in blkc either.
    for n, b in theirs.items():
        if n not in trained and b.abs().max().item() != 0.0:
            return abs(loss.item() - want["loss"]), float("inf"), n
    return abs(loss.item() - want["loss"]), worst, name


def main():
    worst = 0.0
    worst_grad = 0.0
    for d in sys.argv[1:]:
        diff, scale = check(d)
        worst = max(worst, diff / max(scale, 1e-6))
        print(f"{d}: max |torch - blkc| = {diff:.3e} (logits up to {scale:.3f})")
        grads = check_grads(d)
        if grads is not None:
            loss_gap, gap, name = grads
            worst = max(worst, loss_gap)
            worst_grad = max(worst_grad, gap)
            print(f"    loss differs by {loss_gap:.3e}; worst gradient {name}: {gap:.3e} of its largest entry")
    print(f"worst relative difference {worst:.3e}; worst gradient difference {worst_grad:.3e}")
    sys.exit(0 if worst < 1e-4 and worst_grad < 1e-3 else 1)


if __name__ == "__main__":
    main()
