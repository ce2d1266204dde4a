//! Semantic checks: spanned AST of every loaded file → [`Program`] plus
//! every problem found, in one run.
//!
//! Passes, each in its own file: `scope` (definitions and duplicates),
//! `block` (bindings and types → graph, per layer class), `sections`
//! (attention and MLP settings), `model` (model and train settings,
//! limits), and `finish` (checks that need the model: layer ranges,
//! shapes, gain values, total size).

mod block;
mod expr;
mod finish;
mod model;
mod scope;
mod sections;
pub mod vocabulary;

pub use block::DEFAULT_EPS;
pub use model::limits;

use crate::diag::{Code, Diagnostic};
use crate::eval::Env;
use crate::graph::{BlockIr, LayerGraph, Program};
use crate::span::Span;
use crate::syntax::ast::{Block, Expr, File, LayerSelector, Stmt};

/// The model a bare block is checked (and benchmarked) in: the small CPU
/// model of `examples/small/` (6 blocks, width 256, 4 heads).
pub const BARE_ENV: Env = Env { depth: 6.0, width: 256.0, heads: 4.0, layer: 0.0, head: 0.0 };

/// Most statements in one block.
pub const MAX_STATEMENTS: usize = 512;
/// Most distinct layer selectors that may shape one block.
pub const MAX_SELECTORS: usize = 64;

/// Checks every file; the program is `Some` when there is no error.
/// `unread` lists the `use`s whose files were not loaded (their errors
/// are the loader's), to point at from names they may have defined.
pub fn check(files: &[File], unread: &[Span]) -> (Option<Program>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let defs = scope::collect(files, unread, &mut diags);
    let settings = defs.model.and_then(|s| model::model(s, &mut diags));
    let env = settings.as_ref().map_or(BARE_ENV, |m| Env {
        depth: m.model.depth as f64,
        width: m.model.width as f64,
        heads: m.model.heads as f64,
        layer: 0.0,
        head: 0.0,
    });
    let blocks: Vec<Option<BlockIr>> = defs.block_order.iter().map(|b| block_ir(b, &defs, &mut diags)).collect();
    for s in defs.attention.values() {
        for m in own_classes(&s.body) {
            sections::attention(Some(s), &[], &m, &mut diags);
        }
    }
    for s in defs.mlp.values() {
        for m in own_classes(&s.body) {
            sections::mlp(Some(s), &[], &m, &mut diags);
        }
    }
    let train = (!defs.train.is_empty()).then(|| model::train(&defs.train, &mut diags));
    let blocks: Vec<BlockIr> = blocks.into_iter().flatten().collect();
    let model = settings.and_then(|s| finish::model(s, &defs, &blocks, &mut diags));
    if model.is_none() {
        for b in &blocks {
            finish::values(b, &env, &mut diags);
        }
    }
    if defs.model.is_none() {
        // A bare block is checked, counted and benchmarked in the small
        // model: the shapes must fit it (`kv_heads`, identity maps).
        for (i, b) in blocks.iter().enumerate() {
            let mut found = Vec::new();
            b.graphs().for_each(|g| finish::shapes(g, &crate::graph::Model::small(i), &mut found));
            diags.extend(found.into_iter().map(|mut d| {
                d.help = format!(
                    "{} (a bare block is checked in the small model, width 256 and 4 heads: `--set heads=N` or a `model` section gives it others)",
                    d.help
                );
                d
            }));
        }
    }
    let errors = diags.iter().any(Diagnostic::is_error);
    let program = (!errors).then_some(Program { blocks, model, train });
    (program, diags)
}

/// Checks a block for its ordinary layers and every layer class its
/// overrides (and those of the sections it uses) create.
fn block_ir(block: &Block, defs: &scope::Defs, diags: &mut Vec<Diagnostic>) -> Option<BlockIr> {
    if block.body.len() > MAX_STATEMENTS {
        diags.push(
            Diagnostic::new(
                Code::E2016,
                block.name.span,
                format!("block `{}` has more than {MAX_STATEMENTS} statements", block.name.name),
            )
            .label("too large")
            .help("a block describes one transformer layer; split generated content into several blocks"),
        );
        return None;
    }
    let selectors = selectors(block, defs, diags);
    if selectors.len() > MAX_SELECTORS {
        diags.push(
            Diagnostic::new(
                Code::E2016,
                block.name.span,
                format!("block `{}` has overrides for more than {MAX_SELECTORS} distinct layers", block.name.name),
            )
            .label("too many layer overrides")
            .help("use arithmetic over `layer` in gains instead of one override per layer"),
        );
        return None;
    }
    let base = block::check(block, defs, &[]);
    diags.extend(base.diags);
    let mut unused = base.unused;
    let mut overrides = Vec::new();
    let mut ok = base.graph.is_some();
    for m in layer_classes(&selectors) {
        let c = block::check(block, defs, &m);
        diags.extend(c.diags);
        unused.retain(|u| c.unused.iter().any(|v| v.code == u.code && v.span.position_cmp(&u.span).is_eq()));
        match c.graph {
            Some(graph) => overrides.push(LayerGraph { layers: m, graph, span: block.span }),
            None => ok = false,
        }
    }
    diags.extend(unused);
    let base = base.graph.filter(|_| ok)?;
    Some(BlockIr { name: block.name.name.clone(), span: block.span, base, selectors, overrides })
}

/// Every layer selector that can change the block's graph: its own
/// overrides and those of the attention/MLP sections it calls.
fn selectors(block: &Block, defs: &scope::Defs, diags: &mut Vec<Diagnostic>) -> Vec<LayerSelector> {
    let mut out = Vec::new();
    let mut bodies = vec![&block.body];
    let mut names = Vec::new();
    for s in &block.body {
        visit_calls(s, &mut names);
    }
    for (callee, name) in names {
        let map = if callee == "attn" { &defs.attention } else { &defs.mlp };
        if let Some(s) = map.get(name.as_str()) {
            bodies.push(&s.body);
        }
    }
    for body in bodies {
        for s in body {
            if let Stmt::Layer(l) = s {
                for (sel, span) in &l.selectors {
                    match sel {
                        LayerSelector::Index(i) if *i >= limits::DEPTH => diags.push(
                            Diagnostic::new(
                                Code::E2020,
                                *span,
                                format!("layer {i} is beyond the depth limit of {}", limits::DEPTH),
                            )
                            .label("no such layer")
                            .help("layers are numbered from 0; use `first` or `last` for the ends"),
                        ),
                        s if s.is_range()
                            && !out.contains(sel)
                            && out.iter().filter(|s| s.is_range()).count() >= MAX_RANGES =>
                        {
                            diags.push(
                                Diagnostic::new(
                                    Code::E2016,
                                    *span,
                                    format!("more than {MAX_RANGES} layer ranges in one block and its sections"),
                                )
                                .label("one range too many")
                                .help("merge ranges, or give the layers an index each"),
                            )
                        }
                        s => out.push(*s),
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Most distinct layer ranges a block (with its sections) may use: every
/// subset of them is a layer class with its own graph.
pub const MAX_RANGES: usize = 6;

pub(super) fn visit_calls(s: &Stmt, out: &mut Vec<(String, String)>) {
    fn walk(e: &Expr, out: &mut Vec<(String, String)>) {
        match e {
            Expr::Call { callee, args, .. } => {
                let positional: Vec<&Expr> = args.iter().filter(|a| a.name.is_none()).map(|a| &a.value).collect();
                if let (Some(Expr::Name(n)), "attn" | "mlp") = (positional.get(1), callee.name.as_str()) {
                    out.push((callee.name.clone(), n.name.clone()));
                }
                args.iter().for_each(|a| walk(&a.value, out));
            }
            Expr::Neg { operand, .. } => walk(operand, out),
            Expr::Binary { lhs, rhs, .. } => {
                walk(lhs, out);
                walk(rhs, out);
            }
            _ => {}
        }
    }
    match s {
        Stmt::Assign(a) => walk(&a.value, out),
        Stmt::Param(p) => walk(&p.value, out),
        Stmt::Layer(l) => l.body.iter().for_each(|s| visit_calls(s, out)),
    }
}

/// The distinct sets of selectors that can match one layer. A layer is
/// matched by `first` only at 0, by `last` only at depth − 1 and by an
/// index only at that index, so a few sets cover every (layer, depth); a
/// range can match together with any of them and with any other range, so
/// every subset of the ranges joins each of those sets.
pub fn layer_classes(selectors: &[LayerSelector]) -> Vec<Vec<LayerSelector>> {
    let ranges: Vec<LayerSelector> = selectors.iter().copied().filter(|s| s.is_range()).collect();
    let points: Vec<LayerSelector> = selectors.iter().copied().filter(|s| !s.is_range()).collect();
    let mut classes = Vec::new();
    let mut bases = point_classes(&points);
    bases.push(Vec::new());
    for base in bases {
        for subset in 0..1u32 << ranges.len() {
            let mut c = base.clone();
            c.extend(ranges.iter().enumerate().filter(|(i, _)| subset >> i & 1 == 1).map(|(_, r)| *r));
            c.sort();
            classes.push(c);
        }
    }
    classes.retain(|c| !c.is_empty());
    classes.sort();
    classes.dedup();
    classes
}

/// [`layer_classes`] of `first`, `last` and indices.
fn point_classes(selectors: &[LayerSelector]) -> Vec<Vec<LayerSelector>> {
    let has = |s: LayerSelector| selectors.contains(&s);
    let pick = |v: &[LayerSelector]| -> Vec<LayerSelector> { v.iter().copied().filter(|s| has(*s)).collect() };
    let mut classes = vec![
        pick(&[LayerSelector::First, LayerSelector::Last, LayerSelector::Index(0)]),
        pick(&[LayerSelector::First, LayerSelector::Index(0)]),
        pick(&[LayerSelector::Last]),
    ];
    for s in selectors {
        if let LayerSelector::Index(k) = s {
            classes.push(pick(&[LayerSelector::Last, LayerSelector::Index(*k)]));
            classes.push(vec![*s]);
        }
    }
    classes.retain(|c| !c.is_empty());
    classes.sort();
    classes.dedup();
    classes
}

/// Layer classes of a section on its own (for checking it standalone).
fn own_classes(body: &[Stmt]) -> Vec<Vec<LayerSelector>> {
    let mut sel: Vec<LayerSelector> = body
        .iter()
        .filter_map(|s| if let Stmt::Layer(l) = s { Some(l.selectors.iter().map(|(s, _)| *s)) } else { None })
        .flatten()
        .filter(|s| !matches!(s, LayerSelector::Index(i) if *i >= limits::DEPTH))
        .collect();
    sel.sort();
    sel.dedup();
    let mut classes = layer_classes(&sel);
    classes.insert(0, Vec::new());
    classes
}

#[cfg(test)]
mod tests {
    use crate::graph::{Init, NormKind, Op};

    const RANGES: &str = "attention a {\n    query = normal(0.02)\n    layer depth - 2..depth { query = zeros }\n}\nblock b {\n    param g = 1\n    n = rmsnorm(x)\n    layer 0..depth/2 { param g = 0.5 }\n    layer 2..4, last { n = layernorm(x) }\n    param s = 1\n    layer 1..depth step 3 { param s = 0.25 }\n    out = x + g * attn(n, a) + s * mlp(rmsnorm(x))\n}\n";

    /// (g, the norm is a layernorm, the query is zero, `s` is 0.25) in
    /// each layer.
    fn layers(depth: u64) -> Vec<(f64, bool, bool, bool)> {
        let c = crate::compile_str("r.blk", RANGES);
        let p = c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let b = &p.blocks[0];
        (0..depth)
            .map(|l| {
                let g = b.graph_at(l, depth);
                let gain = g.params[0].init.as_const().unwrap_or(f64::NAN);
                let layernorm =
                    g.nodes.iter().any(|n| matches!(&n.op, Op::Norm { norm, .. } if norm.kind == NormKind::LayerNorm));
                let zero =
                    g.nodes.iter().any(|n| matches!(&n.op, Op::Attention { spec, .. } if spec.query == Init::Zeros));
                let stepped = g.params[1].init.as_const() == Some(0.25);
                (gain, layernorm, zero, stepped)
            })
            .collect()
    }

    #[test]
    fn layer_ranges_select_their_layers_at_every_depth() {
        let at7 = layers(7);
        let g: Vec<f64> = at7.iter().map(|l| l.0).collect();
        assert_eq!(g, [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0], "0..depth/2 at depth 7 is layers 0, 1, 2");
        let ln: Vec<bool> = at7.iter().map(|l| l.1).collect();
        assert_eq!(ln, [false, false, true, true, false, false, true], "2..4 and last");
        let zero: Vec<bool> = at7.iter().map(|l| l.2).collect();
        assert_eq!(zero, [false, false, false, false, false, true, true], "depth - 2..depth");
        let stepped: Vec<bool> = at7.iter().map(|l| l.3).collect();
        assert_eq!(stepped, [false, true, false, false, true, false, false], "1..depth step 3");
        // The same file at depth 12: the ranges follow the depth.
        let at12 = layers(12);
        assert_eq!(at12.iter().filter(|l| l.0 == 0.5).count(), 6);
        assert!(at12[10].2 && at12[11].2 && !at12[9].2);
        assert!(at12[11].1 && at12[3].1 && !at12[4].1);
        let stepped: Vec<usize> = (0..12).filter(|&l| at12[l].3).collect();
        assert_eq!(stepped, [1, 4, 7, 10]);
    }

    /// A section's override may set what the section leaves at its
    /// default, in its layers only; a block's override, or a section's
    /// `param`, must replace something (E2025).
    #[test]
    fn a_section_override_sets_a_default_in_its_layers() {
        let src = "attention a {\n    layer 1..depth step 2 { window = 3 }\n}\n\
                   block b {\n    out = x + attn(rmsnorm(x), a) + mlp(rmsnorm(x))\n}\n";
        let c = crate::compile_str("d.blk", src);
        let p = c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let windows: Vec<Option<u64>> = (0..5)
            .map(|l| {
                let g = p.blocks[0].graph_at(l, 5);
                g.nodes.iter().find_map(|n| match &n.op {
                    Op::Attention { spec, .. } => Some(spec.window),
                    _ => None,
                })
            })
            .map(|w| w.unwrap_or_else(|| panic!("no attention")))
            .collect();
        assert_eq!(windows, [None, Some(3), None, Some(3), None]);
        let codes = |src: &str| -> Vec<crate::Code> {
            crate::compile_str("e.blk", src).diagnostics.iter().map(|d| d.code).collect()
        };
        let param = "attention a {\n    matrix = softmax\n    layer first { param g = 1 }\n}\n\
                     block b {\n    out = x + attn(rmsnorm(x), a)\n}\n";
        assert_eq!(codes(param), [crate::Code::E2025]);
        let unknown = "attention a {\n    layer first, last { windw = 3 }\n}\n\
                       block b {\n    out = x + attn(rmsnorm(x), a)\n}\n";
        assert_eq!(codes(unknown), [crate::Code::E2007], "one diagnostic, however many layers it applies to");
    }

    #[test]
    fn bounds_are_linear_in_depth_and_written_canonically() {
        let text = |sel: &str| {
            let src = format!(
                "block b {{\n    n = rmsnorm(x)\n    layer {sel} {{ n = layernorm(x) }}\n    out = x + attn(n)\n}}\n"
            );
            let (_, parsed) = crate::load::load_text("t.blk", &src);
            let file = parsed.unwrap_or_else(|d| panic!("{sel}: {d:?}"));
            crate::syntax::format::format(&file, &src).lines().nth(2).unwrap_or("").trim().to_string()
        };
        assert_eq!(text("0..depth/2"), "layer 0..depth/2 { n = layernorm(x) }");
        assert_eq!(text("(depth+1)/2 .. depth"), "layer (depth + 1)/2..depth { n = layernorm(x) }");
        assert_eq!(text("2*depth/3..depth-1"), "layer 2*depth/3..depth - 1 { n = layernorm(x) }");
        assert_eq!(text("1..depth  step  2"), "layer 1..depth step 2 { n = layernorm(x) }");
        assert_eq!(text("0..depth step 1"), "layer 0..depth { n = layernorm(x) }");
        let bad = |sel: &str| {
            let src = format!("block b {{\n    layer {sel} {{ n = x }}\n    out = x\n}}\n");
            crate::compile_str("t.blk", &src).diagnostics.first().map(|d| (d.code, d.message.clone()))
        };
        let (code, message) = bad("0..depth*depth").unwrap_or_else(|| panic!("accepted"));
        assert_eq!(code, crate::Code::E1005);
        assert!(message.contains("depth by depth"), "{message}");
        assert!(bad("0..4/0").is_some_and(|(_, m)| m.contains("zero")));
        let (code, message) = bad("0..depth step 0").unwrap_or_else(|| panic!("a step of 0 accepted"));
        assert_eq!(code, crate::Code::E1005);
        assert!(message.contains("step"), "{message}");
    }
}
