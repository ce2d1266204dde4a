//! Block graphs as Graphviz DOT or Mermaid, so a reader sees the residual
//! trunk (input and sums, skip edges drawn bold), the branches, where each
//! norm sits and the gain on every edge.

use std::fmt::Write;

use super::{Activation, AttentionSpec, Dropout, Graph, Init, Linear, MlpSpec, Node, Op, ParamDef, Scalar};
use crate::syntax::ast::BinOp;

/// Output formats of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
}

/// Renders `g` under the title `name`.
pub fn render(g: &Graph, name: &str, format: Format) -> String {
    match format {
        Format::Dot => dot(g, name),
        Format::Mermaid => mermaid(g),
    }
}

/// Whether a node is part of the residual trunk (input or a sum).
fn trunk(n: &Node) -> bool {
    matches!(n.op, Op::Input | Op::Sum { .. })
}

/// Edges `(from, to, gain label)`.
fn edges(g: &Graph) -> Vec<(usize, usize, Option<String>)> {
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Sum { terms } => {
                for t in terms {
                    out.push((t.input, i, Some(scalar(&t.gain, &g.params))));
                }
            }
            op => out.extend(op.inputs().into_iter().map(|j| (j, i, None))),
        }
    }
    out
}

fn label(n: &Node, g: &Graph, i: usize) -> Vec<String> {
    let mut lines = op_lines(&n.op);
    if let Some(name) = n.name.as_ref().filter(|_| !matches!(n.op, Op::Input)) {
        lines[0] = format!("{name} = {}", lines[0]);
    }
    if i == g.out && n.name.as_deref() != Some("out") {
        lines[0] = format!("out = {}", lines[0]);
    }
    lines
}

/// An operation as the graph draws it: its kind and settings, one line
/// per group (an attention's Q/K inits, V/P maps, matrix).
pub fn op_lines(op: &Op) -> Vec<String> {
    match op {
        Op::Input => vec!["x".to_string()],
        Op::Norm { norm, .. } => vec![format!("{} (eps {})", norm.kind.keyword(), num(norm.eps))],
        Op::Attention { spec, .. } => attention(spec),
        Op::Mlp { spec, .. } => mlp(spec),
        Op::Sum { .. } => vec!["+".to_string()],
    }
}

fn attention(s: &AttentionSpec) -> Vec<String> {
    let head = match &s.config {
        Some(c) => format!("attn {c}"),
        None => "attn".to_string(),
    };
    let mut matrix = String::new();
    for (i, (c, t)) in s.matrix.iter().enumerate() {
        let (neg, c) = match c {
            Scalar::Neg(inner) => (true, (**inner).clone()),
            Scalar::Const(v) if *v < 0.0 => (true, Scalar::Const(-v)),
            c => (false, c.clone()),
        };
        let sign = match (i, neg) {
            (0, true) => "-",
            (0, false) => "",
            (_, true) => " - ",
            (_, false) => " + ",
        };
        let term = match c {
            Scalar::Const(1.0) => t.keyword().to_string(),
            c => format!("{}·{}", scalar(&c, &s.params), t.keyword()),
        };
        matrix.push_str(sign);
        matrix.push_str(&term);
    }
    let mut lines = vec![
        head,
        match s.kv_heads {
            Some(kv) => format!("Q {} · K {} ({kv} kv heads)", init(&s.query), init(&s.key)),
            None => format!("Q {} · K {}", init(&s.query), init(&s.key)),
        },
        format!("V {} · P {}", linear(&s.value, &s.params), linear(&s.proj, &s.params)),
        match s.window {
            Some(w) => format!("A = {matrix} over a window of {w}"),
            None => format!("A = {matrix}"),
        },
    ];
    if let Some(cap) = s.softcap {
        lines.push(format!("logits soft-capped at {}", num(cap)));
    }
    if let Some(base) = s.rope_base {
        lines.push(format!("rotary base {}", num(base)));
    }
    lines.extend(dropout(s.dropout, "weights"));
    lines
}

/// A line on a sub-block's dropout, if it has any.
fn dropout(d: Dropout, inner: &str) -> Option<String> {
    let parts: Vec<String> = [(d.inner, inner), (d.branch, "output")]
        .into_iter()
        .filter(|(p, _)| *p > 0.0)
        .map(|(p, what)| format!("{} on the {what}", num(p)))
        .collect();
    (!parts.is_empty()).then(|| format!("dropout {} (training only)", parts.join(", ")))
}

fn mlp(s: &MlpSpec) -> Vec<String> {
    let head = match &s.config {
        Some(c) => format!("mlp {c}"),
        None => "mlp".to_string(),
    };
    let act = match s.activation {
        Activation::Relu => "relu".to_string(),
        Activation::LeakyRelu { slope } => format!("leaky_relu({})", num(slope)),
        Activation::Gelu => "gelu".into(),
        Activation::GeluTanh => "gelu_tanh".into(),
        Activation::Silu => "silu".into(),
        Activation::Tanh => "tanh".into(),
        Activation::Erf => "erf".into(),
        Activation::Identity => "identity".into(),
    };
    let act = match (s.gated, s.activation) {
        (true, Activation::Silu) => "swiglu".to_string(),
        (true, Activation::Gelu) => "geglu".to_string(),
        (true, Activation::GeluTanh) => "geglu_tanh".to_string(),
        (true, Activation::Relu) => "reglu".to_string(),
        (true, _) => format!("gated {act}"),
        (false, _) => act,
    };
    let round = if s.multiple_of > 1 { format!(" (to a multiple of {})", s.multiple_of) } else { String::new() };
    let mut lines =
        vec![head, format!("{act} · {}×{round} · up {} · down {}", num(s.width), init(&s.up), init(&s.down))];
    lines.extend(dropout(s.dropout, "hidden layer"));
    lines
}

fn init(i: &Init) -> String {
    match i {
        Init::Zeros => "zeros".into(),
        Init::Identity => "identity".into(),
        Init::Orthogonal { gain } => format!("orthogonal({})", scalar(gain, &[])),
        Init::Normal { std } => format!("normal({})", scalar(std, &[])),
        Init::FanIn { gain } => format!("fan_in({})", scalar(gain, &[])),
    }
}

fn linear(l: &Linear, ps: &[ParamDef]) -> String {
    match l {
        Linear::Identity => "identity".into(),
        Linear::Dense { init: i, .. } => format!("linear({})", init(i)),
        Linear::Reparam { skip, resid, init: i, .. } => {
            format!("reparam({}·{} + {}·ΔW)", scalar(skip, ps), init(i), scalar(resid, ps))
        }
    }
}

/// A gain as text, with param names.
pub fn scalar(s: &Scalar, ps: &[ParamDef]) -> String {
    match s {
        Scalar::Const(v) => num(*v),
        Scalar::Param(i) => ps.get(*i).map_or_else(|| format!("p{i}"), |p| p.name.clone()),
        Scalar::Var(v) => v.keyword().to_string(),
        Scalar::Neg(a) => format!("-{}", scalar(a, ps)),
        Scalar::Bin(op, a, b) => {
            let wrap = |x: &Scalar| match x {
                Scalar::Bin(inner, ..) if prec(*inner) < prec(*op) => format!("({})", scalar(x, ps)),
                _ => scalar(x, ps),
            };
            let sym = if *op == BinOp::Mul { "·" } else { op.symbol() };
            format!("{}{}{}", wrap(a), sym, wrap(b))
        }
        Scalar::Call(f, args) => {
            let a: Vec<String> = args.iter().map(|x| scalar(x, ps)).collect();
            format!("{}({})", f.keyword(), a.join(", "))
        }
    }
}

/// A number as a person writes it: `0.02`, `1e-5`, `768`, `2.6667` (a
/// long fraction to four decimals).
pub fn num(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        return format!("{v:e}");
    }
    let s = format!("{v}");
    if s.len() <= 8 {
        return s;
    }
    format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A count with thousands separated: `12345.6` → `12,346`.
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn prec(op: BinOp) -> u8 {
    op.precedence()
}

fn dot(g: &Graph, name: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(name));
    let _ = writeln!(
        s,
        "  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=11];\n  edge [fontname=\"Helvetica\", fontsize=10];"
    );
    for (i, n) in g.nodes.iter().enumerate() {
        let text = label(n, g, i).iter().map(|l| esc(l)).collect::<Vec<_>>().join("\\n");
        let style = match n.op {
            Op::Input => "shape=ellipse, style=filled, fillcolor=\"#dddddd\"",
            Op::Sum { .. } => "shape=circle, style=filled, fillcolor=\"#dddddd\"",
            Op::Norm { .. } => "shape=box, style=\"rounded,filled\", fillcolor=\"#ffe9a8\"",
            Op::Attention { .. } => "shape=box, style=filled, fillcolor=\"#b8d8ff\"",
            Op::Mlp { .. } => "shape=box, style=filled, fillcolor=\"#c8f0c0\"",
        };
        let out = if i == g.out { ", peripheries=2" } else { "" };
        let _ = writeln!(s, "  n{i} [label=\"{text}\", {style}{out}];");
    }
    for (from, to, gain) in edges(g) {
        let skip = trunk(&g.nodes[from]) && matches!(g.nodes[to].op, Op::Sum { .. });
        let mut attrs = Vec::new();
        if let Some(gain) = gain {
            attrs.push(format!("label=\"{}\"", esc(&gain)));
        }
        if skip {
            attrs.push("style=bold, color=\"#555555\"".into());
        }
        let _ = writeln!(
            s,
            "  n{from} -> n{to}{};",
            if attrs.is_empty() { String::new() } else { format!(" [{}]", attrs.join(", ")) }
        );
    }
    s.push_str("}\n");
    s
}

fn mermaid(g: &Graph) -> String {
    let mut s = String::from("flowchart TB\n");
    for (i, n) in g.nodes.iter().enumerate() {
        let text = label(n, g, i).iter().map(|l| l.replace('"', "'")).collect::<Vec<_>>().join("<br/>");
        let shape = match n.op {
            Op::Input => format!("n{i}([\"{text}\"])"),
            Op::Sum { .. } => format!("n{i}((\"{text}\"))"),
            Op::Norm { .. } => format!("n{i}(\"{text}\")"),
            _ => format!("n{i}[\"{text}\"]"),
        };
        let _ = writeln!(s, "  {shape}");
    }
    for (from, to, gain) in edges(g) {
        let skip = trunk(&g.nodes[from]) && matches!(g.nodes[to].op, Op::Sum { .. });
        let arrow = if skip { "==>" } else { "-->" };
        match gain {
            Some(gain) => {
                let _ = writeln!(s, "  n{from} {arrow}|\"{}\"| n{to}", gain.replace('"', "'"));
            }
            None => {
                let _ = writeln!(s, "  n{from} {arrow} n{to}");
            }
        }
    }
    let _ = writeln!(s, "  classDef norm fill:#ffe9a8\n  classDef attn fill:#b8d8ff\n  classDef mlp fill:#c8f0c0");
    for (i, n) in g.nodes.iter().enumerate() {
        let class = match n.op {
            Op::Norm { .. } => "norm",
            Op::Attention { .. } => "attn",
            Op::Mlp { .. } => "mlp",
            _ => continue,
        };
        let _ = writeln!(s, "  class n{i} {class}");
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
