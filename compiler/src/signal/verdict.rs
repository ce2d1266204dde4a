//! Judging traces with the thresholds of docs/theory.md §3.2, and turning a
//! rejection into a diagnostic that points at the part of the block
//! responsible (found by re-running the analysis with counterfactual
//! changes: attention made the identity, MLP branches removed).

use serde::Serialize;

use super::{trace, Ablation, Detail, Dims, Options, Trace};
use crate::diag::{Code, Diagnostic};
use crate::eval::{eval, Env};
use crate::graph::{BlockIr, Graph, MatrixTerm, NodeId, Op};
use crate::span::Span;

/// The thresholds (docs/theory.md §3.2, calibrated on causal and bidirectional
/// masks, T = 16–128, depth 6–72, fan-in σ = 1 and GPT-2 0.02 inits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Reject when the mean token cosine reaches this…
    pub collapse_cosine: f64,
    /// …or the effective rank falls below this.
    pub collapse_effective_rank: f64,
    /// Warn when the final mean cosine reaches this.
    pub warn_cosine: f64,
    /// Warn when the per-layer contraction κ of 1 − ρ̄ over the second half
    /// of the stack is below this (stacks of at least
    /// `contraction_min_depth`).
    pub warn_contraction: f64,
    pub contraction_min_depth: u64,
    /// Reject when the scale relative to the input leaves this range.
    pub scale_min: f64,
    pub scale_max: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            collapse_cosine: 0.99,
            collapse_effective_rank: 1.1,
            warn_cosine: 0.97,
            warn_contraction: 0.75,
            contraction_min_depth: 6,
            scale_min: 1e-4,
            scale_max: 1e4,
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Reject,
}

/// Why a trace did not simply pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Tokens became indistinguishable at `layer`.
    Collapse { input: String, layer: u64, cosine: f64, effective_rank: f64 },
    /// The signal's scale left the allowed range at `layer`.
    Scale { input: String, layer: u64, ratio: f64 },
    /// A sub-block's output is zero at init.
    ZeroOutput { node: NodeId },
    /// The final mean cosine is high but below the rejection threshold.
    HighCosine { input: String, cosine: f64 },
    /// 1 − ρ̄ shrinks geometrically over the second half of the stack.
    Contraction { input: String, kappa: f64 },
}

impl Finding {
    pub fn status(&self) -> Status {
        match self {
            Finding::Collapse { .. } | Finding::Scale { .. } | Finding::ZeroOutput { .. } => Status::Reject,
            Finding::HighCosine { .. } | Finding::Contraction { .. } => Status::Warn,
        }
    }
}

/// Traces and their verdict.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub traces: Vec<Trace>,
    pub status: Status,
    pub findings: Vec<Finding>,
    /// Index of the trace that decides the verdict.
    pub worst: usize,
}

/// The verdict on the first `len` layers of a trace.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub status: Status,
    pub findings: Vec<Finding>,
}

/// κ = (r_L / r_h)^{1/(L−h)}, r = 1 − ρ̄ (clamped at 1e-15), h = ⌈L/2⌉.
pub fn contraction(t: &Trace, len: usize) -> Option<f64> {
    if len < 2 {
        return None;
    }
    let h = len.div_ceil(2);
    let r = |l: usize| (1.0 - t.layers[l - 1].cosine).max(1e-15);
    (len > h).then(|| (r(len) / r(h)).powf(1.0 / (len - h) as f64))
}

pub fn judge_prefix(t: &Trace, len: usize, thr: &Thresholds) -> Judgement {
    let mut findings = Vec::new();
    let layers = &t.layers[..len.min(t.layers.len())];
    if let Some(l) =
        layers.iter().find(|l| l.cosine >= thr.collapse_cosine || l.effective_rank < thr.collapse_effective_rank)
    {
        findings.push(Finding::Collapse {
            input: t.input.clone(),
            layer: l.layer,
            cosine: l.cosine,
            effective_rank: l.effective_rank,
        });
    }
    if let Some(l) = layers.iter().find(|l| {
        let ratio = l.scale / t.initial_scale;
        !(thr.scale_min..=thr.scale_max).contains(&ratio)
    }) {
        findings.push(Finding::Scale { input: t.input.clone(), layer: l.layer, ratio: l.scale / t.initial_scale });
    }
    if let Some(last) = layers.last() {
        if last.cosine >= thr.warn_cosine && last.cosine < thr.collapse_cosine {
            findings.push(Finding::HighCosine { input: t.input.clone(), cosine: last.cosine });
        }
        if last.layer >= thr.contraction_min_depth && findings.is_empty() {
            if let Some(k) = contraction(t, layers.len()).filter(|k| *k < thr.warn_contraction) {
                findings.push(Finding::Contraction { input: t.input.clone(), kappa: k });
            }
        }
    }
    let status = findings.iter().map(Finding::status).max().unwrap_or(Status::Pass);
    Judgement { status, findings }
}

/// Judges every trace; the worst decides.
pub fn judge(traces: Vec<Trace>, thr: &Thresholds) -> Analysis {
    let mut status = Status::Pass;
    let mut findings = Vec::new();
    let mut worst = 0;
    let mut worst_key = (Status::Pass, f64::NEG_INFINITY);
    for (i, t) in traces.iter().enumerate() {
        let j = judge_prefix(t, t.layers.len(), thr);
        let key = (j.status, t.layers.last().map_or(0.0, |l| l.cosine));
        if key.0 > worst_key.0 || (key.0 == worst_key.0 && key.1 > worst_key.1) {
            worst_key = key;
            worst = i;
        }
        status = status.max(j.status);
        findings.extend(j.findings);
        for n in &t.zero_outputs {
            let f = Finding::ZeroOutput { node: *n };
            if !findings.contains(&f) {
                findings.push(f);
            }
            status = Status::Reject;
        }
    }
    Analysis { traces, status, findings, worst }
}

/// Diagnostics for the findings of `a`, each pointing into `block`.
pub fn diagnostics(block: &BlockIr, dims: Dims, opts: &Options, a: &Analysis) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let g = block.graph_at(0, opts.depth);
    let mut seen_collapse = false;
    let mut warned = (a.status == Status::Reject, a.status == Status::Reject);
    for f in &a.findings {
        match f {
            Finding::Collapse { input, layer, cosine, effective_rank } if !seen_collapse => {
                seen_collapse = true;
                out.push(collapse(block, dims, opts, input, *layer, *cosine, *effective_rank));
            }
            Finding::Scale { input, layer, ratio } if !out.iter().any(|d| d.code == Code::E3002) => {
                out.push(scale(block, opts, input, *layer, *ratio));
            }
            Finding::ZeroOutput { node } => out.push(zero(g, *node)),
            Finding::HighCosine { input, cosine } if !warned.0 => {
                warned.0 = true;
                out.push(
                Diagnostic::new(Code::W3001, block.span_name(), format!("tokens are close to collapse: mean cosine {cosine:.4} after {} layers (input {input})", opts.depth))
                    .label(format!("borderline: rejected at {}", opts.thresholds.collapse_cosine))
                    .help("a deeper stack will likely be rejected; shape the attention or down-weight the branches by about 1/sqrt(depth)"),
                )
            }
            Finding::Contraction { input, kappa } if !warned.1 => {
                warned.1 = true;
                out.push(
                Diagnostic::new(Code::W3002, block.span_name(), format!("token distinctions shrink geometrically: 1 − cosine contracts by κ = {kappa:.2} per layer (input {input})"))
                    .label(format!("κ below {}", opts.thresholds.warn_contraction))
                    .help("a healthy residual stack contracts polynomially (κ ≥ 0.95 at depth 18); keep the skips or shape the attention"),
                )
            }
            _ => {}
        }
    }
    out
}

impl BlockIr {
    /// The span of the block's name (where block-wide findings point).
    pub fn span_name(&self) -> Span {
        self.base.nodes.first().map_or(self.span, |n| n.span)
    }
}

/// Whether re-running with `ablation` removes the collapse.
fn fixed_by(block: &BlockIr, dims: Dims, opts: &Options, input: &str, ablation: Ablation) -> bool {
    let Some(inp) = opts.inputs.iter().find(|i| i.name() == input) else { return false };
    let t = trace(block, dims, inp, opts, ablation, Detail::Quick);
    !judge_prefix(&t, t.layers.len(), &opts.thresholds).findings.iter().any(|f| matches!(f, Finding::Collapse { .. }))
}

fn collapse(
    block: &BlockIr,
    dims: Dims,
    opts: &Options,
    input: &str,
    layer: u64,
    cosine: f64,
    erank: f64,
) -> Diagnostic {
    let g = block.graph_at(0, opts.depth);
    let env =
        Env { depth: opts.depth as f64, width: dims.width as f64, heads: dims.heads as f64, layer: 0.0, head: 0.0 };
    let what = if cosine >= opts.thresholds.collapse_cosine {
        format!("mean token cosine {cosine:.4} ≥ {}", opts.thresholds.collapse_cosine)
    } else {
        format!("effective rank {erank:.3} < {}", opts.thresholds.collapse_effective_rank)
    };
    let message = format!("tokens collapse at layer {layer} of {}: {what} (input {input})", opts.depth);
    let mixing = g.nodes.iter().enumerate().find_map(|(id, n)| match &n.op {
        Op::Attention { spec, .. } if !identity_at_init(spec, &env) => Some((n, spec, skipped(g, id))),
        _ => None,
    });
    if let Some((node, spec, skip)) = mixing {
        let ab = Ablation { attention_identity: true, ..Ablation::default() };
        if fixed_by(block, dims, opts, input, ab) {
            let shaped = spec.uses(MatrixTerm::Identity) || spec.uses(MatrixTerm::Centre);
            let (label, help) = if shaped {
                (
                    "this attention is not the identity at init",
                    "make `beta * softmax - gamma * centre` vanish at init: `query = zeros` and `gamma` initialised equal to `beta`",
                )
            } else if skip {
                (
                    "token mixing that its skip does not outweigh",
                    "down-weight this branch by about 1/sqrt(depth) (`beta_sa * attn(…)`, `param beta_sa = 1 / sqrt(depth)`), or shape it so that it is the identity at init (blocks/shaped.blk); `blkc check --fix` finds the smallest change",
                )
            } else {
                (
                    "token mixing without a skip or shaping",
                    "keep the skip around it (`h = x + attn(…)`), or shape it so that it is the identity at init: `query = zeros`, `matrix = alpha * I + beta * softmax - gamma * centre` with beta = gamma (blocks/shaped.blk)",
                )
            };
            return Diagnostic::new(Code::E3001, node.span, message).label(label).help(help);
        }
    }
    let mlp = g.nodes.iter().enumerate().find(|(_, n)| matches!(n.op, Op::Mlp { .. }));
    if let Some((id, node)) = mlp {
        let ab = Ablation { mlp_zero: true, ..Ablation::default() };
        if fixed_by(block, dims, opts, input, ab) {
            // Down-weighting helps a branch beside a skip; without one, the
            // MLP is the stack's only path.
            let skip = skipped(g, id);
            let help = match skip {
                true => "down-weight the MLP branch by about 1/sqrt(depth) (`beta_ff * mlp(…)`, `param beta_ff = 1 / sqrt(depth)`), or move its norm inside the branch (Pre-LN)",
                false => "every path through the block goes through this MLP, so scaling it cannot help: add a skip around it (`out = x + beta_ff * mlp(…)` with `param beta_ff = 1 / sqrt(depth)`)",
            };
            let label = match skip {
                true => "this branch drives the tokens together",
                false => "this MLP, with no skip around it, drives the tokens together",
            };
            return Diagnostic::new(Code::E3001, node.span, message).label(label).help(help);
        }
    }
    Diagnostic::new(Code::E3001, block.span_name(), message)
        .label("this block collapses when stacked")
        .help("keep a skip around each token-mixing sub-block, shape the attention so it is the identity at init, and down-weight residual branches by about 1/sqrt(depth)")
}

/// Whether the block's input reaches its output by a path that avoids
/// node `avoid` (a skip around it).
fn skipped(g: &Graph, avoid: usize) -> bool {
    let mut reach = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        reach[i] = i != avoid
            && match &n.op {
                Op::Input => true,
                Op::Norm { input, .. } | Op::Attention { input, .. } | Op::Mlp { input, .. } => reach[*input],
                Op::Sum { terms } => terms.iter().any(|t| reach[t.input]),
            };
    }
    reach.get(g.out).copied().unwrap_or(false)
}

/// Whether the attention matrix is a multiple of I at init (zero queries
/// make softmax equal to centre).
fn identity_at_init(spec: &crate::graph::AttentionSpec, env: &Env) -> bool {
    let params = crate::eval::param_values(&spec.params, env);
    let at = |i: usize| params.get(i).copied().unwrap_or(0.0);
    let zero_q = spec.query == crate::graph::Init::Zeros;
    let mut mixing = 0.0;
    for (c, t) in &spec.matrix {
        let v = eval(c, env, &at).unwrap_or(0.0);
        match t {
            MatrixTerm::Identity => {}
            MatrixTerm::Centre => mixing += v,
            MatrixTerm::Softmax if zero_q => mixing += v,
            MatrixTerm::Softmax => return false,
        }
    }
    mixing.abs() < 1e-12
}

fn scale(block: &BlockIr, opts: &Options, input: &str, layer: u64, ratio: f64) -> Diagnostic {
    let g = block.graph_at(0, opts.depth);
    let span = g.nodes.get(g.out).map_or(block.span_name(), |n| n.span);
    let (verb, help) = if ratio > 1.0 {
        (
            "explodes",
            "normalise the stream or the branches (`rmsnorm`), or scale residual branches by about 1/sqrt(depth)",
        )
    } else {
        ("vanishes", "keep a skip (gain 1) on the stream, or raise the branch gains and init scales")
    };
    Diagnostic::new(
        Code::E3002,
        span,
        format!(
            "the signal {verb}: its scale is {ratio:.3e}× the input's at layer {layer} of {} (input {input})",
            opts.depth
        ),
    )
    .label(format!("scale leaves [{:e}, {:e}]", opts.thresholds.scale_min, opts.thresholds.scale_max))
    .help(help)
}

fn zero(g: &Graph, node: NodeId) -> Diagnostic {
    let span = g.nodes.get(node).map_or(Span::default(), |n| n.span);
    Diagnostic::new(Code::E3003, span, "this sub-block's output is zero at init")
        .label("always zero: a zero weight, or an attention matrix that is zero")
        .help("a zero branch gets no gradient through its other weights; initialise weights with `normal`, `fan_in` or `orthogonal`, and zero only a gain or a reparam `ΔW`")
}
