//! What hovering a name shows: a block's predicted verdict with its
//! per-layer trace, a section's settings per layer class, a param's
//! initial value at each layer, a binding's expression and its signal at
//! init, what a module call lowers to and how many parameters it has, what
//! a setting does.

use std::fmt::Write;

use blkc::check::vocabulary;
use blkc::eval::{eval, Env};
use blkc::graph::params::{flops_per_token, of_op};
use blkc::graph::render::{num, op_lines, thousands};
use blkc::graph::{BlockIr, Graph, Model, Op, ParamDef};
use blkc::signal::report::Report;
use blkc::signal::verdict::{Finding, Status};
use blkc::span::{FileId, Span};
use blkc::syntax::ast::{Item, SectionKind};

use crate::analysis::Analysis;
use crate::index::{Def, DefKind, Occurrence, Target};

/// The Markdown shown for the name at `offset`, and the span it covers.
///
/// `others` are the analyses of other open documents: a section or param
/// of a file that is only `use`d is shown as the programs that use it
/// build it.
pub fn hover(a: &Analysis, others: &[&Analysis], file: FileId, offset: u32) -> Option<(String, Span)> {
    if let Some((name, span)) = block_keyword(a, file, offset) {
        return Some((block(a, &name), span));
    }
    let occ = a.index.at(file, offset)?;
    let text = match occ.target {
        Target::Def(i) => definition(a, others, &a.index.defs[i]),
        Target::Setting(kind) => setting(a, kind, &occ.name),
        Target::Builtin => builtin(a, occ)?,
        Target::Unknown => return None,
    };
    Some((text, occ.span))
}

/// The `block` keyword of a block item: the block's name and the keyword's span.
fn block_keyword(a: &Analysis, file: FileId, offset: u32) -> Option<(String, Span)> {
    let (_, f) = a.compilation.files.iter().find(|(id, _)| *id == file)?;
    f.items.iter().find_map(|item| match item {
        Item::Block(b) if b.span.start <= offset && offset <= b.span.start + 5 => {
            Some((b.name.name.clone(), Span { end: b.span.start + 5, ..b.span }))
        }
        _ => None,
    })
}

fn definition(a: &Analysis, others: &[&Analysis], d: &Def) -> String {
    // The programs that hold the definition: this one, then those of the
    // other documents that use its file.
    let path = &a.compilation.sources.get(d.span.file).path;
    let programs: Vec<&Analysis> =
        std::iter::once(a).chain(others.iter().copied().filter(|o| o.file(path).is_some())).collect();
    match d.kind {
        DefKind::Block => block(a, &d.name),
        DefKind::Section(kind) => section(&programs, kind, &d.name, d.whole),
        DefKind::Param => param(&programs, d),
        DefKind::Binding => binding(a, d),
    }
}

/// The model a block is analysed in: the file's model when it stacks this
/// block, else the small CPU model (as a bare block is checked).
pub fn model_of(a: &Analysis, block: &str) -> Option<(Model, bool)> {
    let p = a.compilation.program.as_ref()?;
    let i = p.blocks.iter().position(|b| b.name == block)?;
    Some(match &p.model {
        Some(m) if m.block == i => (m.clone(), false),
        _ => (Model::small(i), true),
    })
}

fn ir<'a>(a: &'a Analysis, block: &str) -> Option<&'a BlockIr> {
    a.compilation.program.as_ref()?.block(block)
}

pub fn report<'a>(a: &'a Analysis, block: &str) -> Option<&'a Report> {
    a.reports.iter().find(|r| r.block == block)
}

/// `pass · cos 0.200 at layer 6`, `reject · collapses at layer 6`.
pub fn verdict_line(r: &Report) -> String {
    // The first finding is the one the diagnostic reports.
    let collapse = r.findings.iter().find_map(|f| match f {
        Finding::Collapse { layer, .. } | Finding::Scale { layer, .. } => Some(*layer),
        _ => None,
    });
    let last = r.layers.last().map_or(f64::NAN, |l| l.cosine);
    match (r.verdict, collapse) {
        (Status::Reject, Some(layer)) => {
            let what = if r.findings.iter().any(|f| matches!(f, Finding::Collapse { layer: l, .. } if *l == layer)) {
                "collapses"
            } else {
                "scale leaves range"
            };
            format!("reject · {what} at layer {layer}")
        }
        (Status::Reject, None) => format!("reject · cos {last:.3} at layer {}", r.depth),
        (Status::Warn, _) => format!("warn · cos {last:.3} at layer {}", r.depth),
        (Status::Pass, _) => format!("pass · cos {last:.3} at layer {}", r.depth),
    }
}

fn block(a: &Analysis, name: &str) -> String {
    let mut s = format!("**block `{name}`**");
    let Some(r) = report(a, name) else {
        s.push_str("\n\nNot analysed here: ");
        s.push_str(match &a.compilation.program {
            None => "the file does not compile yet.",
            Some(_) => "the signal check runs on the model's block, or on the bare blocks of the file itself.",
        });
        if let (Some(b), Some((m, _))) = (ir(a, name), model_of(a, name)) {
            let _ = write!(s, "\n\n{}", graph_summary(b, &m));
        }
        return s;
    };
    let _ = write!(s, " — {}\n\n", verdict_line(r));
    let place = match &r.model {
        Some(m) if !r.bare => format!("in model `{m}`"),
        _ => "bare, in the small CPU model".to_string(),
    };
    let worst = r.layers.iter().max_by(|x, y| x.cosine.total_cmp(&y.cosine));
    let summary = r.inputs.iter().find(|i| i.input == r.input);
    let _ = writeln!(
        s,
        "Stacked {} deep {place} (width {}, {} heads, {} tokens, {} mask), at init:",
        r.depth,
        r.width,
        r.heads,
        r.context,
        if r.mask == blkc::graph::Mask::Causal { "causal" } else { "bidirectional" }
    );
    if let Some(i) = summary {
        let _ = write!(
            s,
            "final token cosine **{:.3}**, effective rank **{:.2}** (input `{}`, the worst of {})",
            i.cosine,
            i.effective_rank,
            i.input,
            r.inputs.len()
        );
    }
    if let Some(w) = worst {
        let _ = write!(s, "; tokens most alike after layer {} (cosine {:.3})", w.layer, w.cosine);
    }
    s.push_str(".\n");
    for d in r.diagnostics.iter() {
        let _ = writeln!(s, "\n{} {}: {}", if d.is_error() { "✗" } else { "⚠" }, d.code.as_str(), d.message);
    }
    let _ = write!(
        s,
        "\n{} parameters · {:.1} MFLOP/token\n\n| layer | cosine | eff. rank | scale |\n|---:|---:|---:|---:|\n",
        thousands(r.parameters as f64),
        r.flops_per_token as f64 / 1e6
    );
    for l in &r.layers {
        let _ = writeln!(s, "| {} | {:.3} | {:.2} | {:.3} |", l.layer, l.cosine, l.effective_rank, l.scale);
    }
    s
}

/// The graph's operations, one line each.
fn graph_summary(b: &BlockIr, m: &Model) -> String {
    let mut s = String::new();
    for n in &b.base.nodes {
        if matches!(n.op, Op::Input | Op::Sum { .. }) {
            continue;
        }
        let name = n.name.as_deref().unwrap_or("·");
        let _ = writeln!(
            s,
            "- `{name}`: {} ({} parameters)",
            op_lines(&n.op).join(" · "),
            thousands(of_op(&n.op, m) as f64)
        );
    }
    s
}

fn section(programs: &[&Analysis], kind: SectionKind, name: &str, whole: Span) -> String {
    let a = programs[0];
    let mut s = format!("**{} `{name}`**\n\n", kind.keyword());
    if kind == SectionKind::Model {
        if let Some(m) = a.compilation.program.as_ref().and_then(|p| p.model.as_ref()) {
            let _ = writeln!(
                s,
                "depth {} · width {} · {} heads · context {} · vocab {}",
                m.depth, m.width, m.heads, m.context, m.vocab
            );
            return s;
        }
    }
    // Every layer class of every block that calls this section.
    let mut shown = Vec::new();
    for an in programs {
        let Some(p) = &an.compilation.program else { continue };
        for b in &p.blocks {
            let Some((m, _)) = model_of(an, &b.name) else { continue };
            let base = if b.overrides.is_empty() { "every layer" } else { "other layers" };
            let classes = std::iter::once((base.to_string(), &b.base)).chain(b.overrides.iter().map(|o| {
                let sel: Vec<String> = o.layers.iter().map(|s| blkc::syntax::format::selector(*s)).collect();
                (format!("layer {}", sel.join(", ")), &o.graph)
            }));
            for (class, g) in classes {
                for n in g.nodes.iter().filter(|n| configured_by(&n.op, name, kind)) {
                    let lines = op_lines(&n.op).join(" · ");
                    let line = format!(
                        "- {class} of `{}`: {lines} ({} parameters)",
                        b.name,
                        thousands(of_op(&n.op, &m) as f64)
                    );
                    if !shown.contains(&line) {
                        let _ = writeln!(s, "{line}");
                        shown.push(line);
                    }
                }
            }
        }
    }
    if shown.is_empty() {
        s.push_str(match a.compilation.program {
            Some(_) => "No block of an open program calls it; as written:\n\n",
            None => "The file does not compile yet; as written:\n\n",
        });
        s.push_str(&code(a, whole));
    }
    s
}

fn configured_by(op: &Op, name: &str, kind: SectionKind) -> bool {
    match (op, kind) {
        (Op::Attention { spec, .. }, SectionKind::Attention) => spec.config.as_deref() == Some(name),
        (Op::Mlp { spec, .. }, SectionKind::Mlp) => spec.config.as_deref() == Some(name),
        _ => false,
    }
}

/// The source of a span as a code block.
fn code(a: &Analysis, span: Span) -> String {
    let text = &a.compilation.sources.get(span.file).text;
    let body = text.get(span.start as usize..span.end as usize).unwrap_or("");
    format!("```blk\n{body}\n```\n")
}

fn param(programs: &[&Analysis], d: &Def) -> String {
    let a = programs[0];
    let mut s = code(a, d.whole);
    let Some(owner) = d.parent.map(|p| &a.index.defs[p]) else { return s };
    for an in programs {
        param_values(&mut s, an, owner, &d.name);
    }
    s
}

/// The initial value of param `name` of `owner` at each layer, in each
/// block of `a` that holds it.
fn param_values(s: &mut String, a: &Analysis, owner: &Def, name: &str) {
    let Some(p) = &a.compilation.program else { return };
    // The blocks whose layers hold this param: the block itself, or every
    // block that calls the section.
    let blocks: Vec<&BlockIr> = match owner.kind {
        DefKind::Block => p.block(&owner.name).into_iter().collect(),
        DefKind::Section(kind) => p
            .blocks
            .iter()
            .filter(|b| b.graphs().any(|g| g.nodes.iter().any(|n| configured_by(&n.op, &owner.name, kind))))
            .collect(),
        DefKind::Param | DefKind::Binding => Vec::new(),
    };
    for b in blocks {
        let Some((m, _)) = model_of(a, &b.name) else { continue };
        let depth = report(a, &b.name).map_or(m.depth, |r| r.depth);
        let values: Vec<Option<f64>> = (0..depth)
            .map(|layer| {
                let g = b.graph_at(layer, depth);
                let env = Env { depth: depth as f64, ..m.env(layer) };
                find_param(g, owner, name).and_then(|p| eval(&p.init, &env, &|_| f64::NAN).ok())
            })
            .collect();
        let first = find_param(b.graph_at(0, depth), owner, name);
        if let Some(p) = first.filter(|p| p.per_head && p.init.uses(blkc::graph::Var::Head)) {
            // A value per head: each head's, in the first layer.
            let heads: Vec<String> = (0..m.heads)
                .map(|h| {
                    let env = Env { depth: depth as f64, head: h as f64, ..m.env(0) };
                    eval(&p.init, &env, &|_| f64::NAN).map_or_else(|e| e.to_string(), num)
                })
                .collect();
            let _ = writeln!(s, "\nBy head in `{}` (layer 1, heads 0–{}): {}", b.name, m.heads - 1, heads.join(", "));
            continue;
        }
        let _ = writeln!(s, "\nInitial value in `{}` ({depth} layers): {}", b.name, runs(&values));
    }
}

/// The param `name` of a graph: the block's own, or the attention
/// section's that `owner` names.
fn find_param<'g>(g: &'g Graph, owner: &Def, name: &str) -> Option<&'g ParamDef> {
    match owner.kind {
        DefKind::Block => g.params.iter().find(|p| p.name == name),
        _ => g.nodes.iter().find_map(|n| match &n.op {
            Op::Attention { spec, .. } if spec.config.as_deref() == Some(&owner.name) => {
                spec.params.iter().find(|p| p.name == name)
            }
            _ => None,
        }),
    }
}

/// `1 (layers 1–6)`, or one entry per run of equal values.
fn runs(values: &[Option<f64>]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[i] {
            j += 1;
        }
        let v = values[i].map_or_else(|| "absent".to_string(), num);
        let layers = if i == j { format!("layer {}", i + 1) } else { format!("layers {}–{}", i + 1, j + 1) };
        parts.push(format!("{v} ({layers})"));
        i = j + 1;
    }
    parts.join(", ")
}

fn binding(a: &Analysis, d: &Def) -> String {
    let mut s = code(a, d.whole);
    let Some(owner) = d.parent.map(|p| &a.index.defs[p]) else { return s };
    if let Some(r) = report(a, &owner.name) {
        let at = |l: &blkc::signal::LayerStats| l.sub_blocks.iter().find(|b| b.node == d.name).cloned();
        if let (Some(first), Some(last)) = (r.layers.first().and_then(at), r.layers.last().and_then(at)) {
            let _ = writeln!(
                s,
                "\nAt init ({}): token cosine {:.3} after layer 1, {:.3} after layer {}; scale {:.3} → {:.3}",
                first.kind, first.cosine, last.cosine, r.depth, first.scale, last.scale
            );
        }
    }
    s
}

fn setting(a: &Analysis, kind: SectionKind, key: &str) -> String {
    let mut s = format!("**{}.{key}**", kind.keyword());
    match vocabulary::describe(kind, key) {
        Some(what) => {
            let _ = write!(s, ": {what}");
        }
        None => s.push_str(": not a setting of this section"),
    }
    let values = vocabulary::values(kind, key);
    if !values.is_empty() {
        let _ = write!(s, "\n\nValues: {}", values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "));
    }
    if let (SectionKind::Train, Some(t)) = (kind, a.compilation.program.as_ref().and_then(|p| p.train.as_ref())) {
        if let Some((_, v, _)) = t.settings.iter().find(|(k, _, _)| k == key) {
            let _ = write!(s, "\n\nIn effect (after every `train` section of the program): `{}`", train_value(v));
        }
    }
    if let (SectionKind::Model, Some(p)) = (kind, a.compilation.program.as_ref()) {
        if let Some(v) = p.model.as_ref().and_then(|m| model_value(p, m, key)) {
            let _ = write!(s, "\n\nIn effect: `{v}`");
        }
    }
    s
}

/// A model setting's value as the checker resolved it (defaults included).
fn model_value(p: &blkc::Program, m: &Model, key: &str) -> Option<String> {
    use blkc::graph::{Mask, Positions};
    Some(match key {
        "block" => p.blocks.get(m.block)?.name.clone(),
        "depth" => m.depth.to_string(),
        "width" => m.width.to_string(),
        "heads" => m.heads.to_string(),
        "context" => m.context.to_string(),
        "vocab" => m.vocab.to_string(),
        "mask" => if m.mask == Mask::Causal { "causal" } else { "bidirectional" }.to_string(),
        "positions" => match m.positions {
            Positions::None => "none".into(),
            Positions::Learned { max } => format!("learned({max})"),
            Positions::Sinusoidal => "sinusoidal".into(),
            Positions::Rope(r) => format!("rope(base = {}, fraction = {})", num(r.base), num(r.fraction)),
            Positions::Alibi => "alibi".into(),
        },
        "final_norm" => m.final_norm.map_or_else(|| "none".into(), |n| n.kind.keyword().to_string()),
        "tied_embeddings" => m.tied_embeddings.to_string(),
        "embed_scale" => num(m.embed_scale),
        "logit_softcap" => m.logit_softcap.map_or_else(|| "none".into(), num),
        _ => return None,
    })
}

fn train_value(v: &blkc::graph::TrainValue) -> String {
    match v {
        blkc::graph::TrainValue::Number(x) => num(*x),
        blkc::graph::TrainValue::Text(t) => t.clone(),
    }
}

fn builtin(a: &Analysis, occ: &Occurrence) -> Option<String> {
    let name = occ.name.as_str();
    if occ.call.as_deref() == Some(name) {
        return call(a, occ);
    }
    let model = enclosing_block(a, occ.span).and_then(|b| model_of(a, &b));
    let value = |v: u64| {
        model.as_ref().map_or(String::new(), |(_, bare)| format!(" = {v}{}", if *bare { " (small model)" } else { "" }))
    };
    Some(match name {
        "x" => "**x**: the block's input, the residual stream (width d)".to_string(),
        "depth" => format!("**depth**{}: blocks in the stack", value(model.as_ref().map_or(0, |(m, _)| m.depth))),
        "width" => format!("**width**{}: the model width d", value(model.as_ref().map_or(0, |(m, _)| m.width))),
        "heads" => format!("**heads**{}: attention heads", value(model.as_ref().map_or(0, |(m, _)| m.heads))),
        "layer" => "**layer**: the index of the layer being built, 0 for the first".to_string(),
        _ => return None,
    })
}

/// The block whose body holds `span`.
fn enclosing_block(a: &Analysis, span: Span) -> Option<String> {
    let (_, f) = a.compilation.files.iter().find(|(id, _)| *id == span.file)?;
    f.items.iter().find_map(|item| match item {
        Item::Block(b) if b.span.start <= span.start && span.end <= b.span.end => Some(b.name.name.clone()),
        _ => None,
    })
}

/// A module call: the operation it builds in the block's graph, what it
/// lowers to, and its parameters per layer.
fn call(a: &Analysis, occ: &Occurrence) -> Option<String> {
    let lowered = match occ.name.as_str() {
        "attn" => {
            "multi-head attention; a shaped matrix (`I`, `softmax`, `centre` terms) runs as one fused kernel per head"
        }
        "mlp" => "two dense layers with the activation between, or a gated unit (act(x·gate) ⊙ x·up, then down)",
        "rmsnorm" => "RMSNorm over the width, with a trainable scale",
        "layernorm" => "LayerNorm over the width, with a trainable scale and shift",
        _ => {
            return Some(format!("**{}**: a function of numbers (gains and inits)", occ.name));
        }
    };
    let mut s = format!("**{}**: {lowered}", occ.name);
    let block = enclosing_block(a, occ.span)?;
    let (Some(b), Some((m, _))) = (ir(a, &block), model_of(a, &block)) else { return Some(s) };
    let node = b.base.nodes.iter().find(|n| n.span.start == occ.span.start && !matches!(n.op, Op::Sum { .. }));
    if let Some(n) = node {
        let _ = write!(
            s,
            "\n\n{}\n\n{} parameters per layer (width {}, {} heads)",
            op_lines(&n.op).join(" · "),
            thousands(of_op(&n.op, &m) as f64),
            m.width,
            m.heads
        );
        let flops = flops_per_token(&m, b, m.context.min(blkc::signal::DEFAULT_CONTEXT as u64));
        let _ = write!(s, "; the model: {:.1} MFLOP/token", flops as f64 / 1e6);
    }
    Some(s)
}
