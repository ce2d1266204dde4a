"""Pre-LN and SAS-P in plain PyTorch, timed the way `blkc bench` times its
lowered modules: one training step is forward, cross-entropy, backward,
global-norm clipping (1.0) and an AdamW update (decay on matrices only),
ended by reading the loss back; the median of the timed steps after the
warm-up steps. Eager and, with --compile, torch.compile.

    python bench/torch_ref.py --threads 1 [--steps 10] [--compile]
    python bench/torch_ref.py --device cuda --shape codeparrot --batch 32 \
        --dtype bf16 [--compile]

Prints one JSON object per (block, mode) on stdout. The models mirror
blocks/preln.blk and blocks/sas-p.blk as blkc lowers them (docs/lowering.md):
learned positions, final LayerNorm, tied embeddings, RMSNorm (eps 1e-5),
ReLU MLP of width 4d without biases, Q/K with biases, GPT-2 init N(0, 0.02).
Shapes: `small` is examples/small/ (6 blocks, width 256, 4 heads, context
128, vocab 4096, batch 16); `codeparrot` is examples/codeparrot/ (18 blocks,
width 768, 12 heads, context 128, vocab 50000, a 1024-row position table,
batch 32).

Precision as a PyTorch user runs it: `fp32` with TF32 off (exact fp32
products, as blkc's `--precision fp32`); `tf32` with TF32 on
(`allow_tf32`, as blkc's `--precision tf32`); `bf16` is
`torch.autocast(dtype=torch.bfloat16)` over fp32 weights, as blkc's
`--precision bf16`. On CUDA the AdamW is `fused=True`, and the JSON has the
peak GPU memory that PyTorch reserved (`peak_mib`).
"""

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# depth, width, heads, context, vocab, position rows, batch
SHAPES = {
    "small": (6, 256, 4, 128, 4096, 128, 16),
    "codeparrot": (18, 768, 12, 128, 50000, 1024, 32),
}
DEPTH, WIDTH, HEADS, CONTEXT, VOCAB, POSITIONS, BATCH = SHAPES["small"]


def use_shape(name, batch):
    """Sets the module-level shape the model classes read."""
    global DEPTH, WIDTH, HEADS, CONTEXT, VOCAB, POSITIONS, BATCH
    DEPTH, WIDTH, HEADS, CONTEXT, VOCAB, POSITIONS, BATCH = SHAPES[name]
    if batch:
        BATCH = batch


def normal(*shape):
    return nn.Parameter(torch.randn(*shape) * 0.02)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class Mlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = normal(d, 4 * d)
        self.down = normal(4 * d, d)

    def forward(self, x):
        return F.relu(x @ self.up) @ self.down


def heads(x):
    b, t, d = x.shape
    return x.view(b, t, HEADS, d // HEADS).transpose(1, 2)


def merge(x):
    b, h, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, h * hd)


class Attention(nn.Module):
    """Standard causal attention (Pre-LN): Q/K with biases, V and P linear."""

    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.p = normal(d, d), normal(d, d), normal(d, d), normal(d, d)
        self.bq, self.bk = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        q, k, v = heads(x @ self.q + self.bq), heads(x @ self.k + self.bk), heads(x @ self.v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return merge(y) @ self.p


class Shaped(nn.Module):
    """Shaped attention (He & Hofmann Eq. 5): (αI + β·softmax − γ·C)·V with
    identity value and projection; layer 0's value is the trainable
    reparameterisation I + ΔW."""

    def __init__(self, d, first):
        super().__init__()
        self.q = nn.Parameter(torch.zeros(d, d))
        self.k = normal(d, d)
        self.bq, self.bk = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
        self.alpha = nn.Parameter(torch.ones(HEADS))
        self.beta = nn.Parameter(torch.ones(HEADS))
        self.gamma = nn.Parameter(torch.ones(HEADS))
        self.first = first
        if first:
            self.skip, self.resid = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))
            self.dv = nn.Parameter(torch.zeros(d, d))
        t = torch.arange(CONTEXT)
        causal = t[None, :] <= t[:, None]
        self.register_buffer("mask", torch.where(causal, 0.0, float("-inf")))
        self.register_buffer("centre", causal.float() / causal.float().sum(-1, keepdim=True))
        self.register_buffer("eye", torch.eye(CONTEXT))

    def forward(self, x):
        v = x * self.skip + self.resid * (x @ self.dv) if self.first else x
        q, k, v = heads(x @ self.q + self.bq), heads(x @ self.k + self.bk), heads(v)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + self.mask
        g = lambda p: p.view(1, HEADS, 1, 1)
        m = g(self.alpha) * self.eye + g(self.beta) * logits.softmax(-1) - g(self.gamma) * self.centre
        return merge(m @ v)


class PreLN(nn.Module):
    def __init__(self, d, layer):
        super().__init__()
        self.n1, self.n2, self.attn, self.mlp = RMSNorm(d), RMSNorm(d), Attention(d), Mlp(d)

    def forward(self, x):
        h = x + self.attn(self.n1(x))
        return h + self.mlp(self.n2(h))


class SASP(nn.Module):
    def __init__(self, d, layer):
        super().__init__()
        self.n, self.attn, self.mlp = RMSNorm(d), Shaped(d, layer == 0), Mlp(d)
        self.beta_sa, self.beta_ff = nn.Parameter(torch.ones(1)), nn.Parameter(torch.full((1,), 0.1))

    def forward(self, x):
        n = self.n(x)
        return self.beta_sa * self.attn(n) + self.beta_ff * self.mlp(n)


class Model(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.embedding, self.positions = normal(VOCAB, WIDTH), normal(POSITIONS, WIDTH)
        self.blocks = nn.ModuleList(block(WIDTH, i) for i in range(DEPTH))
        self.final = nn.LayerNorm(WIDTH, eps=1e-5)

    def forward(self, tokens):
        x = self.embedding[tokens] + self.positions[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.final(x) @ self.embedding.t()


def optimizer(model, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    fused = {"fused": True} if device == "cuda" else {}
    return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, **fused)


def measure(block, compiled, steps, warmup, device, dtype):
    torch.manual_seed(0)
    model = Model(block).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = optimizer(model, device)
    run = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (BATCH, CONTEXT), generator=g).to(device)
    targets = torch.randint(0, VOCAB, (BATCH, CONTEXT), generator=g).to(device)
    # bf16: autocast over the fp32 weights (the loss is taken in fp32).
    cast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def loss_of():
        with cast():
            logits = run(tokens)
        return F.cross_entropy(logits.float().view(-1, VOCAB), targets.view(-1))

    def step():
        start = time.perf_counter()
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        return (time.perf_counter() - start) * 1e3

    def forward():
        start = time.perf_counter()
        with torch.no_grad():
            loss_of().item()
        return (time.perf_counter() - start) * 1e3

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    for _ in range(warmup):
        step()
        forward()
    times, fwd = [], []
    for _ in range(steps):
        times.append(step())
        fwd.append(forward())
    ms = statistics.median(times)
    record = {
        "impl": "pytorch-compile" if compiled else "pytorch-eager",
        "block": "preln" if block is PreLN else "sas-p",
        "device": device,
        "dtype": dtype,
        "batch": BATCH,
        "context": CONTEXT,
        "threads": torch.get_num_threads(),
        "params": params,
        "step_ms": ms,
        "step_ms_min": min(times),
        "step_ms_max": max(times),
        "forward_ms": statistics.median(fwd),
        "tokens_per_s": BATCH * CONTEXT / (ms / 1e3),
        "torch": torch.__version__,
    }
    if device == "cuda":
        record["gpu"] = torch.cuda.get_device_name()
        record["peak_mib"] = torch.cuda.max_memory_reserved() / 2**20
    del model, opt, run
    return record


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--only-compile", action="store_true", help="time torch.compile only")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], default="fp32")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (default: the shape's)")
    ap.add_argument("--blocks", default="preln,sas-p", help="which blocks, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    use_shape(args.shape, args.batch)
    if args.device == "cuda":
        # fp32 means fp32: no TF32 in products or convolutions; tf32 asks
        # for it (f32 tensors, products on tensor cores).
        tf32 = args.dtype == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    modes = [True] if args.only_compile else [False, True] if args.compile else [False]
    blocks = [b for name, b in (("preln", PreLN), ("sas-p", SASP)) if name in args.blocks.split(",")]
    for compiled in modes:
        for block in blocks:
            try:
                record = measure(block, compiled, args.steps, args.warmup, args.device, args.dtype)
                print(json.dumps({"shape": args.shape, **record}), flush=True)
            except Exception as e:  # torch.compile needs a C++ toolchain
                name = "preln" if block is PreLN else "sas-p"
                print(json.dumps({"impl": "pytorch-compile" if compiled else "pytorch-eager", "block": name,
                                  "error": str(e).splitlines()[0][:200]}), flush=True)


if __name__ == "__main__":
    main()
