//! Parameter counts computed from the graph (no tensors allocated).
//!
//! Convention (docs/language.md): every trainable tensor or gain is
//! counted, frozen values are not — reparameterised `W_init` matrices are
//! saved with the model but are not parameters, and absent biases are
//! absent (the reference code keeps frozen zero biases, which add 0.06 % at
//! CodeParrot size). Q/K are counted only when the matrix uses `softmax`;
//! an identity value or projection has no parameters.

use serde::Serialize;

use super::{AttentionSpec, BlockIr, Graph, Linear, Mask, MatrixTerm, Model, NormKind, Op, ParamDef, Positions};

/// Parameters per component and in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Count {
    pub embedding: u128,
    pub positions: u128,
    pub attention_qk: u128,
    pub attention_value_proj: u128,
    pub attention_gains: u128,
    pub mlp: u128,
    pub norms: u128,
    pub block_gains: u128,
    pub final_norm: u128,
    pub lm_head: u128,
    pub total: u128,
}

impl Count {
    /// (component, count) pairs in display order.
    pub fn components(&self) -> [(&'static str, u128); 10] {
        [
            ("embedding", self.embedding),
            ("positions", self.positions),
            ("attention q/k", self.attention_qk),
            ("attention value/proj", self.attention_value_proj),
            ("attention gains", self.attention_gains),
            ("mlp", self.mlp),
            ("norms", self.norms),
            ("block gains", self.block_gains),
            ("final norm", self.final_norm),
            ("lm head", self.lm_head),
        ]
    }
}

/// Counts the parameters of `model` built from `block`.
pub fn count(model: &Model, block: &BlockIr) -> Count {
    let (d, v) = (model.width as u128, model.vocab as u128);
    let mut c = Count { embedding: v * d, ..Count::default() };
    c.positions = match model.positions {
        Positions::Learned { max } => max as u128 * d,
        Positions::None | Positions::Sinusoidal | Positions::Rope(_) | Positions::Alibi => 0,
    };
    for layer in 0..model.depth {
        add_graph(&mut c, block.graph_at(layer, model.depth), model);
    }
    c.final_norm = model.final_norm.map_or(0, |n| norm(n.kind, d));
    c.lm_head = if model.tied_embeddings { 0 } else { v * d };
    c.total = c.components().iter().map(|(_, n)| n).sum();
    c
}

fn norm(kind: NormKind, d: u128) -> u128 {
    match kind {
        NormKind::RmsNorm => d,
        NormKind::LayerNorm => 2 * d,
    }
}

fn gains(ps: &[ParamDef], heads: u128) -> u128 {
    ps.iter().filter(|p| p.trainable).map(|p| if p.per_head { heads } else { 1 }).sum()
}

fn add_graph(c: &mut Count, g: &Graph, m: &Model) {
    c.block_gains += gains(&g.params, m.heads as u128);
    for n in &g.nodes {
        add_op(c, &n.op, m);
    }
}

fn add_op(c: &mut Count, op: &Op, m: &Model) {
    let d = m.width as u128;
    match op {
        Op::Norm { norm: nm, .. } => c.norms += norm(nm.kind, d),
        Op::Attention { spec, .. } => add_attention(c, spec, m),
        Op::Mlp { spec, .. } => {
            let h = spec.hidden(d);
            let matrices = if spec.gated { 3 } else { 2 };
            let biases = if spec.gated { 2 * h + d } else { h + d };
            c.mlp += matrices * d * h + if spec.bias { biases } else { 0 };
        }
        Op::Input | Op::Sum { .. } => {}
    }
}

/// The parameters of one operation of one layer (its module's weights
/// and gains; a block's own gains are the graph's).
pub fn of_op(op: &Op, model: &Model) -> u128 {
    let mut c = Count::default();
    add_op(&mut c, op, model);
    c.components().iter().map(|(_, n)| n).sum()
}

/// The MLP hidden width: ⌊width · multiple⌋, at least 1 (as `int(d·mult)`
/// in the reference code).
pub fn hidden(d: u128, mult: f64) -> u128 {
    ((d as f64 * mult).floor() as u128).max(1)
}

impl super::MlpSpec {
    /// The hidden width at model width `d`: [`hidden`], rounded up to a
    /// multiple of `multiple_of` (as Llama's `multiple_of`).
    pub fn hidden(&self, d: u128) -> u128 {
        let m = u128::from(self.multiple_of.max(1));
        hidden(d, self.width).div_ceil(m) * m
    }
}

fn add_attention(c: &mut Count, spec: &AttentionSpec, m: &Model) {
    let (d, h) = (m.width as u128, m.heads as u128);
    let inner = h * spec.head_dim.map_or(d / h, u128::from);
    // Keys and values: one head per `kv_heads` (grouped-query attention).
    let kv_inner = inner / h * spec.kv_heads.map_or(h, u128::from);
    if spec.uses(MatrixTerm::Softmax) {
        c.attention_qk += d * inner + d * kv_inner + if spec.qk_bias { inner + kv_inner } else { 0 };
        let hd = inner / h;
        c.attention_qk += spec.qk_norm.map_or(0, |k| 2 * norm(k, hd));
    }
    c.attention_value_proj += linear(&spec.value, kv_inner, d) + linear(&spec.proj, d, inner);
    c.attention_gains += gains(&spec.params, h) + reparam_gains(&spec.value) + reparam_gains(&spec.proj);
}

fn linear(l: &Linear, out: u128, inp: u128) -> u128 {
    match l {
        Linear::Identity => 0,
        Linear::Dense { bias, .. } => inp * out + if *bias { out } else { 0 },
        Linear::Reparam { .. } => inp * out,
    }
}

fn reparam_gains(l: &Linear) -> u128 {
    match l {
        Linear::Reparam { trainable: true, .. } => 2,
        _ => 0,
    }
}

/// Forward FLOPs per token at context `t`: 2 per weight of every matmul
/// (Q/K only when the matrix uses `softmax`, none for identity maps), plus
/// 4·T·(heads·head_dim) for the scores and the weighted sum of each
/// softmax attention, plus the LM head. Under a sliding window of `W`,
/// `T` is the span of keys a query sees: `W` (causal) or `2W − 1`
/// (bidirectional), at most `T`. Norms, activations and the `centre` term
/// (a running mean) are not counted.
pub fn flops_per_token(model: &Model, block: &BlockIr, t: u64) -> u128 {
    let (d, h, t) = (model.width as u128, model.heads as u128, t as u128);
    let mut flops = 2 * d * model.vocab as u128;
    for layer in 0..model.depth {
        for n in &block.graph_at(layer, model.depth).nodes {
            match &n.op {
                Op::Attention { spec, .. } => {
                    let inner = h * spec.head_dim.map_or(d / h, u128::from);
                    let kv_inner = inner / h * spec.kv_heads.map_or(h, u128::from);
                    if spec.uses(MatrixTerm::Softmax) {
                        let span = spec.window.map_or(t, |w| match model.mask {
                            Mask::Causal => u128::from(w),
                            Mask::Bidirectional => 2 * u128::from(w) - 1,
                        });
                        flops += 2 * d * (inner + kv_inner) + 4 * span.min(t) * inner;
                    }
                    flops += 2 * (linear(&spec.value, kv_inner, d) + linear(&spec.proj, d, inner));
                }
                Op::Mlp { spec, .. } => flops += 2 * if spec.gated { 3 } else { 2 } * d * spec.hidden(d),
                _ => {}
            }
        }
    }
    flops
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLOPs of a small Pre-LN model by hand (width 64, 4 heads, T 32,
    /// vocab 100, two layers), with no window, windows of 8 and of 64 (past
    /// T: none), causal and bidirectional.
    #[test]
    fn flops_count_the_keys_a_window_spans() {
        let flops = |window: &str, mask: &str| {
            let text = format!(
                "attention a {{\n window = {window}\n}}\n\
                 block b {{\n h = x + attn(rmsnorm(x), a)\n out = h + mlp(rmsnorm(h))\n}}\n\
                 model m {{\n block = b\n depth = 2\n width = 64\n heads = 4\n context = 32\n vocab = 100\n mask = {mask}\n}}\n"
            );
            let c = crate::compile_str("m.blk", &text);
            let p = c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
            let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
            flops_per_token(&m, &p.blocks[m.block], m.context)
        };
        let (d, head) = (64u128, 2 * 64 * 100u128);
        // Q, K, V and the projection; the MLP's two 4× matrices.
        let weights = 2 * (4 * d * d) + 2 * (2 * d * 4 * d);
        let by_hand = |span: u128| head + 2 * (weights + 4 * span * d);
        assert_eq!(flops("none", "causal"), by_hand(32));
        assert_eq!(flops("8", "causal"), by_hand(8));
        assert_eq!(flops("8", "bidirectional"), by_hand(15));
        assert_eq!(flops("64", "causal"), by_hand(32));
        assert_eq!(flops("64", "bidirectional"), by_hand(32));
    }
}
