//! The block-graph IR: what later stages (signal analysis, lowering,
//! parameter counting) consume.
//!
//! A [`BlockIr`] holds one resolved [`Graph`] for its ordinary layers and
//! one per `layer` override; [`BlockIr::graph_at`] picks the graph of a
//! given layer. A graph is a list of nodes in topological order (inputs
//! before their users), each with the span it came from, so diagnostics of
//! later stages point back into the source. Gains stay symbolic
//! ([`Scalar`]) because they may depend on `depth` or `layer`; see
//! [`crate::eval`].

pub mod params;
pub mod render;

use serde::Serialize;

use crate::span::Span;
use crate::syntax::ast::{BinOp, LayerSelector};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// A whole checked program: every block, and the model and training
/// settings if the files declare them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Program {
    pub blocks: Vec<BlockIr>,
    pub model: Option<Model>,
    pub train: Option<Train>,
}

impl Program {
    /// The models a check analyses: the program's model, or else every
    /// block defined in file `root`, each bare in [`Model::small`]
    /// (`true` marks a bare block).
    pub fn analysed_models(&self, root: crate::span::FileId) -> Vec<(Model, bool)> {
        match &self.model {
            Some(m) => vec![(m.clone(), false)],
            None => (0..self.blocks.len())
                .filter(|&i| self.blocks[i].span.file == root)
                .map(|i| (Model::small(i), true))
                .collect(),
        }
    }

    pub fn block(&self, name: &str) -> Option<&BlockIr> {
        self.blocks.iter().find(|b| b.name == name)
    }
}

/// A block with its per-layer variants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockIr {
    pub name: String,
    pub span: Span,
    /// The graph of every layer without an override.
    pub base: Graph,
    /// Every layer selector used by the block's overrides and by those of
    /// the sections it calls, sorted.
    pub selectors: Vec<LayerSelector>,
    /// One graph per distinct set of matching selectors.
    pub overrides: Vec<LayerGraph>,
}

/// The graph of the layers matched by exactly the selectors `layers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerGraph {
    pub layers: Vec<LayerSelector>,
    pub graph: Graph,
    pub span: Span,
}

/// Whether `sel` picks layer `layer` (0-based) of a `depth`-layer stack.
pub fn selects(sel: LayerSelector, layer: u64, depth: u64) -> bool {
    match sel {
        LayerSelector::First => layer == 0,
        LayerSelector::Last => layer + 1 == depth,
        LayerSelector::Index(i) => i == layer,
        LayerSelector::Range(a, b) => a.at(depth) <= layer && layer < b.at(depth),
        LayerSelector::Stepped(a, b, s) => {
            let start = a.at(depth);
            start <= layer && layer < b.at(depth) && (layer - start).is_multiple_of(s.max(1))
        }
    }
}

impl BlockIr {
    /// The graph of layer `layer` (0-based) in a stack of `depth`.
    pub fn graph_at(&self, layer: u64, depth: u64) -> &Graph {
        let matched: Vec<LayerSelector> =
            self.selectors.iter().copied().filter(|s| selects(*s, layer, depth)).collect();
        if matched.is_empty() {
            return &self.base;
        }
        self.overrides.iter().find(|o| o.layers == matched).map_or(&self.base, |o| &o.graph)
    }

    /// Every graph of the block: the base, then one per layer class.
    pub fn graphs(&self) -> impl Iterator<Item = &Graph> {
        std::iter::once(&self.base).chain(self.overrides.iter().map(|o| &o.graph))
    }
}

/// A resolved block graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Block-level gains, referred to by [`Scalar::Param`].
    pub params: Vec<ParamDef>,
    pub out: NodeId,
}

impl Graph {
    /// Every scalar of the graph: gains, param inits, attention-matrix
    /// coefficients, reparam gains and init arguments.
    pub fn scalars(&self) -> Vec<&Scalar> {
        let mut out: Vec<&Scalar> = self.params.iter().map(|p| &p.init).collect();
        for n in &self.nodes {
            match &n.op {
                Op::Sum { terms } => out.extend(terms.iter().map(|t| &t.gain)),
                Op::Attention { spec, .. } => {
                    out.extend(spec.params.iter().map(|p| &p.init));
                    out.extend(spec.matrix.iter().map(|(c, _)| c));
                    out.extend([&spec.query, &spec.key].into_iter().filter_map(Init::scalar));
                    for l in [&spec.value, &spec.proj] {
                        match l {
                            Linear::Identity => {}
                            Linear::Dense { init, .. } => out.extend(init.scalar()),
                            Linear::Reparam { skip, resid, init, .. } => {
                                out.extend([skip, resid]);
                                out.extend(init.scalar());
                            }
                        }
                    }
                }
                Op::Mlp { spec, .. } => out.extend([&spec.up, &spec.down].into_iter().filter_map(Init::scalar)),
                Op::Input | Op::Norm { .. } => {}
            }
        }
        out
    }
}

impl Op {
    /// The dropout of a sub-block (none for other operations).
    pub fn dropout(&self) -> Dropout {
        match self {
            Op::Attention { spec, .. } => spec.dropout,
            Op::Mlp { spec, .. } => spec.dropout,
            Op::Input | Op::Norm { .. } | Op::Sum { .. } => Dropout::default(),
        }
    }
}

impl BlockIr {
    /// Whether any layer of the block drops values in training.
    pub fn has_dropout(&self) -> bool {
        self.graphs().flat_map(|g| &g.nodes).any(|n| !n.op.dropout().is_off())
    }
}

impl Init {
    /// The init's argument (gain or std), if it has one.
    pub fn scalar(&self) -> Option<&Scalar> {
        match self {
            Init::Orthogonal { gain } | Init::FanIn { gain } => Some(gain),
            Init::Normal { std } => Some(std),
            Init::Zeros | Init::Identity => None,
        }
    }
}

/// One node: an operation, the binding name it was given (if any) and the
/// source it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub op: Op,
    pub name: Option<String>,
    pub span: Span,
}

/// Operations of the block graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Op {
    /// The block input `x`.
    Input,
    Norm {
        norm: Norm,
        input: NodeId,
    },
    Attention {
        spec: Box<AttentionSpec>,
        input: NodeId,
    },
    Mlp {
        spec: MlpSpec,
        input: NodeId,
    },
    /// A weighted sum `Σ gain·input` (skips, branch gains, parallel sums).
    Sum {
        terms: Vec<Term>,
    },
}

impl Op {
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Input => Vec::new(),
            Op::Norm { input, .. } | Op::Attention { input, .. } | Op::Mlp { input, .. } => vec![*input],
            Op::Sum { terms } => terms.iter().map(|t| t.input).collect(),
        }
    }
}

/// One weighted input of a [`Op::Sum`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Term {
    pub gain: Scalar,
    pub input: NodeId,
}

/// Normalisation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    RmsNorm,
    LayerNorm,
}

impl NormKind {
    pub fn keyword(self) -> &'static str {
        match self {
            NormKind::RmsNorm => "rmsnorm",
            NormKind::LayerNorm => "layernorm",
        }
    }
}

/// A normalisation layer: kind and epsilon. Scale (and, for LayerNorm,
/// bias) are trainable, initialised to 1 and 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Norm {
    pub kind: NormKind,
    pub eps: f64,
}

/// A scalar gain, symbolic until evaluated with [`crate::eval::Env`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Scalar {
    Const(f64),
    /// A param of the enclosing scope (block params for block gains, the
    /// attention's own params inside an [`AttentionSpec`]).
    Param(usize),
    Var(Var),
    Neg(Box<Scalar>),
    Bin(BinOp, Box<Scalar>, Box<Scalar>),
    Call(Func, Vec<Scalar>),
}

impl Scalar {
    pub fn one() -> Scalar {
        Scalar::Const(1.0)
    }

    /// `self * other`, folding constants.
    pub fn times(self, other: Scalar) -> Scalar {
        match (self, other) {
            (Scalar::Const(a), Scalar::Const(b)) => Scalar::Const(a * b),
            (Scalar::Const(a), s) | (s, Scalar::Const(a)) if a == 1.0 => s,
            (a, b) => Scalar::Bin(BinOp::Mul, Box::new(a), Box::new(b)),
        }
    }

    /// `-self`, folding constants.
    pub fn negate(self) -> Scalar {
        match self {
            Scalar::Const(a) => Scalar::Const(-a),
            Scalar::Neg(s) => *s,
            s => Scalar::Neg(Box::new(s)),
        }
    }

    /// Whether the scalar refers to variable `v`.
    pub fn uses(&self, v: Var) -> bool {
        match self {
            Scalar::Var(w) => *w == v,
            Scalar::Const(_) | Scalar::Param(_) => false,
            Scalar::Neg(a) => a.uses(v),
            Scalar::Bin(_, a, b) => a.uses(v) || b.uses(v),
            Scalar::Call(_, args) => args.iter().any(|a| a.uses(v)),
        }
    }

    /// The constant value, if the scalar has no variables or params.
    pub fn as_const(&self) -> Option<f64> {
        match self {
            Scalar::Const(c) => Some(*c),
            _ => None,
        }
    }
}

/// Variables a gain may depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Var {
    Depth,
    Width,
    Heads,
    /// 0-based index of the layer.
    Layer,
    /// 0-based index of the head, only in the initial value of a
    /// `per_head` param (not in [`Var::ALL`], the variables of every gain).
    Head,
}

impl Var {
    pub const ALL: [Var; 4] = [Var::Depth, Var::Width, Var::Heads, Var::Layer];

    pub fn keyword(self) -> &'static str {
        match self {
            Var::Depth => "depth",
            Var::Width => "width",
            Var::Heads => "heads",
            Var::Layer => "layer",
            Var::Head => "head",
        }
    }
}

/// Scalar functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Func {
    Sqrt,
    Exp,
    Log,
    Abs,
    Min,
    Max,
}

impl Func {
    pub const ALL: [Func; 6] = [Func::Sqrt, Func::Exp, Func::Log, Func::Abs, Func::Min, Func::Max];

    pub fn keyword(self) -> &'static str {
        match self {
            Func::Sqrt => "sqrt",
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Abs => "abs",
            Func::Min => "min",
            Func::Max => "max",
        }
    }

    pub fn arity(self) -> usize {
        match self {
            Func::Min | Func::Max => 2,
            _ => 1,
        }
    }
}

/// A named scalar gain with its initial value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamDef {
    pub name: String,
    /// Initial value; may use `depth`, `width`, `heads` and `layer`.
    pub init: Scalar,
    pub trainable: bool,
    /// One value per attention head.
    pub per_head: bool,
    pub span: Span,
}

/// How a weight matrix is initialised.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    Zeros,
    Identity,
    /// Haar-random orthogonal, times `gain`.
    Orthogonal {
        gain: Scalar,
    },
    /// N(0, std²) with an absolute std (the paper's 0.02).
    Normal {
        std: Scalar,
    },
    /// N(0, gain²/fan_in).
    FanIn {
        gain: Scalar,
    },
}

/// A value or projection map.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Linear {
    /// No parameter and no matmul.
    Identity,
    /// A trainable weight with the given init.
    Dense { init: Init, bias: bool },
    /// `skip·W_init + resid·ΔW` (He & Hofmann Eq. 6): W_init fixed, ΔW
    /// trainable and zero at init; `skip` and `resid` trainable iff
    /// `trainable`.
    Reparam { skip: Scalar, resid: Scalar, init: Init, trainable: bool },
}

/// A term of the attention matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatrixTerm {
    /// The identity I_T.
    Identity,
    /// softmax(QKᵀ/√d_k + M).
    Softmax,
    /// The softmax at zero logits under the mask (C).
    Centre,
}

impl MatrixTerm {
    pub fn keyword(self) -> &'static str {
        match self {
            MatrixTerm::Identity => "I",
            MatrixTerm::Softmax => "softmax",
            MatrixTerm::Centre => "centre",
        }
    }
}

/// A resolved attention sub-block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionSpec {
    /// The `attention` section it came from, if any.
    pub config: Option<String>,
    /// Per-head dimension; `None` means `width / heads`.
    pub head_dim: Option<u64>,
    /// Heads of keys and values (grouped-query attention: each serves
    /// `heads / kv_heads` query heads; `None` is one per query head).
    pub kv_heads: Option<u64>,
    /// Where `kv_heads` was set (the file, or the command line's `--set`),
    /// for the diagnostics of a model that does not fit it.
    #[serde(skip)]
    pub kv_heads_at: Option<Span>,
    pub query: Init,
    pub key: Init,
    /// Biases on queries and keys (zero-initialised, trainable).
    pub qk_bias: bool,
    pub value: Linear,
    pub proj: Linear,
    /// The attention matrix as `Σ coefficient · term`.
    pub matrix: Vec<(Scalar, MatrixTerm)>,
    /// The section's gains (α, β, γ, …), referred to by the matrix.
    pub params: Vec<ParamDef>,
    pub qk_norm: Option<NormKind>,
    /// `cap · tanh(logits / cap)` before the mask.
    pub softcap: Option<f64>,
    /// Sliding-window (local) attention: each token sees the `window`
    /// latest tokens, itself included (causal), or those less than
    /// `window` positions away (bidirectional); its `softmax` and `centre`
    /// average over them. `None`: every token the mask allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// The rotary positions' base of this attention's layers, in place of
    /// the model's (Gemma 3: 10 000 on its local layers, 1 000 000 on its
    /// global ones); `None`: the model's. Only with `positions = rope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_base: Option<f64>,
    /// Where `rope_base` was set, for the diagnostic of a model without
    /// rotary positions.
    #[serde(skip)]
    pub rope_base_at: Option<Span>,
    /// Dropout on the softmax weights and on the sub-block's output.
    #[serde(skip_serializing_if = "Dropout::is_off")]
    pub dropout: Dropout,
}

impl AttentionSpec {
    /// The rotary positions this attention applies under the model's
    /// (`rope_base`, when set, in place of the model's base).
    pub fn rope(&self, model: Option<Rope>) -> Option<Rope> {
        model.map(|r| Rope { base: self.rope_base.unwrap_or(r.base), ..r })
    }
}

/// Dropout rates of a sub-block, active in training only: `inner` on the
/// attention's softmax weights or the MLP's hidden layer, `branch` on the
/// sub-block's output (the residual branch). The signal analysis leaves
/// them out: it describes the network at init, whose forward has none.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Dropout {
    pub inner: f64,
    pub branch: f64,
}

impl Dropout {
    pub fn is_off(&self) -> bool {
        self.inner == 0.0 && self.branch == 0.0
    }
}

impl Linear {
    /// An identity map, or one that starts as the identity.
    pub fn is_identity(&self) -> bool {
        match self {
            Linear::Identity => true,
            Linear::Dense { init, .. } | Linear::Reparam { init, .. } => *init == Init::Identity,
        }
    }
}

impl Model {
    /// The values of the variables in layer `layer` of this model.
    pub fn env(&self, layer: u64) -> crate::eval::Env {
        crate::eval::Env {
            depth: self.depth as f64,
            width: self.width as f64,
            heads: self.heads as f64,
            layer: layer as f64,
            head: 0.0,
        }
    }
}

impl AttentionSpec {
    pub fn uses(&self, term: MatrixTerm) -> bool {
        self.matrix.iter().any(|(_, t)| *t == term)
    }
}

/// MLP activations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    LeakyRelu { slope: f64 },
    Gelu,
    GeluTanh,
    Silu,
    Tanh,
    Erf,
    Identity,
}

/// A resolved MLP sub-block: `down(act(up(x)))`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MlpSpec {
    pub config: Option<String>,
    pub activation: Activation,
    /// A gated unit (SwiGLU, GeGLU, ReGLU): `act(x W_gate) ⊙ (x W_up)`,
    /// both drawn from the `up` init.
    pub gated: bool,
    /// Hidden width as a multiple of the model width.
    pub width: f64,
    /// The hidden width is rounded up to a multiple of this (Llama's
    /// `multiple_of`; 1 keeps ⌊width · multiple⌋).
    pub multiple_of: u64,
    pub bias: bool,
    pub up: Init,
    pub down: Init,
    /// Dropout on the hidden layer and on the sub-block's output.
    #[serde(skip_serializing_if = "Dropout::is_off")]
    pub dropout: Dropout,
}

/// Attention masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mask {
    Causal,
    Bidirectional,
}

/// Position encodings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    None,
    /// A learned table with `max` rows.
    Learned {
        max: u64,
    },
    Sinusoidal,
    /// Rotary embeddings of queries and keys in every attention.
    Rope(Rope),
    /// ALiBi (Press et al. 2022): every softmax's scores get
    /// `−m_h · distance`, with a slope `m_h` per head ([`alibi_slopes`]).
    Alibi,
}

/// ALiBi's slopes for `heads` heads: the geometric sequence from
/// `2^(−8/n)` with ratio `2^(−8/n)` for a power of two `n`; otherwise those
/// of the largest power of two below, then every other slope of twice it
/// (as the ALiBi paper sets them).
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    let geometric = |n: usize| -> Vec<f64> { (1..=n).map(|i| 2f64.powf(-8.0 * i as f64 / n as f64)).collect() };
    if heads.is_power_of_two() {
        return geometric(heads);
    }
    let n = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let mut slopes = geometric(n);
    slopes.extend(geometric(2 * n).into_iter().step_by(2).take(heads - n));
    slopes
}

/// Rotary position embeddings (Su et al. 2021): the first `fraction` of
/// each head's dimensions, in pairs `(p, p + r/2)` (GPT-NeoX's and
/// Llama's layout), rotated by `position · base^(−2p/r)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rope {
    pub base: f64,
    pub fraction: f64,
}

impl Rope {
    /// How many of `head_dim` dimensions rotate (even, at least 2).
    pub fn dims(self, head_dim: usize) -> usize {
        (((self.fraction * head_dim as f64) as usize) / 2 * 2).clamp(2.min(head_dim), head_dim / 2 * 2)
    }

    /// The angle of pair `p` of `r` rotating dimensions at `position`.
    pub fn angle(self, position: usize, p: usize, r: usize) -> f64 {
        position as f64 * self.base.powf(-2.0 * p as f64 / r as f64)
    }
}

impl Positions {
    pub fn rope(self) -> Option<Rope> {
        match self {
            Positions::Rope(r) => Some(r),
            _ => None,
        }
    }
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

/// A model: embedding, `depth` copies of a block, final norm, LM head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub name: Option<String>,
    /// Index into [`Program::blocks`].
    pub block: usize,
    pub depth: u64,
    pub width: u64,
    pub heads: u64,
    pub context: u64,
    pub vocab: u64,
    pub mask: Mask,
    pub positions: Positions,
    pub final_norm: Option<Norm>,
    pub tied_embeddings: bool,
    pub embed_init: Init,
    /// The token embedding (with the positions added to it) times this
    /// before the first block (Gemma: `sqrt(width)`); the tied head reads
    /// the table unscaled.
    #[serde(skip_serializing_if = "is_one")]
    pub embed_scale: f64,
    /// `cap · tanh(logits / cap)` on the head's logits (Gemma 2: 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logit_softcap: Option<f64>,
    /// Where each setting was written, for later diagnostics.
    pub spans: Vec<(String, Span)>,
    pub span: Span,
}

impl Model {
    /// The small CPU model of `examples/small/` around block `block`: where
    /// a bare block is counted, checked and benchmarked (6 blocks, width
    /// 256, 4 heads, context 128, vocab 4096, learned positions, final
    /// LayerNorm, tied embeddings).
    pub fn small(block: usize) -> Model {
        Model {
            name: None,
            block,
            depth: 6,
            width: 256,
            heads: 4,
            context: 128,
            vocab: 4096,
            mask: Mask::Causal,
            positions: Positions::Learned { max: 128 },
            final_norm: Some(Norm { kind: NormKind::LayerNorm, eps: 1e-5 }),
            tied_embeddings: true,
            embed_init: Init::Normal { std: Scalar::Const(0.02) },
            embed_scale: 1.0,
            logit_softcap: None,
            spans: Vec::new(),
            span: Span::default(),
        }
    }

    pub fn span_of(&self, key: &str) -> Span {
        self.spans.iter().find(|(k, _)| k == key).map_or(self.span, |(_, s)| *s)
    }
}

/// Training settings as written (defaults are applied by the runtime).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Train {
    pub settings: Vec<(String, TrainValue, Span)>,
    pub span: Span,
}

impl Train {
    pub fn get(&self, key: &str) -> Option<&TrainValue> {
        self.settings.iter().find(|(k, _, _)| k == key).map(|(_, v, _)| v)
    }
}

/// A checked training setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TrainValue {
    Number(f64),
    Text(String),
}
