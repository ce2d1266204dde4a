//! `blkc export --format pytorch`: a dependency-free `model.py` (PyTorch
//! only) that rebuilds the model from a plan — the block graph of every
//! layer with its gains, maps, norms and attention matrices, every
//! variable (`depth`, `layer`…) already evaluated — and loads the weights
//! of `model.safetensors` by the same names as blkc (`load_state_dict`
//! with `strict=True`). Its forward is blkc's, op for op
//! (`bench/export_check.py` compares the two).

use blkc::eval::{eval_const, Env};
use blkc::graph::{
    Activation, AttentionSpec, Graph, Linear, MatrixTerm, MlpSpec, Model as ModelIr, NormKind, Op, ParamDef, Positions,
    Program, Scalar,
};
use blkc::syntax::ast::BinOp;
use serde_json::{json, Value};

/// The interpreter, with `PLAN = None` where the plan goes.
const TEMPLATE: &str = include_str!("../assets/model.py");

/// `model.py` for `m`.
pub fn model_py(p: &Program, m: &ModelIr) -> String {
    let plan = serde_json::to_string_pretty(&plan(p, m)).unwrap_or_default();
    TEMPLATE.replacen("PLAN = None", &format!("PLAN = json.loads(r'''{plan}''')"), 1)
}

/// The plan `model.py` interprets (documented at its top).
pub fn plan(p: &Program, m: &ModelIr) -> Value {
    let block = &p.blocks[m.block];
    let env = |layer: u64| m.env(layer);
    let layers: Vec<Value> = (0..m.depth).map(|l| layer(block.graph_at(l, m.depth), m, &env(l))).collect();
    json!({
        "format": "blkc-plan-1",
        "width": m.width,
        "heads": m.heads,
        "vocab": m.vocab,
        "context": m.context,
        "causal": m.mask == blkc::graph::Mask::Causal,
        "positions": match m.positions {
            Positions::None => json!({"kind": "none"}),
            Positions::Learned { max } => json!({"kind": "learned", "max": max}),
            Positions::Sinusoidal => json!({"kind": "sinusoidal"}),
            Positions::Rope(r) => json!({"kind": "rope", "base": r.base, "fraction": r.fraction, "layout": "neox"}),
            Positions::Alibi => json!({"kind": "alibi", "slopes": blkc::graph::alibi_slopes(m.heads as usize)}),
        },
        "final_norm": m.final_norm.map(|n| norm(n.kind, n.eps)),
        "tied": m.tied_embeddings,
        "embed_scale": m.embed_scale,
        "logit_softcap": m.logit_softcap,
        "layers": layers,
    })
}

fn norm(kind: NormKind, eps: f64) -> Value {
    json!({"centred": kind == NormKind::LayerNorm, "eps": eps})
}

/// A layer's graph: nodes in order, each naming its inputs by index.
fn layer(g: &Graph, m: &ModelIr, env: &Env) -> Value {
    let (mut norms, mut attention, mut mlp) = (0, 0, 0);
    let nodes: Vec<Value> = g
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Input => json!({"op": "input"}),
            Op::Norm { norm: nr, input } => {
                norms += 1;
                json!({"op": "norm", "index": norms - 1, "input": input, "norm": norm(nr.kind, nr.eps)})
            }
            Op::Attention { spec, input } => {
                attention += 1;
                json!({"op": "attention", "index": attention - 1, "input": input, "spec": attn(spec, m, env)})
            }
            Op::Mlp { spec, input } => {
                mlp += 1;
                json!({"op": "mlp", "index": mlp - 1, "input": input, "spec": mlp_spec(spec, m)})
            }
            Op::Sum { terms } => json!({
                "op": "sum",
                "terms": terms.iter().map(|t| json!([scalar(&t.gain, env), t.input])).collect::<Vec<_>>(),
            }),
        })
        .collect();
    json!({"params": params(&g.params, env), "nodes": nodes, "out": g.out})
}

/// Params: a trainable one names its gain tensor (`gains.G`), a fixed one
/// has its value.
fn params(defs: &[ParamDef], env: &Env) -> Vec<Value> {
    let mut trainable = 0;
    defs.iter()
        .map(|d| {
            if d.trainable {
                trainable += 1;
                let size = if d.per_head { env.heads as u64 } else { 1 };
                json!({"gain": trainable - 1, "size": size})
            } else if d.per_head && d.init.uses(blkc::graph::Var::Head) {
                // A value per head.
                let heads = env.heads as usize;
                let values: Vec<f64> =
                    (0..heads).map(|h| eval_const(&d.init, &Env { head: h as f64, ..*env }).unwrap_or(0.0)).collect();
                json!({ "values": values })
            } else {
                json!({"value": eval_const(&d.init, env).unwrap_or(0.0)})
            }
        })
        .collect()
}

/// A scalar with every variable replaced by its value in this layer.
fn scalar(s: &Scalar, env: &Env) -> Value {
    match s {
        Scalar::Const(c) => json!({"const": c}),
        Scalar::Var(_) => json!({"const": eval_const(s, env).unwrap_or(0.0)}),
        Scalar::Param(i) => json!({"param": i}),
        Scalar::Neg(a) => json!({"neg": scalar(a, env)}),
        Scalar::Bin(op, a, b) => {
            let op = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
                BinOp::Div => "/",
                BinOp::Pow => "^",
            };
            json!({"bin": [op, scalar(a, env), scalar(b, env)]})
        }
        Scalar::Call(f, args) => {
            json!({"call": [f.keyword(), args.iter().map(|a| scalar(a, env)).collect::<Vec<_>>()]})
        }
    }
}

fn attn(spec: &AttentionSpec, m: &ModelIr, env: &Env) -> Value {
    let head_dim = spec.head_dim.unwrap_or(m.width / m.heads.max(1));
    let terms: Vec<Value> = spec
        .matrix
        .iter()
        .map(|(c, t)| {
            let term = match t {
                MatrixTerm::Identity => "I",
                MatrixTerm::Softmax => "softmax",
                MatrixTerm::Centre => "centre",
            };
            json!([scalar(c, env), term])
        })
        .collect();
    json!({
        "head_dim": head_dim,
        "kv_heads": spec.kv_heads.unwrap_or(m.heads),
        "softmax": spec.uses(MatrixTerm::Softmax),
        "qk_bias": spec.qk_bias,
        "qk_norm": spec.qk_norm.map(|k| norm(k, 1e-6)),
        "softcap": spec.softcap,
        "window": spec.window,
        "rope_base": spec.rope_base,
        "terms": terms,
        "params": params(&spec.params, env),
        "value": map(&spec.value, env),
        "proj": map(&spec.proj, env),
    })
}

fn map(l: &Linear, env: &Env) -> Value {
    match l {
        Linear::Identity => json!({"kind": "identity"}),
        Linear::Dense { bias, .. } => json!({"kind": "dense", "bias": bias}),
        Linear::Reparam { skip, resid, init, trainable } => json!({
            "kind": "reparam",
            "skip": eval_const(skip, env).unwrap_or(0.0),
            "resid": eval_const(resid, env).unwrap_or(0.0),
            "fixed": *init != blkc::graph::Init::Identity,
            "trainable": trainable,
        }),
    }
}

fn mlp_spec(spec: &MlpSpec, m: &ModelIr) -> Value {
    let (name, slope) = match spec.activation {
        Activation::Relu => ("relu", 0.0),
        Activation::LeakyRelu { slope } => ("leaky_relu", slope),
        Activation::Gelu => ("gelu", 0.0),
        Activation::GeluTanh => ("gelu_tanh", 0.0),
        Activation::Silu => ("silu", 0.0),
        Activation::Tanh => ("tanh", 0.0),
        Activation::Erf => ("erf", 0.0),
        Activation::Identity => ("identity", 0.0),
    };
    let hidden = spec.hidden(u128::from(m.width));
    json!({"activation": name, "slope": slope, "gated": spec.gated, "bias": spec.bias, "hidden": hidden as u64})
}
