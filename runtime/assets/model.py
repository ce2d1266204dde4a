"""A model trained by blkc, in plain PyTorch (no other dependency).

Written by `blkc export --format pytorch`. The model is rebuilt from PLAN
below: the block graph of every layer as blkc lowered it (nodes in order,
each reading earlier nodes by index; every variable such as `depth` or
`layer` already evaluated), and its weights are read from the
`model.safetensors` beside this file under blkc's names, so that

    import model
    m = model.load()                    # model.safetensors next to this file
    logits = m(tokens)                  # tokens: [batch, T] int64 -> [batch, T, vocab]

gives blkc's logits. Weights multiply on the right (`y = x @ W`, W of
shape [fan_in, fan_out]), as in blkc.

The plan: `width`, `heads`, `vocab`, `context`, `causal`, `positions`
(`none`, `learned` with `max`, `sinusoidal`, `rope` with `base` and
`fraction` in GPT-NeoX's layout, `alibi` with the heads' `slopes`),
`final_norm`, `tied`, `embed_scale` (the embedding, positions added,
times it), `logit_softcap` (`cap * tanh(logits / cap)`, or null), and
`layers`, each with `params` (a trainable one names its gain tensor
`gains.G` and its `size`, 1 or the heads; a fixed one has its `value`), `nodes` and `out`. A node is
`input`, `norm` (`centred` = LayerNorm, else RMSNorm, and `eps`),
`attention` (`head_dim`, `kv_heads`, `terms` of the matrix: `I`, `softmax`, `centre`
with their gains, `value` and `proj` maps: `identity`, `dense`, or
`reparam` with `skip`, `resid`, a `fixed` W_init or the identity, and
trainable gains), `mlp` (`activation`, `hidden`, `bias`, `gated`) or `sum` (terms of
a gain and a node). A gain is a scalar expression of constants and params
(`const`, `param`, `neg`, `bin`, `call`).
"""

import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from torch import nn

PLAN = None


def read_safetensors(path):
    """The tensors of a safetensors file, by name (the format: an 8-byte
    little-endian header length, a JSON header, the raw data)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(data[8 + n + start : 8 + n + end])
        t = torch.frombuffer(raw, dtype=dtypes[info["dtype"]]) if raw else torch.empty(0, dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).to(torch.float32)
    return out


def _param(*shape):
    return nn.Parameter(torch.zeros(*shape))


class Norm(nn.Module):
    """RMSNorm, or LayerNorm when centred: over the last dimension, biased
    variance, eps inside the root, a scale (and a bias when centred)."""

    def __init__(self, width, centred, eps):
        super().__init__()
        self.centred, self.eps = centred, eps
        self.scale = _param(width)
        if centred:
            self.bias = _param(width)

    def forward(self, x):
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.scale
        return y + self.bias if self.centred else y


def gain(expr, params, gains):
    """A scalar expression as a tensor of shape [1], or [heads] for a
    per-head gain."""
    rec = lambda e: gain(e, params, gains)
    if "const" in expr:
        return torch.tensor([float(expr["const"])])
    if "param" in expr:
        p = params[expr["param"]]
        return gains[p["gain"]] if "gain" in p else torch.tensor([float(p["value"])])
    if "neg" in expr:
        return -rec(expr["neg"])
    if "bin" in expr:
        op, a, b = expr["bin"]
        a, b = rec(a), rec(b)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b, "^": a ** b}[op]
    f, args = expr["call"]
    a = [rec(x) for x in args]
    return {
        "sqrt": lambda: a[0].sqrt(),
        "exp": lambda: a[0].exp(),
        "log": lambda: a[0].log(),
        "abs": lambda: a[0].abs(),
        "min": lambda: torch.minimum(a[0], a[1]),
        "max": lambda: torch.maximum(a[0], a[1]),
    }[f]()


def scale_groups(x, g):
    """x * g, with g of [n] scaling n equal groups of the last dimension
    (one per head)."""
    n = g.numel()
    shape = x.shape
    return (x.reshape(*shape[:-1], n, shape[-1] // n) * g.to(x).reshape(n, 1)).reshape(shape)


class Map(nn.Module):
    """A value or projection map: identity, dense (x @ W + b), or
    reparameterised: skip * (x @ W_init, or x) + resid * (x @ dW)."""

    def __init__(self, spec, fan_in, fan_out):
        super().__init__()
        self.spec = spec
        if spec["kind"] == "dense":
            self.weight = _param(fan_in, fan_out)
            if spec["bias"]:
                self.bias = _param(fan_out)
        elif spec["kind"] == "reparam":
            self.weight = _param(fan_in, fan_out)
            if spec["fixed"]:
                self.register_buffer("fixed", torch.zeros(fan_in, fan_out))
            if spec["trainable"]:
                self.skip = _param(1)
                self.resid = _param(1)

    def forward(self, x):
        kind = self.spec["kind"]
        if kind == "dense":
            y = x @ self.weight
            return y + self.bias if self.spec["bias"] else y
        if kind == "reparam":
            trainable = self.spec["trainable"]
            skip = self.skip if trainable else self.spec["skip"]
            resid = self.resid if trainable else self.spec["resid"]
            base = x @ self.fixed if self.spec["fixed"] else x
            return skip * base + resid * (x @ self.weight)
        return x


class Attention(nn.Module):
    """Multi-head attention whose matrix is a sum of gained terms: `I`,
    `softmax(q kᵀ / √head_dim + mask)` and `centre` (the softmax at zero
    logits: a running mean under a causal mask, a mean otherwise)."""

    def __init__(self, spec, width, heads, causal, positions):
        super().__init__()
        self.spec, self.heads, self.causal, self.positions = spec, heads, causal, positions
        d, inner = spec["head_dim"], spec["head_dim"] * heads
        # Grouped-query attention: keys and values of `kv_heads` heads.
        kv = spec.get("kv_heads", heads) * d
        if spec["softmax"]:
            self.query = _param(width, inner)
            self.key = _param(width, kv)
            if spec["qk_bias"]:
                self.query_bias = _param(inner)
                self.key_bias = _param(kv)
            if spec["qk_norm"]:
                self.query_norm = Norm(d, spec["qk_norm"]["centred"], spec["qk_norm"]["eps"])
                self.key_norm = Norm(d, spec["qk_norm"]["centred"], spec["qk_norm"]["eps"])
        self.value = Map(spec["value"], width, kv)
        self.proj = Map(spec["proj"], inner, width)
        self.gains = nn.ParameterList([_param(p["size"]) for p in spec["params"] if "gain" in p])

    def split(self, x):
        b, t, _ = x.shape
        return x.reshape(b, t, self.heads, -1).transpose(1, 2)

    def widen(self, y):
        """Keys or values of `kv_heads` heads, each repeated for the query
        heads of its group: [b, t, kv·d] -> [b, t, heads·d]."""
        b, t, w = y.shape
        d = self.spec["head_dim"]
        kv = w // d
        if kv == self.heads or w != kv * d:
            return y
        return y.reshape(b, t, kv, 1, d).expand(b, t, kv, self.heads // kv, d).reshape(b, t, self.heads * d)

    def rotate(self, x):
        """Rotary positions on [b, heads, t, d]: the first r dimensions of
        each head in pairs (p, p + r/2), turned by t · base^(-2p/r); the
        base the attention's `rope_base` where it has one, else the model's."""
        pos = self.positions
        if pos["kind"] != "rope":
            return x
        base = self.spec.get("rope_base") or pos["base"]
        t, d = x.shape[-2], x.shape[-1]
        r = max(min(int(pos["fraction"] * d) // 2 * 2, d // 2 * 2), min(2, d))
        half = r // 2
        p = torch.arange(half, dtype=torch.float64)
        angle = torch.arange(t, dtype=torch.float64).reshape(-1, 1) * base ** (-2.0 * p / r)
        cos, sin = angle.cos().to(x), angle.sin().to(x)
        x1, x2 = x[..., :half], x[..., half:r]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., r:]], -1)

    def softmax_times(self, x, v):
        s = self.spec
        q, k = x @ self.query, x @ self.key
        if s["qk_bias"]:
            q, k = q + self.query_bias, k + self.key_bias
        q, k = self.split(q), self.split(self.widen(k))
        if s["qk_norm"]:
            q, k = self.query_norm(q), self.key_norm(k)
        q, k = self.rotate(q), self.rotate(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(s["head_dim"])
        if s["softcap"]:
            scores = s["softcap"] * torch.tanh(scores / s["softcap"])
        t = scores.shape[-1]
        blocked = ~self.seen(t, x.device)
        if blocked.any():
            scores = scores.masked_fill(blocked, float("-inf"))
        if self.positions["kind"] == "alibi":
            i = torch.arange(t, device=x.device, dtype=torch.float64)
            dist = i.reshape(-1, 1) - i.reshape(1, -1)
            dist = dist if self.causal else dist.abs()
            slopes = torch.tensor(self.positions["slopes"], dtype=torch.float64, device=x.device)
            scores = scores + (-slopes.reshape(-1, 1, 1) * dist).to(scores)
        o = scores.softmax(-1) @ self.split(v)
        return o.transpose(1, 2).reshape(v.shape)

    def seen(self, t, device):
        """[t, t]: whether query i sees key j (the mask, and the window:
        the `window` latest tokens; bidirectional, those less than
        `window` away)."""
        i = torch.arange(t, device=device).reshape(-1, 1)
        j = torch.arange(t, device=device).reshape(1, -1)
        seen = j <= i if self.causal else torch.ones(t, t, dtype=torch.bool, device=device)
        if self.spec.get("window"):
            seen = seen & ((i - j).abs() < self.spec["window"])
        return seen

    def centre(self, v):
        if self.spec.get("window"):
            seen = self.seen(v.shape[1], v.device).to(v.dtype)
            return (seen / seen.sum(-1, keepdim=True)) @ v
        if self.causal:
            counts = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype).reshape(1, -1, 1)
            return v.cumsum(1) / counts
        return v.mean(1, keepdim=True).expand_as(v)

    def forward(self, x):
        v = self.widen(self.value(x))
        out = None
        for expr, term in self.spec["terms"]:
            part = {"I": lambda: v, "centre": lambda: self.centre(v), "softmax": lambda: self.softmax_times(x, v)}[term]()
            part = scale_groups(part, gain(expr, self.spec["params"], self.gains))
            out = part if out is None else out + part
        return self.proj(torch.zeros_like(v) if out is None else out)


class Mlp(nn.Module):
    """act(x @ up + up_bias) @ down + down_bias, or gated (SwiGLU, GeGLU,
    ReGLU): (act(x @ gate + gate_bias) * (x @ up + up_bias)) @ down + down_bias."""

    def __init__(self, spec, width):
        super().__init__()
        self.spec = spec
        self.up = _param(width, spec["hidden"])
        self.down = _param(spec["hidden"], width)
        if spec.get("gated"):
            self.gate = _param(width, spec["hidden"])
        if spec["bias"]:
            self.up_bias = _param(spec["hidden"])
            self.down_bias = _param(width)
            if spec.get("gated"):
                self.gate_bias = _param(spec["hidden"])

    def forward(self, x):
        s = self.spec
        up = x @ self.up + (self.up_bias if s["bias"] else 0)
        h = x @ self.gate + (self.gate_bias if s["bias"] else 0) if s.get("gated") else up
        h = {
            "relu": lambda: F.relu(h),
            "leaky_relu": lambda: F.leaky_relu(h, s["slope"]),
            "gelu": lambda: F.gelu(h),
            "gelu_tanh": lambda: F.gelu(h, approximate="tanh"),
            "silu": lambda: F.silu(h),
            "tanh": lambda: torch.tanh(h),
            "erf": lambda: torch.erf(h),
            "identity": lambda: h,
        }[s["activation"]]()
        if s.get("gated"):
            h = h * up
        return h @ self.down + (self.down_bias if s["bias"] else 0)


class Block(nn.Module):
    """One layer: its graph's nodes run in order."""

    def __init__(self, layer, plan):
        super().__init__()
        self.layer = layer
        width, heads = plan["width"], plan["heads"]
        nodes = layer["nodes"]
        self.norms = nn.ModuleList(
            [Norm(width, n["norm"]["centred"], n["norm"]["eps"]) for n in nodes if n["op"] == "norm"]
        )
        self.attention = nn.ModuleList(
            [
                Attention(n["spec"], width, heads, plan["causal"], plan["positions"])
                for n in nodes
                if n["op"] == "attention"
            ]
        )
        self.mlp = nn.ModuleList([Mlp(n["spec"], width) for n in nodes if n["op"] == "mlp"])
        self.gains = nn.ParameterList([_param(p["size"]) for p in layer["params"] if "gain" in p])

    def forward(self, x):
        out = []
        for n in self.layer["nodes"]:
            op = n["op"]
            if op == "input":
                y = x
            elif op == "norm":
                y = self.norms[n["index"]](out[n["input"]])
            elif op == "attention":
                y = self.attention[n["index"]](out[n["input"]])
            elif op == "mlp":
                y = self.mlp[n["index"]](out[n["input"]])
            else:
                y = None
                for expr, i in n["terms"]:
                    t = scale_groups(out[i], gain(expr, self.layer["params"], self.gains))
                    y = t if y is None else y + t
            out.append(y)
        return out[self.layer["out"]]


def sinusoidal(t, d):
    """The sinusoidal table of Vaswani et al. (2017): [t, d]."""
    pos = torch.arange(t, dtype=torch.float64).reshape(-1, 1)
    i = torch.arange(d)
    freq = 1.0 / 10_000.0 ** ((2 * (i // 2)).to(torch.float64) / d)
    angle = pos * freq
    return torch.where(i % 2 == 0, angle.sin(), angle.cos()).to(torch.float32)


class Model(nn.Module):
    """Token embedding, positions, the blocks, final norm, LM head."""

    def __init__(self, plan=None):
        super().__init__()
        plan = plan or PLAN
        self.plan = plan
        width = plan["width"]
        self.embedding = _param(plan["vocab"], width)
        if plan["positions"]["kind"] == "learned":
            self.positions = _param(plan["positions"]["max"], width)
        self.blocks = nn.ModuleList([Block(layer, plan) for layer in plan["layers"]])
        if plan["final_norm"]:
            self.final_norm = Norm(width, plan["final_norm"]["centred"], plan["final_norm"]["eps"])
        if not plan["tied"]:
            self.head = _param(width, plan["vocab"])

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.embedding[tokens]
        kind = self.plan["positions"]["kind"]
        if kind == "learned":
            x = x + self.positions[:t]
        elif kind == "sinusoidal":
            x = x + sinusoidal(t, x.shape[-1]).to(x)
        if self.plan["embed_scale"] != 1:
            x = x * self.plan["embed_scale"]
        for b in self.blocks:
            x = b(x)
        if self.plan["final_norm"]:
            x = self.final_norm(x)
        logits = x @ (self.embedding.T if self.plan["tied"] else self.head)
        cap = self.plan["logit_softcap"]
        return logits if cap is None else cap * torch.tanh(logits / cap)


def load(path=None):
    """The model with the weights of `path` (default: model.safetensors
    beside this file), every name checked."""
    path = path or os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.safetensors")
    m = Model()
    m.load_state_dict(read_safetensors(path), strict=True)
    return m.eval()
