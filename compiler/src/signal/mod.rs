//! Signal propagation at initialisation: does the block, stacked to the
//! model's depth, keep tokens distinguishable and the signal's scale sane?
//!
//! The T×T token kernel Σ is carried through every node of every layer in
//! the infinite-width limit ([`propagate`], rules of docs/theory.md §2), from
//! reference input kernels ([`kernel::Input`]); per layer the mean token
//! cosine, the effective rank and the scale are recorded ([`Trace`]), and
//! [`verdict`] judges them with the thresholds of docs/theory.md §3.2.

pub mod attention;
pub mod duals;
pub mod kernel;
pub mod propagate;
pub mod report;
pub mod rng;
pub mod verdict;

use serde::Serialize;

pub use kernel::{Input, Mat};
pub use propagate::{Ablation, AttentionMode};

use crate::eval::Env;
use crate::graph::{BlockIr, Graph, Mask, Model, Op};

/// Longest context the analysis runs at: its cost is O(depth·T³), and the
/// mean cosine barely depends on T (docs/theory.md §2.6: 0.9009 / 0.8991 /
/// 0.8991 / 0.9006 at T = 16 / 32 / 64 / 128).
pub const MAX_CONTEXT: usize = 512;
/// Default analysis context: the model's, capped at 128.
pub const DEFAULT_CONTEXT: usize = 128;
/// Deepest stack tried when searching how deep a bare block can go (a
/// model is always checked at its own depth, up to 4096).
pub const MAX_SEARCH_DEPTH: u64 = 256;

/// The model dimensions the analysis needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dims {
    pub width: u64,
    pub heads: u64,
    pub mask: Mask,
    /// Rotary positions (they move random queries and keys; zero queries
    /// stay zero).
    pub rope: Option<crate::graph::Rope>,
    /// ALiBi: every softmax's scores biased by distance, a slope per head
    /// (it changes the matrix at init, even with zero queries).
    pub alibi: bool,
}

impl Dims {
    pub fn of(m: &Model) -> Dims {
        let alibi = m.positions == crate::graph::Positions::Alibi;
        Dims { width: m.width, heads: m.heads, mask: m.mask, rope: m.positions.rope(), alibi }
    }
}

/// What to analyse.
#[derive(Debug, Clone)]
pub struct Options {
    pub depth: u64,
    /// Tokens T.
    pub context: usize,
    /// Reference inputs; the verdict is the worst over them.
    pub inputs: Vec<Input>,
    pub mode: AttentionMode,
    /// Monte Carlo draws per attention layer.
    pub samples: usize,
    pub seed: u64,
    pub thresholds: verdict::Thresholds,
}

impl Options {
    /// The defaults of docs/theory.md §3.2: inputs Σ₀ = I and 0.8 I + 0.2·11ᵀ.
    pub fn new(depth: u64, context: usize) -> Options {
        Options {
            depth,
            context: context.clamp(2, MAX_CONTEXT),
            inputs: vec![Input::Distinct, Input::Rho(0.2)],
            mode: AttentionMode::Auto,
            samples: 64,
            seed: 0,
            thresholds: verdict::Thresholds::default(),
        }
    }
}

/// Statistics of a sub-block's output (attention, MLP, sums).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubBlock {
    pub node: String,
    pub kind: &'static str,
    pub cosine: f64,
    pub scale: f64,
}

/// Statistics of the stack after one block (layer 1 = after the first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerStats {
    pub layer: u64,
    pub cosine: f64,
    pub effective_rank: f64,
    pub scale: f64,
    pub sub_blocks: Vec<SubBlock>,
}

/// One input kernel carried through the stack.
#[derive(Debug, Clone)]
pub struct Trace {
    pub input: String,
    pub initial_scale: f64,
    pub layers: Vec<LayerStats>,
    /// The kernel after the last layer.
    pub kernel: Mat,
    /// Attention or MLP nodes whose output is zero at init.
    pub zero_outputs: Vec<crate::graph::NodeId>,
}

/// How much of each layer to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every statistic, sub-blocks included.
    Full,
    /// Cosine and scale; the effective rank only once the cosine is high
    /// enough for it to matter (depth searches).
    Quick,
}

/// Carries `input` through `depth` layers of `block`.
pub fn trace(block: &BlockIr, dims: Dims, input: &Input, opts: &Options, ablation: Ablation, detail: Detail) -> Trace {
    trace_until(block, dims, input, opts, ablation, detail, |_| false)
}

/// [`trace`], stopping after the first layer for which `stop` holds.
pub fn trace_until(
    block: &BlockIr,
    dims: Dims,
    input: &Input,
    opts: &Options,
    ablation: Ablation,
    detail: Detail,
    stop: impl Fn(&LayerStats) -> bool,
) -> Trace {
    let setting = propagate::Setting {
        width: dims.width,
        heads: dims.heads,
        mask: dims.mask,
        rope: dims.rope,
        alibi: dims.alibi,
        mode: opts.mode,
        samples: opts.samples,
        seed: opts.seed,
    };
    let mut sigma = input.kernel(opts.context);
    let initial_scale = kernel::scale(&sigma);
    // One kernel per head's slice of the width when heads start unlike.
    let graphs: Vec<&Graph> = block.graphs().collect();
    let n = if propagate::heads_differ(&graphs, dims.alibi) { dims.heads.max(1) as usize } else { 1 };
    let mut slices = vec![sigma.clone(); n];
    let mut layers = Vec::with_capacity(opts.depth as usize);
    let mut zero_outputs = Vec::new();
    for l in 0..opts.depth {
        let env = Env {
            depth: opts.depth as f64,
            width: dims.width as f64,
            heads: dims.heads as f64,
            layer: l as f64,
            head: 0.0,
        };
        let g = block.graph_at(l, opts.depth);
        let out = propagate::block(g, &slices, &env, &setting, ablation);
        for s in &out.nodes {
            let is_module = matches!(g.nodes[s.node].op, Op::Attention { .. } | Op::Mlp { .. });
            if is_module && s.scale == 0.0 && !zero_outputs.contains(&s.node) {
                zero_outputs.push(s.node);
            }
        }
        sigma = out.kernel;
        slices = out.slices;
        let cosine = kernel::mean_cosine(&sigma);
        let scale = kernel::scale(&sigma);
        let effective_rank = match detail {
            Detail::Quick if cosine < 0.9 => f64::NAN,
            _ => kernel::effective_rank(&sigma),
        };
        let sub_blocks = if detail == Detail::Full { sub_blocks(g, &out.nodes) } else { Vec::new() };
        let stats = LayerStats { layer: l + 1, cosine, effective_rank, scale, sub_blocks };
        let done = stop(&stats);
        layers.push(stats);
        if done {
            break;
        }
    }
    Trace { input: input.name(), initial_scale, layers, kernel: sigma, zero_outputs }
}

fn sub_blocks(g: &Graph, stats: &[propagate::NodeStat]) -> Vec<SubBlock> {
    stats
        .iter()
        .filter_map(|s| {
            let n = &g.nodes[s.node];
            let kind = match n.op {
                Op::Attention { .. } => "attention",
                Op::Mlp { .. } => "mlp",
                Op::Sum { .. } => "sum",
                Op::Norm { .. } => "norm",
                Op::Input => return None,
            };
            let node = n.name.clone().unwrap_or_else(|| format!("{kind}#{}", s.node));
            Some(SubBlock { node, kind, cosine: s.cosine, scale: s.scale })
        })
        .collect()
}

/// Traces every input of `opts` and judges them.
pub fn analyse(block: &BlockIr, dims: Dims, opts: &Options) -> verdict::Analysis {
    let traces: Vec<Trace> =
        opts.inputs.iter().map(|i| trace(block, dims, i, opts, Ablation::default(), Detail::Full)).collect();
    verdict::judge(traces, &opts.thresholds)
}

/// Whether any gain of the block depends on `depth` or it has a `last`
/// override (then a deeper stack is not a prefix of a shallower one).
fn depth_dependent(block: &BlockIr) -> bool {
    use crate::graph::Var;
    use crate::syntax::ast::LayerSelector;
    block.selectors.contains(&LayerSelector::Last)
        || block.graphs().flat_map(Graph::scalars).any(|s| s.uses(Var::Depth))
}

/// The deepest stack of `block` that still passes, searched up to
/// [`MAX_SEARCH_DEPTH`]; `None` when every depth up to it passes.
pub fn deepest_passing(block: &BlockIr, dims: Dims, opts: &Options) -> Option<u64> {
    let passes = |depth: u64| -> bool {
        let o = Options { depth, ..opts.clone() };
        o.inputs.iter().all(|i| {
            let t = trace(block, dims, i, &o, Ablation::default(), Detail::Quick);
            verdict::judge(vec![t], &o.thresholds).status != verdict::Status::Reject
        })
    };
    if !depth_dependent(block) {
        // One deep run answers every depth: the stack at depth L is the
        // first L layers of the deepest one.
        let o = Options { depth: MAX_SEARCH_DEPTH, ..opts.clone() };
        let thr = o.thresholds;
        let rejected = |l: &LayerStats| {
            l.cosine >= thr.collapse_cosine
                || l.effective_rank < thr.collapse_effective_rank
                || !(thr.scale_min..=thr.scale_max).contains(&l.scale)
        };
        let traces: Vec<Trace> = o
            .inputs
            .iter()
            .map(|i| trace_until(block, dims, i, &o, Ablation::default(), Detail::Quick, rejected))
            .collect();
        let first_fail = (1..=MAX_SEARCH_DEPTH).find(|&l| {
            traces.iter().any(|t| {
                (l as usize) <= t.layers.len()
                    && verdict::judge_prefix(t, l as usize, &o.thresholds).status == verdict::Status::Reject
            })
        });
        return first_fail.map(|l| l - 1);
    }
    let (mut lo, mut hi) = (0u64, 18u64);
    while passes(hi) {
        if hi >= MAX_SEARCH_DEPTH {
            return None;
        }
        lo = hi;
        hi = (hi * 2).min(MAX_SEARCH_DEPTH);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if passes(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}
