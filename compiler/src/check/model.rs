//! The `model` section → [`Model`], with resource limits, and the `train`
//! section → [`Train`].

use super::expr;
use super::sections::{duplicate, flatten, unknown_setting, Flat};
use crate::diag::{Code, Diagnostic};
use crate::graph::{Init, Mask, Model, Norm, Positions, Scalar, Train, TrainValue};
use crate::span::Span;
use crate::syntax::ast::{Expr, Ident, Section};

/// Resource limits: a model above any of these is an error, never an
/// allocation.
pub mod limits {
    pub const DEPTH: u64 = 4096;
    pub const WIDTH: u64 = 65_536;
    pub const HEADS: u64 = 4096;
    pub const CONTEXT: u64 = 131_072;
    pub const VOCAB: u64 = 4_194_304;
    /// Total parameters (10¹²).
    pub const PARAMS: u128 = 1_000_000_000_000;
}

/// The values of `mask`, `positions` and `final_norm`.
pub(crate) const MASKS: &[&str] = &["causal", "bidirectional"];
pub(crate) const POSITIONS: &[&str] = &["learned", "sinusoidal", "rope", "alibi", "none"];
pub(crate) const NORMS: &[&str] = &["rmsnorm", "layernorm", "none"];

pub(crate) const MODEL_KEYS: &[&str] = &[
    "block",
    "depth",
    "width",
    "heads",
    "context",
    "vocab",
    "mask",
    "positions",
    "final_norm",
    "tied_embeddings",
    "embed_init",
    "embed_scale",
    "logit_softcap",
];

/// The settings of a section as a list of (name, value); reports
/// duplicates, unknown keys, params and layer overrides.
fn plain<'a>(s: &'a Section, known: &[&str], diags: &mut Vec<Diagnostic>) -> Vec<(&'a Ident, &'a Expr)> {
    let kw = s.kind.keyword();
    let mut out: Vec<(&Ident, &Expr)> = Vec::new();
    for st in &s.body {
        if let crate::syntax::ast::Stmt::Layer(l) = st {
            diags.push(
                Diagnostic::new(Code::E2020, l.span, format!("a `{kw}` section has no layer overrides"))
                    .label("not allowed here")
                    .help("put per-layer changes in the block or in an `attention`/`mlp` section"),
            );
        }
    }
    for f in flatten(&s.body, &[], false, &mut Vec::new()) {
        match f {
            Flat::Param(p) => diags.push(
                Diagnostic::new(Code::E2008, p.span, format!("a `{kw}` section has no params"))
                    .label("param here")
                    .help("declare gains in a block or an attention section"),
            ),
            Flat::Assign(n, v, _) => {
                if let Some((first, _)) = out.iter().find(|(k, _)| k.name == n.name) {
                    diags.push(duplicate(n, first.span, "setting"));
                } else if !known.contains(&n.name.as_str()) {
                    diags.push(unknown_setting(n, known, kw));
                } else {
                    out.push((n, v));
                }
            }
        }
    }
    out
}

/// A model's settings; `block` is resolved by the caller.
pub struct ModelSettings<'a> {
    pub block: Option<&'a Ident>,
    pub model: Model,
}

pub fn header(s: &Section) -> Span {
    Span { end: s.span.start + s.kind.keyword().len() as u32, ..s.span }
}

/// Resolves a `model` section; `None` if a required setting is missing or
/// invalid (each problem reported).
pub fn model<'a>(s: &'a Section, diags: &mut Vec<Diagnostic>) -> Option<ModelSettings<'a>> {
    use limits::*;
    let settings = plain(s, MODEL_KEYS, diags);
    let get = |k: &str| settings.iter().find(|(n, _)| n.name == k).map(|(_, v)| *v);
    let mut missing = Vec::new();
    let mut int = |k: &str, min: u64, max: u64, diags: &mut Vec<Diagnostic>| match get(k) {
        Some(v) => expr::integer(v, k, min, max, true, diags),
        None => {
            missing.push(k.to_string());
            None
        }
    };
    let depth = int("depth", 1, DEPTH, diags);
    let width = int("width", 1, WIDTH, diags);
    let heads = int("heads", 1, HEADS, diags);
    let vocab = int("vocab", 2, VOCAB, diags);
    let context = match get("context") {
        Some(v) => expr::integer(v, "context", 1, CONTEXT, true, diags),
        None => Some(128),
    };
    let block = match get("block") {
        Some(Expr::Name(n)) => Some(n),
        Some(other) => {
            diags.push(expr::invalid(other.span(), "block", "the name of a block"));
            None
        }
        None => {
            missing.push("block".into());
            None
        }
    };
    // A setting written under another tool's name (`n_layer`) is already
    // reported with blkc's name; it is not missing as well.
    let written: Vec<String> = flatten(&s.body, &[], false, &mut Vec::new())
        .iter()
        .filter_map(|f| match f {
            Flat::Assign(n, _, _) => crate::check::sections::renamed(&n.name).map(str::to_string),
            Flat::Param(_) => None,
        })
        .collect();
    missing.retain(|k| !written.contains(k));
    if !missing.is_empty() {
        diags.push(
            Diagnostic::new(Code::E2017, header(s), format!("model is missing {}", expr::list(&missing)))
                .label("incomplete model")
                .help(format!(
                    "add {} to the model",
                    missing.iter().map(|m| format!("`{m} = …`")).collect::<Vec<_>>().join(", ")
                )),
        );
    }
    if let (Some(width), Some(heads)) = (width, heads) {
        let at = |key| get(key).map_or(header(s), Expr::span);
        heads_divide((width, at("width")), (heads, at("heads")), diags)?;
    }
    let (depth, width, heads, context, vocab) = (depth?, width?, heads?, context?, vocab?);

    let mask = match get("mask") {
        Some(v) => match expr::keyword(v, "mask", MASKS, diags)? {
            "causal" => Mask::Causal,
            _ => Mask::Bidirectional,
        },
        None => Mask::Causal,
    };
    let positions = match get("positions") {
        Some(v) => positions(v, context, diags)?,
        None => Positions::Learned { max: context },
    };
    let final_norm = match get("final_norm") {
        Some(v) => final_norm(v, diags)?,
        None => Some(Norm { kind: crate::graph::NormKind::LayerNorm, eps: super::block::DEFAULT_EPS }),
    };
    let tied_embeddings = match get("tied_embeddings") {
        Some(v) => expr::boolean(v, "tied_embeddings", diags)?,
        None => true,
    };
    let embed_init = match get("embed_init") {
        Some(v) => expr::init(v, "embed_init", diags)?,
        None => Init::Normal { std: Scalar::Const(0.02) },
    };
    // Both checked before either returns, so that both are reported.
    let embed_scale =
        get("embed_scale").map_or(Some(1.0), |v| crate::check::sections::positive(v, "embed_scale", "", diags));
    let cap = get("logit_softcap")
        .map_or(Some(None), |v| crate::check::sections::positive_or_none(v, "logit_softcap", diags));
    let (embed_scale, logit_softcap) = (embed_scale?, cap?);
    let spans = settings.iter().map(|(n, v)| (n.name.clone(), n.span.to_value(v.span()))).collect();
    let model = Model {
        name: s.name.as_ref().map(|n| n.name.clone()),
        block: usize::MAX,
        depth,
        width,
        heads,
        context,
        vocab,
        mask,
        positions,
        final_norm,
        tied_embeddings,
        embed_init,
        embed_scale,
        logit_softcap,
        spans,
        span: s.span,
    };
    Some(ModelSettings { block, model })
}

/// The head count must divide the width; the error is at the heads, with
/// the width's value marked where it is set (another file when it came
/// from `--set`).
fn heads_divide((width, width_at): (u64, Span), (heads, span): (u64, Span), diags: &mut Vec<Diagnostic>) -> Option<()> {
    if heads <= width && width.is_multiple_of(heads) {
        return Some(());
    }
    diags.push(
        Diagnostic::new(Code::E2013, span, format!("{heads} heads do not divide the width {width}"))
            .label(format!("{width} / {heads} is not a whole number"))
            .note(width_at, format!("the width, {width}"))
            .help(format!("pick a head count that divides {width}, e.g. {}", divisor_near(width, heads))),
    );
    None
}

fn divisor_near(width: u64, heads: u64) -> u64 {
    (1..=width.min(heads.max(1) * 2)).rev().find(|h| width.is_multiple_of(*h) && *h <= heads.max(1)).unwrap_or(1)
}

fn positions(v: &Expr, context: u64, diags: &mut Vec<Diagnostic>) -> Option<Positions> {
    if let Expr::Call { callee, args, .. } = v {
        if callee.name == "rope" {
            return rope(args, diags).map(Positions::Rope);
        }
    }
    if let Expr::Call { callee, args, span } = v {
        if callee.name == "learned" {
            if args.len() != 1 || args[0].name.as_ref().is_some_and(|n| n.name != "max") {
                diags.push(expr::arity(*span, "learned", 1, args.len()));
                return None;
            }
            let max = expr::integer(&args[0].value, "max", 1, limits::CONTEXT * 8, true, diags)?;
            if max < context {
                diags.push(expr::out_of_range(
                    args[0].value.span(),
                    "max",
                    max as f64,
                    &format!("at least the context ({context})"),
                ));
                return None;
            }
            return Some(Positions::Learned { max });
        }
    }
    Some(match expr::keyword(v, "positions", POSITIONS, diags)? {
        "learned" => Positions::Learned { max: context },
        "sinusoidal" => Positions::Sinusoidal,
        "rope" => Positions::Rope(DEFAULT_ROPE),
        "alibi" => Positions::Alibi,
        _ => Positions::None,
    })
}

/// RoPE as most models set it: base 10000, every dimension rotated.
const DEFAULT_ROPE: crate::graph::Rope = crate::graph::Rope { base: 10_000.0, fraction: 1.0 };

/// `rope(base = B, fraction = F)`, both optional.
fn rope(args: &[crate::syntax::ast::Arg], diags: &mut Vec<Diagnostic>) -> Option<crate::graph::Rope> {
    let mut r = DEFAULT_ROPE;
    for a in args {
        let Some(name) = &a.name else {
            diags.push(expr::invalid(a.value.span(), "rope", "named arguments: `rope(base = 10000, fraction = 0.25)`"));
            return None;
        };
        let x = expr::number(&a.value, &name.name, diags)?;
        match name.name.as_str() {
            "base" if x > 1.0 && x <= 1e9 => r.base = x,
            "base" => {
                diags.push(expr::out_of_range(a.value.span(), "base", x, "above 1 and at most 1e9"));
                return None;
            }
            "fraction" if x > 0.0 && x <= 1.0 => r.fraction = x,
            "fraction" => {
                diags.push(expr::out_of_range(a.value.span(), "fraction", x, "above 0 and at most 1"));
                return None;
            }
            _ => {
                diags.push(expr::invalid(name.span, "rope", "`base` or `fraction`"));
                return None;
            }
        }
    }
    Some(r)
}

fn final_norm(v: &Expr, diags: &mut Vec<Diagnostic>) -> Option<Option<Norm>> {
    let (name, args) = match v {
        Expr::Call { callee, args, .. } => (callee, args.as_slice()),
        Expr::Name(n) => (n, &[][..]),
        _ => {
            diags.push(expr::invalid(v.span(), "final_norm", "`rmsnorm`, `layernorm` or `none`"));
            return None;
        }
    };
    let k = expr::keyword(&Expr::Name(name.clone()), "final_norm", NORMS, diags)?;
    let Some(kind) = super::sections::norm_kind(k) else { return Some(None) };
    let mut eps = super::block::DEFAULT_EPS;
    for a in args {
        match &a.name {
            Some(n) if n.name == "eps" => {
                eps = expr::number(&a.value, "eps", diags)?;
                if !(eps > 0.0 && eps < 1.0) {
                    diags.push(expr::out_of_range(a.value.span(), "eps", eps, "between 0 and 1 (exclusive)"));
                    return None;
                }
            }
            _ => {
                diags.push(expr::invalid(a.value.span(), "final_norm", "only `eps = …` as argument"));
                return None;
            }
        }
    }
    Some(Some(Norm { kind, eps }))
}

/// What a training setting accepts.
pub(crate) enum Kind {
    Int(u64, u64),
    /// A number in `lo..=hi`, `lo` excluded when the flag is set.
    Float(f64, f64, bool),
    Choice(&'static [&'static str]),
    /// One of the keywords, or a string (a path).
    ChoiceOrText(&'static [&'static str]),
    Text,
}

pub(crate) const TRAIN_KEYS: &[(&str, Kind)] = &[
    ("data", Kind::Text),
    ("data_field", Kind::Text),
    ("tokenizer", Kind::ChoiceOrText(&["bpe", "bytes"])),
    ("batch", Kind::Int(1, 1 << 20)),
    ("micro_batch", Kind::Int(1, 1 << 16)),
    ("steps", Kind::Int(1, 1_000_000_000)),
    ("lr", Kind::Float(0.0, 10.0, true)),
    ("warmup", Kind::Float(0.0, 1.0, false)),
    ("schedule", Kind::Choice(&["linear", "cosine", "constant"])),
    ("optimizer", Kind::Choice(&["adamw", "adam", "sgd"])),
    ("beta1", Kind::Float(0.0, 0.999_999, false)),
    ("beta2", Kind::Float(0.0, 0.999_999_9, false)),
    ("adam_eps", Kind::Float(0.0, 1.0, true)),
    ("weight_decay", Kind::Float(0.0, 10.0, false)),
    ("clip", Kind::Float(0.0, 1e6, false)),
    ("eval_every", Kind::Int(1, 1_000_000_000)),
    ("eval_batches", Kind::Int(1, 1_000_000)),
    ("checkpoint_every", Kind::Int(1, 1_000_000_000)),
    ("log_every", Kind::Int(1, 1_000_000_000)),
    ("seed", Kind::Int(0, u32::MAX as u64)),
    ("val_fraction", Kind::Float(0.0, 0.5, true)),
    ("mask_rate", Kind::Float(0.0, 1.0, true)),
    ("device", Kind::Choice(&["cpu", "cuda", "wgpu"])),
    ("precision", Kind::Choice(&["auto", "fp32", "tf32", "bf16"])),
    ("devices", Kind::Int(1, 1024)),
];

/// Resolves the `train` sections (used files first; a later setting
/// replaces an earlier one of the same name): every key known, every value
/// of its kind.
pub fn train(sections: &[&Section], diags: &mut Vec<Diagnostic>) -> Train {
    let keys: Vec<&str> = TRAIN_KEYS.iter().map(|(k, _)| *k).collect();
    let mut settings: Vec<(String, TrainValue, Span)> = Vec::new();
    let all = sections.iter().flat_map(|s| plain(s, &keys, diags));
    for (n, v) in all.collect::<Vec<_>>() {
        let Some((_, kind)) = TRAIN_KEYS.iter().find(|(k, _)| *k == n.name) else { continue };
        let key = n.name.as_str();
        let value = match kind {
            Kind::Int(lo, hi) => expr::integer(v, key, *lo, *hi, false, diags).map(|i| TrainValue::Number(i as f64)),
            Kind::Float(lo, hi, open) => expr::number(v, key, diags).and_then(|x| {
                let ok = if *open { x > *lo } else { x >= *lo } && x <= *hi;
                if !ok {
                    let low = if *open { "above" } else { "at least" };
                    diags.push(expr::out_of_range(v.span(), key, x, &format!("{low} {lo} and at most {hi}")));
                }
                ok.then_some(TrainValue::Number(x))
            }),
            Kind::Choice(c) => expr::keyword(v, key, c, diags).map(|k| TrainValue::Text(k.to_string())),
            Kind::ChoiceOrText(c) => match v {
                Expr::String(s) if !s.value.is_empty() => Some(TrainValue::Text(s.value.clone())),
                other => expr::keyword(other, key, c, diags).map(|k| TrainValue::Text(k.to_string())),
            },
            Kind::Text => match v {
                Expr::String(s) => Some(TrainValue::Text(s.value.clone())),
                other => {
                    diags.push(expr::invalid(other.span(), key, "a string, e.g. \"python-stdlib\" or \"data/*.txt\""));
                    None
                }
            },
        };
        if let Some(value) = value {
            settings.retain(|(k, _, _)| *k != n.name);
            settings.push((n.name.clone(), value, n.span.to_value(v.span())));
        }
    }
    let span = sections.last().map_or_else(Span::default, |s| s.span);
    Train { settings, span }
}
