//! `attention` and `mlp` sections → [`AttentionSpec`] / [`MlpSpec`], with
//! the section's `layer` overrides for one layer class and the keyword
//! arguments of the call site applied (call arguments win over everything
//! in the section).

use std::collections::HashSet;

use super::expr::{self, Lookup, Names};
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::graph::{Activation, AttentionSpec, Dropout, Linear, MatrixTerm, MlpSpec, NormKind, ParamDef, Scalar};
use crate::span::Span;
use crate::syntax::ast::{Assign, BinOp, Expr, Flag, Ident, LayerSelector, Param, Section, Stmt};

/// A statement after overrides: a param or an assignment.
#[derive(Clone, Copy)]
pub enum Flat<'a> {
    Param(&'a Param),
    Assign(&'a Ident, &'a Expr, Span),
}

impl<'a> Flat<'a> {
    pub fn name(&self) -> &'a Ident {
        match self {
            Flat::Param(p) => &p.name,
            Flat::Assign(n, _, _) => n,
        }
    }
}

/// Whether an override with `selectors` applies to layer class `m`.
pub fn applies(selectors: &[(LayerSelector, Span)], m: &[LayerSelector]) -> bool {
    selectors.iter().any(|(s, _)| m.contains(s))
}

/// The statements of `body` with the overrides that apply to `m` put in
/// place of the statements they replace. With `defaults` (a section,
/// whose settings have defaults), an override may also set a setting the
/// section leaves at its default (the later checks of the section's keys
/// catch a name that is no setting); otherwise, and for a `param`, it must
/// replace a statement outside it (E2025).
pub fn flatten<'a>(
    body: &'a [Stmt],
    m: &[LayerSelector],
    defaults: bool,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Flat<'a>> {
    let mut flat: Vec<Flat<'a>> = body
        .iter()
        .filter_map(|s| match s {
            Stmt::Param(p) => Some(Flat::Param(p)),
            Stmt::Assign(a) => Some(Flat::Assign(&a.name, &a.value, a.span)),
            Stmt::Layer(_) => None,
        })
        .collect();
    for s in body {
        let Stmt::Layer(l) = s else { continue };
        for inner in &l.body {
            let (name, replacement) = match inner {
                Stmt::Param(p) => (&p.name, Flat::Param(p)),
                Stmt::Assign(Assign { name, value, span }) => (name, Flat::Assign(name, value, *span)),
                Stmt::Layer(n) => {
                    diags.push(
                        Diagnostic::new(Code::E2020, n.span, "layer overrides cannot be nested")
                            .label("inside another `layer` override")
                            .help("list several layers in one override: `layer 0, 1 { … }`"),
                    );
                    continue;
                }
            };
            let applied = applies(&l.selectors, m);
            match flat.iter().position(|f| f.name().name == name.name) {
                Some(i) if applied => flat[i] = replacement,
                Some(_) => {}
                None if defaults && matches!(replacement, Flat::Assign(..)) => {
                    if applied {
                        flat.push(replacement);
                    }
                }
                None => diags.push(
                    Diagnostic::new(
                        Code::E2025,
                        name.span,
                        format!("layer override of `{}`, which is not defined outside it", name.name),
                    )
                    .label("nothing to override")
                    .help(format!("define `{}` for every layer first, then override it here", name.name)),
                ),
            }
        }
    }
    flat
}

/// Resolves a section's params: name, init, flags.
pub fn params(flat: &[Flat], allow_per_head: bool, diags: &mut Vec<Diagnostic>) -> Vec<ParamDef> {
    let mut out: Vec<ParamDef> = Vec::new();
    for f in flat {
        let Flat::Param(p) = f else { continue };
        if let Some(prev) = out.iter().find(|q| q.name == p.name.name) {
            diags.push(duplicate(&p.name, prev.span, "param"));
            continue;
        }
        // A param whose value is wrong is still declared: the error is
        // reported once, at its value, not again at every use of its name.
        // (With an error, no program is built from the placeholder.)
        out.push(param(p, allow_per_head, diags).unwrap_or_else(|| ParamDef {
            name: p.name.name.clone(),
            init: Scalar::Const(1.0),
            trainable: p.has(Flag::Trainable),
            per_head: p.has(Flag::PerHead) && allow_per_head,
            span: p.span,
        }));
    }
    out
}

/// One param declaration.
pub fn param(p: &Param, allow_per_head: bool, diags: &mut Vec<Diagnostic>) -> Option<ParamDef> {
    if p.has(Flag::Trainable) && p.has(Flag::Fixed) {
        let span = p.flags.iter().find(|(f, _)| *f == Flag::Fixed).map_or(p.span, |(_, s)| *s);
        diags.push(
            Diagnostic::new(Code::E2024, span, format!("param `{}` is both `trainable` and `fixed`", p.name.name))
                .label("contradicts `trainable`")
                .help("keep one of the two flags"),
        );
    }
    if p.has(Flag::PerHead) && !allow_per_head {
        let span = p.flags.iter().find(|(f, _)| *f == Flag::PerHead).map_or(p.span, |(_, s)| *s);
        diags.push(
            Diagnostic::new(
                Code::E2021,
                span,
                format!("`per_head` gain `{}` outside an attention section", p.name.name),
            )
            .label("only attention has heads")
            .help("declare per-head gains in an `attention` section (e.g. for the matrix), or drop `per_head`"),
        );
    }
    let init = if p.has(Flag::PerHead) && allow_per_head {
        expr::scalar(&p.value, &mut expr::PerHead, diags)?
    } else {
        expr::scalar(&p.value, &mut expr::VarsOnly, diags)?
    };
    Some(ParamDef {
        name: p.name.name.clone(),
        init,
        trainable: p.has(Flag::Trainable),
        per_head: p.has(Flag::PerHead) && allow_per_head,
        span: p.span,
    })
}

pub fn duplicate(name: &Ident, first: Span, what: &str) -> Diagnostic {
    Diagnostic::new(Code::E2010, name.span, format!("{what} `{}` is defined twice", name.name))
        .label("second definition")
        .note(first, "first defined here")
        .help(format!("rename one of them or remove the duplicate {what}"))
}

/// The settings of a section (after overrides) with call arguments on top.
/// Reports duplicates and unknown keys.
fn settings<'a>(
    flat: &[Flat<'a>],
    kwargs: &[(&'a Ident, &'a Expr)],
    known: &[&str],
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(&'a Ident, &'a Expr)> {
    let mut out: Vec<(&Ident, &Expr)> = Vec::new();
    let mut seen: Vec<(&str, Span)> = Vec::new();
    for f in flat {
        let Flat::Assign(n, v, _) = f else { continue };
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == n.name) {
            diags.push(duplicate(n, *first, "setting"));
            continue;
        }
        seen.push((&n.name, n.span));
        out.push((n, v));
    }
    for (n, v) in kwargs {
        match out.iter_mut().find(|(k, _)| k.name == n.name) {
            Some(slot) => *slot = (n, v),
            None => out.push((n, v)),
        }
    }
    out.retain(|(n, _)| {
        let ok = known.contains(&n.name.as_str());
        if !ok {
            diags.push(unknown_setting(n, known, what));
        }
        ok
    });
    out
}

/// Names other tools (the reference code, Hugging Face, nanoGPT) give
/// settings that blkc spells otherwise (docs/language.md §11).
const RENAMED: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("warmup_ratio", "warmup"),
    ("warmup_steps", "warmup"),
    ("max_grad_norm", "clip"),
    ("grad_clip", "clip"),
    ("clip_grad_norm", "clip"),
    ("batch_size", "batch"),
    ("micro_batch_size", "micro_batch"),
    ("num_devices", "devices"),
    ("world_size", "devices"),
    ("n_gpus", "devices"),
    ("gpus", "devices"),
    ("max_steps", "steps"),
    ("max_iters", "steps"),
    ("num_steps", "steps"),
    ("eval_interval", "eval_every"),
    ("eval_iters", "eval_batches"),
    ("lr_scheduler", "schedule"),
    ("lr_scheduler_type", "schedule"),
    ("n_layer", "depth"),
    ("num_layers", "depth"),
    ("n_embd", "width"),
    ("d_model", "width"),
    ("hidden_size", "width"),
    ("n_head", "heads"),
    ("num_heads", "heads"),
    ("num_attention_heads", "heads"),
    ("context_length", "context"),
    ("block_size", "context"),
    ("n_positions", "context"),
    ("vocab_size", "vocab"),
    ("n_layers", "depth"),
    ("layer_norm_epsilon", "eps"),
    ("mlp_width_mult", "width"),
    ("activation_function", "activation"),
    ("attn_pdrop", "dropout"),
    ("attn_dropout", "dropout"),
    ("ff_dropout", "dropout"),
    ("resid_pdrop", "resid_dropout"),
];

/// blkc's name for a setting another tool calls `name`.
pub fn renamed(name: &str) -> Option<&'static str> {
    RENAMED.iter().find(|(theirs, _)| *theirs == name).map(|(_, ours)| *ours)
}

pub fn unknown_setting(n: &Ident, known: &[&str], what: &str) -> Diagnostic {
    let d = Diagnostic::new(Code::E2007, n.span, format!("unknown {what} setting `{}`", n.name))
        .label("not a setting here");
    if let Some((_, ours)) = RENAMED.iter().find(|(theirs, ours)| *theirs == n.name && known.contains(ours)) {
        return d
            .help(format!("blkc calls `{}` `{ours}` (docs/language.md §11 maps the names of other tools)", n.name));
    }
    match did_you_mean(&n.name, known.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("{what} settings are {}", expr::one_of(known))),
    }
}

pub(crate) const ATTENTION_KEYS: &[&str] = &[
    "query",
    "key",
    "value",
    "proj",
    "matrix",
    "bias",
    "qk_norm",
    "softcap",
    "window",
    "rope_base",
    "head_dim",
    "kv_heads",
    "dropout",
    "resid_dropout",
];
pub(crate) const MLP_KEYS: &[&str] =
    &["activation", "width", "multiple_of", "bias", "up", "down", "dropout", "resid_dropout"];

/// The paper's default init for every weight: N(0, 0.02²) (App. D.1).
fn std002() -> crate::graph::Init {
    crate::graph::Init::Normal { std: Scalar::Const(0.02) }
}

/// Resolves an attention sub-block: GPT-2 defaults, then the section (with
/// overrides for `m`), then the call's keyword arguments.
pub fn attention(
    section: Option<&Section>,
    kwargs: &[(&Ident, &Expr)],
    m: &[LayerSelector],
    diags: &mut Vec<Diagnostic>,
) -> Option<AttentionSpec> {
    let flat = section.map(|s| flatten(&s.body, m, true, diags)).unwrap_or_default();
    let params = params(&flat, true, diags);
    let mut spec = AttentionSpec {
        config: section.and_then(|s| s.name.as_ref().map(|n| n.name.clone())),
        head_dim: None,
        kv_heads: None,
        kv_heads_at: None,
        query: std002(),
        key: std002(),
        qk_bias: true,
        value: crate::graph::Linear::Dense { init: std002(), bias: false },
        proj: crate::graph::Linear::Dense { init: std002(), bias: false },
        matrix: vec![(Scalar::one(), MatrixTerm::Softmax)],
        params,
        qk_norm: None,
        softcap: None,
        window: None,
        rope_base: None,
        rope_base_at: None,
        dropout: Dropout::default(),
    };
    let mut used = HashSet::new();
    let mut ok = true;
    for (n, v) in settings(&flat, kwargs, ATTENTION_KEYS, "attention", diags) {
        let key = n.name.as_str();
        let set = match key {
            "query" => expr::init(v, key, diags).map(|i| spec.query = i),
            "key" => expr::init(v, key, diags).map(|i| spec.key = i),
            "value" => expr::linear(v, key, diags).map(|l| spec.value = stuck(l, v, diags)),
            "proj" => expr::linear(v, key, diags).map(|l| spec.proj = stuck(l, v, diags)),
            "bias" => expr::boolean(v, key, diags).map(|b| spec.qk_bias = b),
            "qk_norm" => expr::keyword(v, key, super::model::NORMS, diags).map(|k| spec.qk_norm = norm_kind(k)),
            "softcap" => positive_or_none(v, key, diags).map(|c| spec.softcap = c),
            "window" => window(v, diags).map(|w| spec.window = w),
            "rope_base" => positive_or_none(v, key, diags).map(|b| {
                spec.rope_base = b;
                spec.rope_base_at = b.map(|_| n.span.to_value(v.span()));
            }),
            "head_dim" => expr::integer(v, key, 1, 65_536, true, diags).map(|h| spec.head_dim = Some(h)),
            "kv_heads" => expr::integer(v, key, 1, 65_536, true, diags).map(|h| {
                spec.kv_heads = Some(h);
                spec.kv_heads_at = Some(n.span.to_value(v.span()));
            }),
            "dropout" => rate(v, key, diags).map(|p| spec.dropout.inner = p),
            "resid_dropout" => rate(v, key, diags).map(|p| spec.dropout.branch = p),
            _ => {
                let mut names = MatrixNames { params: &spec.params, used: &mut used };
                matrix(v, &mut names, diags).map(|m| spec.matrix = m)
            }
        };
        ok &= set.is_some();
    }
    if let Some(s) = section {
        unused_params(&flat, &spec.params, &used, s, diags);
    }
    ok.then_some(spec)
}

fn unused_params(flat: &[Flat], params: &[ParamDef], used: &HashSet<usize>, _s: &Section, diags: &mut Vec<Diagnostic>) {
    for (i, p) in params.iter().enumerate() {
        if !used.contains(&i) {
            let name = flat.iter().find(|f| f.name().name == p.name).map_or(p.span, |f| f.name().span);
            diags.push(
                Diagnostic::new(Code::W2003, name, format!("param `{}` is never used", p.name))
                    .label("declared but not used in `matrix`")
                    .help("use it in the attention matrix or remove it"),
            );
        }
    }
}

/// Warns about a trainable reparam with `resid = 0`: ΔW starts at zero and
/// is multiplied by zero, so neither it nor `resid` ever gets a gradient
/// (the reference code turns this case into an identity when `skip = 1`).
fn stuck(l: Linear, v: &Expr, diags: &mut Vec<Diagnostic>) -> Linear {
    if let Linear::Reparam { resid: Scalar::Const(r), trainable: true, .. } = &l {
        if *r == 0.0 {
            diags.push(
                Diagnostic::new(Code::W2004, v.span(), "`resid = 0` leaves `ΔW` and `resid` without gradient")
                    .label("only `skip` can train here")
                    .help("use a non-zero `resid` (e.g. 1), or `identity` if the map should have no parameters"),
            );
        }
    }
    l
}

pub fn norm_kind(k: &str) -> Option<NormKind> {
    match k {
        "rmsnorm" => Some(NormKind::RmsNorm),
        "layernorm" => Some(NormKind::LayerNorm),
        _ => None,
    }
}

/// `none`, or a number as [`positive`] takes it (a soft-cap, a rotary
/// base).
pub(crate) fn positive_or_none(v: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Option<f64>> {
    if matches!(v, Expr::Name(n) if n.name == "none") {
        return Some(None);
    }
    positive(v, key, " (or `none`)", diags).map(Some)
}

/// A constant number greater than 0 and finite as the model computes it:
/// in f32's range of normal numbers, so that neither it nor its inverse
/// is 0 or infinite there (`also`: what else the setting takes, for the
/// diagnostic).
pub(crate) fn positive(v: &Expr, key: &str, also: &str, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    let c = expr::number(v, key, diags)?;
    if !(f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&c) {
        let range = format!("greater than 0 and finite in f32 (1.2e-38 to 3.4e38){also}");
        diags.push(expr::out_of_range(v.span(), key, c, &range));
        return None;
    }
    Some(c)
}

/// `window = N` (a whole number of tokens, at least 1) or `none`.
fn window(v: &Expr, diags: &mut Vec<Diagnostic>) -> Option<Option<u64>> {
    if matches!(v, Expr::Name(n) if n.name == "none") {
        return Some(None);
    }
    expr::integer(v, "window", 1, MAX_WINDOW, true, diags).map(Some)
}

/// The largest window: far beyond any context a model here can have.
const MAX_WINDOW: u64 = 1 << 24;

/// Resolves an MLP sub-block: reference defaults (ReLU, 4×, no bias,
/// N(0, 0.02²)), then the section, then the call's keyword arguments.
pub fn mlp(
    section: Option<&Section>,
    kwargs: &[(&Ident, &Expr)],
    m: &[LayerSelector],
    diags: &mut Vec<Diagnostic>,
) -> Option<MlpSpec> {
    let flat = section.map(|s| flatten(&s.body, m, true, diags)).unwrap_or_default();
    for f in &flat {
        if let Flat::Param(p) = f {
            diags.push(
                Diagnostic::new(Code::E2008, p.span, "an `mlp` section has no params")
                    .label("param in an mlp section")
                    .help("put gains on the block edges instead: `out = h + beta_ff * mlp(n)`"),
            );
        }
    }
    let mut spec = MlpSpec {
        config: section.and_then(|s| s.name.as_ref().map(|n| n.name.clone())),
        activation: Activation::Relu,
        gated: false,
        width: 4.0,
        multiple_of: 1,
        bias: false,
        up: std002(),
        down: std002(),
        dropout: Dropout::default(),
    };
    let mut ok = true;
    for (n, v) in settings(&flat, kwargs, MLP_KEYS, "mlp", diags) {
        let key = n.name.as_str();
        let set = match key {
            "activation" => activation(v, diags).map(|(a, gated)| {
                spec.activation = a;
                spec.gated = gated;
            }),
            "width" => mlp_width(v, diags).map(|w| spec.width = w),
            "multiple_of" => expr::integer(v, key, 1, 1 << 16, false, diags).map(|m| spec.multiple_of = m),
            "bias" => expr::boolean(v, key, diags).map(|b| spec.bias = b),
            "up" => expr::init(v, key, diags).map(|i| spec.up = i),
            "dropout" => rate(v, key, diags).map(|p| spec.dropout.inner = p),
            "resid_dropout" => rate(v, key, diags).map(|p| spec.dropout.branch = p),
            _ => expr::init(v, key, diags).map(|i| spec.down = i),
        };
        ok &= set.is_some();
    }
    ok.then_some(spec)
}

/// A dropout rate: a constant in [0, 1).
fn rate(v: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    let p = expr::number(v, key, diags)?;
    if !(0.0..1.0).contains(&p) {
        diags.push(
            expr::out_of_range(v.span(), key, p, "in [0, 1)")
                .help("a dropout rate is the probability of dropping a value: from 0 (none, the default) to below 1"),
        );
        return None;
    }
    Some(p)
}

/// Largest MLP width multiple.
pub const MAX_MLP_WIDTH: f64 = 64.0;

fn mlp_width(v: &Expr, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    let w = expr::number(v, "width", diags)?;
    if w > MAX_MLP_WIDTH {
        diags.push(
            Diagnostic::new(Code::E2016, v.span(), format!("mlp `width` = {w} exceeds the limit of {MAX_MLP_WIDTH}"))
                .label("above the limit")
                .help(format!("the hidden width is a multiple of the model width, at most {MAX_MLP_WIDTH}")),
        );
        return None;
    }
    if w <= 0.0 {
        diags.push(expr::out_of_range(v.span(), "width", w, "greater than 0"));
        return None;
    }
    Some(w)
}

pub(crate) const ACTIVATIONS: &[&str] = &[
    "relu",
    "leaky_relu",
    "gelu",
    "gelu_tanh",
    "silu",
    "tanh",
    "erf",
    "identity",
    "swiglu",
    "geglu",
    "geglu_tanh",
    "reglu",
];

/// The activation, and whether the unit is gated (`swiglu`, `geglu`,
/// `geglu_tanh`, `reglu`: the activation of a gate times a linear map).
fn activation(v: &Expr, diags: &mut Vec<Diagnostic>) -> Option<(Activation, bool)> {
    if let Expr::Call { callee, args, span } = v {
        if callee.name == "leaky_relu" {
            if args.len() != 1 || args[0].name.as_ref().is_some_and(|n| n.name != "slope") {
                diags.push(expr::arity(*span, "leaky_relu", 1, args.len()));
                return None;
            }
            let s = expr::number(&args[0].value, "slope", diags)?;
            if !(-1.0..=1.0).contains(&s) {
                diags.push(expr::out_of_range(args[0].value.span(), "slope", s, "between -1 and 1"));
                return None;
            }
            return Some((Activation::LeakyRelu { slope: s }, false));
        }
    }
    let k = expr::keyword(v, "activation", ACTIVATIONS, diags)?;
    let gated = matches!(k, "swiglu" | "geglu" | "geglu_tanh" | "reglu");
    Some((
        match k {
            "relu" | "reglu" => Activation::Relu,
            "leaky_relu" => Activation::LeakyRelu { slope: 0.01 },
            "gelu" | "geglu" => Activation::Gelu,
            "gelu_tanh" | "geglu_tanh" => Activation::GeluTanh,
            "silu" | "swiglu" => Activation::Silu,
            "tanh" => Activation::Tanh,
            "erf" => Activation::Erf,
            _ => Activation::Identity,
        },
        gated,
    ))
}

/// Names inside an attention matrix: the section's params and variables.
struct MatrixNames<'a> {
    params: &'a [ParamDef],
    used: &'a mut HashSet<usize>,
}

impl Names for MatrixNames<'_> {
    fn lookup(&mut self, name: &Ident, diags: &mut Vec<Diagnostic>) -> Lookup {
        if let Some(i) = self.params.iter().position(|p| p.name == name.name) {
            self.used.insert(i);
            return Lookup::Scalar(Scalar::Param(i));
        }
        if term(&name.name).is_some() {
            diags.push(
                Diagnostic::new(Code::E2009, name.span, format!("`{}` used as a gain", name.name))
                    .label("a matrix term, not a scalar")
                    .help("the matrix is a sum of gain · term; a term cannot scale another"),
            );
            return Lookup::Reported;
        }
        match expr::var_lookup(&name.name) {
            Lookup::Unknown(mut c) => {
                c.extend(self.params.iter().map(|p| p.name.clone()));
                Lookup::Unknown(c)
            }
            found => found,
        }
    }
}

fn term(name: &str) -> Option<MatrixTerm> {
    match name {
        "I" => Some(MatrixTerm::Identity),
        "softmax" => Some(MatrixTerm::Softmax),
        "centre" => Some(MatrixTerm::Centre),
        _ => None,
    }
}

fn has_term(e: &Expr, params: &[ParamDef]) -> bool {
    match e {
        Expr::Name(n) => term(&n.name).is_some() && !params.iter().any(|p| p.name == n.name),
        Expr::Neg { operand, .. } => has_term(operand, params),
        Expr::Binary { lhs, rhs, .. } => has_term(lhs, params) || has_term(rhs, params),
        Expr::Call { args, .. } => args.iter().any(|a| has_term(&a.value, params)),
        _ => false,
    }
}

/// The attention matrix as a linear combination of `I`, `softmax`, `centre`.
fn matrix(e: &Expr, names: &mut MatrixNames, diags: &mut Vec<Diagnostic>) -> Option<Vec<(Scalar, MatrixTerm)>> {
    let bad = |span: Span, msg: String, label: &str| {
        Diagnostic::new(Code::E2009, span, msg)
            .label(label.to_string())
            .help("write the matrix as a sum of gains times `I`, `softmax` and `centre`, e.g. `alpha * I + beta * softmax - gamma * centre`")
    };
    match e {
        Expr::Name(n) => match term(&n.name) {
            Some(t) => Some(vec![(Scalar::one(), t)]),
            None => {
                let d = match names.lookup(n, &mut Vec::new()) {
                    Lookup::Scalar(_) => bad(
                        n.span,
                        format!("`{}` alone is not an attention-matrix term", n.name),
                        "a gain without a term",
                    ),
                    _ => unknown_term(n),
                };
                diags.push(d);
                None
            }
        },
        Expr::Neg { operand, .. } => Some(negate(matrix(operand, names, diags)?)),
        Expr::Binary { op: op @ (BinOp::Add | BinOp::Sub), lhs, rhs, .. } => {
            let l = matrix(lhs, names, diags);
            let r = matrix(rhs, names, diags);
            let r = if *op == BinOp::Sub { negate(r?) } else { r? };
            Some([l?, r].concat())
        }
        Expr::Binary { op: op @ (BinOp::Mul | BinOp::Div), lhs, rhs, span } => {
            let (lt, rt) = (has_term(lhs, names.params), has_term(rhs, names.params));
            match (lt, rt) {
                (true, true) => {
                    diags.push(bad(
                        *span,
                        "product of two attention-matrix terms".into(),
                        "terms can only be scaled and added",
                    ));
                    None
                }
                (false, false) => {
                    let unknown = [lhs, rhs].into_iter().find_map(|s| match &**s {
                        Expr::Name(n) if matches!(names.lookup(n, &mut Vec::new()), Lookup::Unknown(_)) => Some(n),
                        _ => None,
                    });
                    diags.push(match unknown {
                        Some(n) => unknown_term(n),
                        None => bad(
                            *span,
                            "a gain without a term in the attention matrix".into(),
                            "no `I`, `softmax` or `centre` here",
                        ),
                    });
                    None
                }
                (true, false) => {
                    let terms = matrix(lhs, names, diags)?;
                    let s = expr::scalar(rhs, names, diags)?;
                    let s = if *op == BinOp::Div {
                        Scalar::Bin(BinOp::Div, Box::new(Scalar::one()), Box::new(s))
                    } else {
                        s
                    };
                    Some(scale(terms, s))
                }
                (false, true) if *op == BinOp::Mul => {
                    let s = expr::scalar(lhs, names, diags)?;
                    Some(scale(matrix(rhs, names, diags)?, s))
                }
                (false, true) => {
                    diags.push(bad(*span, "division by an attention-matrix term".into(), "cannot divide by a term"));
                    None
                }
            }
        }
        other => {
            let msg = if has_term(other, names.params) {
                "attention-matrix terms can only be scaled and added"
            } else {
                "a gain without a term in the attention matrix"
            };
            diags.push(bad(other.span(), msg.into(), "not a linear combination of terms"));
            None
        }
    }
}

fn unknown_term(n: &Ident) -> Diagnostic {
    let d =
        Diagnostic::new(Code::E2009, n.span, format!("unknown attention-matrix term `{}`", n.name)).label("not a term");
    match did_you_mean(&n.name, ["I", "softmax", "centre", "center"]) {
        Some(s) if s == "center" => d.help("did you mean `centre`?"),
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help("the terms are `I` (identity), `softmax` and `centre` (softmax at zero logits under the mask)"),
    }
}

fn negate(terms: Vec<(Scalar, MatrixTerm)>) -> Vec<(Scalar, MatrixTerm)> {
    terms.into_iter().map(|(s, t)| (s.negate(), t)).collect()
}

fn scale(terms: Vec<(Scalar, MatrixTerm)>, by: Scalar) -> Vec<(Scalar, MatrixTerm)> {
    terms.into_iter().map(|(s, t)| (by.clone().times(s), t)).collect()
}
