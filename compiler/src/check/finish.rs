//! Checks that need the whole program: the model's block, layer overrides
//! within the depth, identity maps the shapes allow, gains that evaluate to
//! finite numbers, and the total size.

use super::model::{header, limits, ModelSettings};
use super::scope::Defs;
use crate::diag::{Code, Diagnostic};
use crate::eval::{eval, eval_const, Env};
use crate::graph::{params, BlockIr, Graph, Init, Linear, Model, Op, ParamDef};
use crate::span::Span;
use crate::syntax::ast::{LayerSelector, Stmt};

/// Resolves the model's block and runs the model-wide checks.
pub fn model(s: ModelSettings, defs: &Defs, blocks: &[BlockIr], diags: &mut Vec<Diagnostic>) -> Option<Model> {
    let mut model = s.model;
    let name = s.block?;
    let Some(ast) = defs.blocks.get(name.name.as_str()) else {
        let known: Vec<String> = defs.blocks.keys().map(|k| k.to_string()).collect();
        let mut d = super::expr::unknown_name(name, &known, "block");
        if known.is_empty() {
            d = d.help("define the block here or `use` the file that defines it");
        }
        diags.push(defs.perhaps_unread(d, &name.name));
        return None;
    };
    layer_range(ast, defs, model.depth, diags);
    let block = blocks.iter().position(|b| b.name == name.name);
    let b = &blocks[block?];
    model.block = block?;
    let env =
        Env { depth: model.depth as f64, width: model.width as f64, heads: model.heads as f64, layer: 0.0, head: 0.0 };
    values(b, &env, diags);
    for g in b.graphs() {
        shapes(g, &model, diags);
        rope_bases(g, &model, diags);
    }
    let total = params::count(&model, b).total;
    if total > limits::PARAMS {
        diags.push(
            Diagnostic::new(
                Code::E2016,
                header_of(&model),
                format!("the model has {total} parameters, above the limit of {}", limits::PARAMS),
            )
            .label("too large")
            .help("reduce `depth`, `width` or `vocab`"),
        );
        return None;
    }
    (!diags.iter().any(Diagnostic::is_error)).then_some(model)
}

fn header_of(m: &Model) -> Span {
    Span { end: m.span.start + "model".len() as u32, ..m.span }
}

/// Layer overrides (of the block and the sections it calls) past the depth.
fn layer_range(ast: &crate::syntax::ast::Block, defs: &Defs, depth: u64, diags: &mut Vec<Diagnostic>) {
    let mut bodies = vec![&ast.body];
    let mut calls = Vec::new();
    for s in &ast.body {
        super::visit_calls(s, &mut calls);
    }
    for (callee, name) in &calls {
        let map = if callee == "attn" { &defs.attention } else { &defs.mlp };
        bodies.extend(map.get(name.as_str()).map(|s| &s.body));
    }
    for s in bodies.into_iter().flatten() {
        let Stmt::Layer(l) = s else { continue };
        for (sel, span) in &l.selectors {
            if let Some((a, b)) = sel.bounds() {
                let (start, end) = (a.at(depth), b.at(depth));
                let past = b.per_depth as i128 * depth as i128 + b.offset as i128 > depth as i128 * b.divisor as i128;
                if start >= end || past {
                    let what = if past { "reaches past the last layer" } else { "selects no layer" };
                    diags.push(
                        Diagnostic::new(
                            Code::E2020,
                            *span,
                            format!("layer range `{}..{}` {what} in a model of depth {depth}", a.text(), b.text()),
                        )
                        .label(format!("layers {start}..{end} of 0..{depth}"))
                        .help("a range `A..B` holds layers A to B − 1: keep A < B ≤ depth, e.g. `0..depth/2`"),
                    );
                }
            }
            if let LayerSelector::Index(i) = sel {
                if *i >= depth && *i < limits::DEPTH {
                    diags.push(
                        Diagnostic::new(
                            Code::E2020,
                            *span,
                            format!("layer {i} does not exist in a model of depth {depth}"),
                        )
                        .label(format!("layers are 0 to {}", depth - 1))
                        .help("use an index below the depth, or `last` for the final layer"),
                    );
                }
            }
        }
    }
    let _ = header;
}

/// Every gain, param and init argument of the block evaluates to a finite
/// number at the first and last layer.
pub fn values(b: &BlockIr, env: &Env, diags: &mut Vec<Diagnostic>) {
    for g in b.graphs() {
        for layer in [0.0, (env.depth - 1.0).max(0.0)] {
            for head in [0.0, (env.heads - 1.0).max(0.0)] {
                graph_values(g, &Env { layer, head, ..*env }, diags);
            }
        }
    }
}

fn param_values(ps: &[ParamDef], env: &Env, diags: &mut Vec<Diagnostic>) -> Vec<f64> {
    ps.iter()
        .map(|p| match eval_const(&p.init, env) {
            Ok(v) => v,
            Err(e) => {
                diags.push(not_finite(p.span, &format!("the initial value of `{}`", p.name), &e.to_string()));
                0.0
            }
        })
        .collect()
}

fn not_finite(span: Span, what: &str, why: &str) -> Diagnostic {
    Diagnostic::new(Code::E2022, span, format!("{what} is not a finite number: {why}"))
        .label(format!("{why} here"))
        .help(
        "check the arithmetic for division by zero, `sqrt` or `log` of negatives, and `layer` (0 at the first layer)",
    )
}

fn graph_values(g: &Graph, env: &Env, diags: &mut Vec<Diagnostic>) {
    let vals = param_values(&g.params, env, diags);
    let at = |i: usize| vals.get(i).copied().unwrap_or(0.0);
    for n in &g.nodes {
        match &n.op {
            Op::Sum { terms } => {
                for t in terms {
                    if let Err(e) = eval(&t.gain, env, &at) {
                        diags.push(not_finite(n.span, "a gain", &e.to_string()));
                    }
                }
            }
            Op::Attention { spec, .. } => {
                let avals = param_values(&spec.params, env, diags);
                let aat = |i: usize| avals.get(i).copied().unwrap_or(0.0);
                for (c, _) in &spec.matrix {
                    if let Err(e) = eval(c, env, &aat) {
                        diags.push(not_finite(n.span, "an attention-matrix coefficient", &e.to_string()));
                    }
                }
                for init in
                    [&spec.query, &spec.key].into_iter().chain(linear_init(&spec.value)).chain(linear_init(&spec.proj))
                {
                    init_value(init, n.span, env, diags);
                }
                for l in [&spec.value, &spec.proj] {
                    if let Linear::Reparam { skip, resid, .. } = l {
                        for s in [skip, resid] {
                            if let Err(e) = eval_const(s, env) {
                                diags.push(not_finite(n.span, "a reparam gain", &e.to_string()));
                            }
                        }
                    }
                }
            }
            Op::Mlp { spec, .. } => {
                init_value(&spec.up, n.span, env, diags);
                init_value(&spec.down, n.span, env, diags);
            }
            Op::Input | Op::Norm { .. } => {}
        }
    }
}

fn linear_init(l: &Linear) -> Option<&Init> {
    match l {
        Linear::Identity => None,
        Linear::Dense { init, .. } | Linear::Reparam { init, .. } => Some(init),
    }
}

fn init_value(init: &Init, span: Span, env: &Env, diags: &mut Vec<Diagnostic>) {
    let (s, what) = match init {
        Init::Orthogonal { gain } | Init::FanIn { gain } => (gain, "gain"),
        Init::Normal { std } => (std, "std"),
        Init::Zeros | Init::Identity => return,
    };
    match eval_const(s, env) {
        Ok(v) if v < 0.0 => diags.push(super::expr::out_of_range(span, what, v, "at least 0")),
        Ok(_) => {}
        Err(e) => diags.push(not_finite(span, &format!("an init {what}"), &e.to_string())),
    }
}

/// Grouped-query attention: `kv_heads` divides the heads, and the value
/// is a map to `kv_heads × head_dim` (not an identity).
fn grouped(spec: &crate::graph::AttentionSpec, kv: u64, span: Span, m: &Model, diags: &mut Vec<Diagnostic>) {
    if kv > m.heads || !m.heads.is_multiple_of(kv) {
        let d = Diagnostic::new(Code::E2013, span, format!("`kv_heads` = {kv} does not divide the {} heads", m.heads))
            .label("key/value heads must group the query heads evenly")
            .help(format!("use a divisor of {}: 1 (multi-query) up to {}", m.heads, m.heads));
        // Where the value was set: the section, or the command line.
        diags.push(match spec.kv_heads_at {
            Some(at) => d.note(at, format!("`kv_heads` = {kv} set here")),
            None => d,
        });
        return;
    }
    if spec.value.is_identity() {
        diags.push(
            Diagnostic::new(
                Code::E2014,
                span,
                format!("an identity value cannot have {kv} heads for {} query heads", m.heads),
            )
            .label("value is an identity map here")
            .help("give the attention a value map: `value = linear(orthogonal)`, or drop `kv_heads`"),
        );
    }
}

/// An attention's `rope_base` replaces the base of the model's rotary
/// positions: a model without them has none to replace (a bare block
/// may set it for the models that use it).
fn rope_bases(g: &Graph, m: &Model, diags: &mut Vec<Diagnostic>) {
    if m.positions.rope().is_some() {
        return;
    }
    for n in &g.nodes {
        let Op::Attention { spec, .. } = &n.op else { continue };
        let Some(base) = spec.rope_base else { continue };
        let d = Diagnostic::new(
            Code::E2026,
            spec.rope_base_at.unwrap_or(n.span),
            format!("`rope_base` = {base} in a model without rotary positions"),
        )
        .label("a rotary base, but the model's positions do not rotate")
        .help("give the model `positions = rope`, or drop `rope_base`");
        if !diags.iter().any(|e| e.code == Code::E2026 && e.span == d.span) {
            diags.push(d.note(n.span, "this attention"));
        }
    }
}

/// Identity value/projection (or identity-initialised ones) need
/// `heads × head_dim = width`.
pub(super) fn shapes(g: &Graph, m: &Model, diags: &mut Vec<Diagnostic>) {
    for n in &g.nodes {
        let Op::Attention { spec, .. } = &n.op else { continue };
        if let Some(kv) = spec.kv_heads.filter(|kv| *kv != m.heads) {
            grouped(spec, kv, n.span, m, diags);
            continue;
        }
        let inner = m.heads * spec.head_dim.unwrap_or(m.width / m.heads);
        if inner == m.width {
            continue;
        }
        for (what, l) in [("value", &spec.value), ("proj", &spec.proj)] {
            if l.is_identity() {
                diags.push(
                    Diagnostic::new(
                        Code::E2014,
                        n.span,
                        format!("identity {what} needs heads × head_dim = width, but it is {inner} ≠ {}", m.width),
                    )
                    .label(format!("{what} is an identity map here"))
                    .help(format!("drop `head_dim`, or make `{what}` a `linear(…)` map with a non-identity init")),
                );
            }
        }
    }
}
