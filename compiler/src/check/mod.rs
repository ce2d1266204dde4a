//! Semantic checks: spanned AST of every loaded file → [`Program`] plus
//! every problem found, in one run.
//!
//! Passes, each in its own file: [`scope`] (definitions and duplicates),
//! [`block`] (bindings and types → graph, per layer class), [`sections`]
//! (attention and MLP settings), [`model`] (model and train settings,
//! limits), and [`finish`] (checks that need the model: layer ranges,
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
use crate::syntax::ast::{Block, Expr, File, LayerSelector, Stmt};

/// The model a bare block is checked (and benchmarked) in: the small CPU
/// model of `examples/small/` (6 blocks, width 256, 4 heads).
pub const BARE_ENV: Env = Env { depth: 6.0, width: 256.0, heads: 4.0, layer: 0.0 };

/// Most statements in one block.
pub const MAX_STATEMENTS: usize = 512;
/// Most distinct layer selectors that may shape one block.
pub const MAX_SELECTORS: usize = 64;

/// Checks every file; the program is `Some` when there is no error.
pub fn check(files: &[File]) -> (Option<Program>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let defs = scope::collect(files, &mut diags);
    let settings = defs.model.and_then(|s| model::model(s, &mut diags));
    let env = settings.as_ref().map_or(BARE_ENV, |m| Env {
        depth: m.model.depth as f64,
        width: m.model.width as f64,
        heads: m.model.heads as f64,
        layer: 0.0,
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
/// index only at that index, so these few sets cover every (layer, depth).
pub fn layer_classes(selectors: &[LayerSelector]) -> Vec<Vec<LayerSelector>> {
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
