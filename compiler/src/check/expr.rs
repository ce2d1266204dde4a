//! Resolution of scalar expressions and of typed setting values (numbers,
//! booleans, keywords, inits, value/projection maps), shared by every pass.

use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::graph::{Func, Init, Linear, Scalar, Var};
use crate::span::Span;
use crate::syntax::ast::{Arg, BinOp, Expr, Ident};

/// What a name means where a scalar is expected.
pub enum Lookup {
    Scalar(Scalar),
    /// A tensor (reported as E2005).
    Tensor,
    /// Not known; the candidates feed "did you mean".
    Unknown(Vec<String>),
    /// Already reported.
    Reported,
}

/// Resolves names for [`scalar`].
pub trait Names {
    fn lookup(&mut self, name: &Ident, diags: &mut Vec<Diagnostic>) -> Lookup;
}

/// Names that are only the variables `depth`, `width`, `heads`, `layer`.
pub struct VarsOnly;

impl Names for VarsOnly {
    fn lookup(&mut self, name: &Ident, diags: &mut Vec<Diagnostic>) -> Lookup {
        if name.name == "head" {
            diags.push(head_outside(name));
            return Lookup::Reported;
        }
        var_lookup(&name.name)
    }
}

/// The names of a `per_head` param's initial value: the variables and
/// `head`, the index of the head (0-based).
pub struct PerHead;

impl Names for PerHead {
    fn lookup(&mut self, name: &Ident, diags: &mut Vec<Diagnostic>) -> Lookup {
        match name.name.as_str() {
            "head" => Lookup::Scalar(Scalar::Var(Var::Head)),
            _ => VarsOnly.lookup(name, diags),
        }
    }
}

/// `head` where there is no head.
pub fn head_outside(name: &Ident) -> Diagnostic {
    Diagnostic::new(Code::E2001, name.span, "`head` is defined only in the initial value of a `per_head` param")
        .label("no head here")
        .help("give an attention section's gain a value per head: `param beta = 1 + 0.1 * head trainable per_head`")
}

/// Looks up a built-in variable.
pub fn var_lookup(name: &str) -> Lookup {
    match Var::ALL.iter().find(|v| v.keyword() == name) {
        Some(v) => Lookup::Scalar(Scalar::Var(*v)),
        None => Lookup::Unknown(Var::ALL.iter().map(|v| v.keyword().to_string()).collect()),
    }
}

/// Names of no kind at all: only numbers are allowed.
pub struct NoNames;

impl Names for NoNames {
    fn lookup(&mut self, _: &Ident, _: &mut Vec<Diagnostic>) -> Lookup {
        Lookup::Unknown(Vec::new())
    }
}

pub fn unknown_name(name: &Ident, candidates: &[String], what: &str) -> Diagnostic {
    let d = Diagnostic::new(Code::E2001, name.span, format!("unknown {what} `{}`", name.name)).label("not defined");
    match did_you_mean(&name.name, candidates.iter().map(String::as_str)) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None if candidates.is_empty() => d.help("only numbers and arithmetic are allowed here"),
        None => d.help(format!("known here: {}", list(candidates))),
    }
}

/// `a`, `b` or `c` (at most eight names).
pub fn list(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    let more = if names.len() > 8 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}

/// Resolves a scalar expression; `None` after reporting a problem.
pub fn scalar(e: &Expr, names: &mut dyn Names, diags: &mut Vec<Diagnostic>) -> Option<Scalar> {
    match e {
        Expr::Number { value, .. } => Some(Scalar::Const(*value)),
        Expr::String(s) => {
            diags.push(
                Diagnostic::new(Code::E2008, s.span, "expected a number, found a string")
                    .label("a string")
                    .help("remove the quotes"),
            );
            None
        }
        Expr::Name(n) => match names.lookup(n, diags) {
            Lookup::Scalar(s) => Some(s),
            Lookup::Tensor => {
                diags.push(tensor_not_scalar(n.span, &format!("`{}` is a tensor", n.name)));
                None
            }
            Lookup::Unknown(c) => {
                diags.push(unknown_name(n, &c, "name"));
                None
            }
            Lookup::Reported => None,
        },
        Expr::Neg { operand, .. } => scalar(operand, names, diags).map(Scalar::negate),
        Expr::Binary { op, lhs, rhs, .. } => {
            let l = scalar(lhs, names, diags);
            let r = scalar(rhs, names, diags);
            Some(fold(*op, l?, r?))
        }
        Expr::Call { callee, args, span } => call(callee, args, *span, names, diags),
    }
}

/// `l op r`, folding constants.
pub(super) fn fold(op: BinOp, l: Scalar, r: Scalar) -> Scalar {
    match (op, &l, &r) {
        (BinOp::Add, Scalar::Const(a), Scalar::Const(b)) => Scalar::Const(a + b),
        (BinOp::Sub, Scalar::Const(a), Scalar::Const(b)) => Scalar::Const(a - b),
        (BinOp::Mul, _, _) => l.times(r),
        (BinOp::Div, Scalar::Const(a), Scalar::Const(b)) if *b != 0.0 => Scalar::Const(a / b),
        (BinOp::Pow, Scalar::Const(a), Scalar::Const(b)) if a.powf(*b).is_finite() => Scalar::Const(a.powf(*b)),
        _ => Scalar::Bin(op, Box::new(l), Box::new(r)),
    }
}

fn call(
    callee: &Ident,
    args: &[Arg],
    span: Span,
    names: &mut dyn Names,
    diags: &mut Vec<Diagnostic>,
) -> Option<Scalar> {
    let Some(f) = Func::ALL.iter().find(|f| f.keyword() == callee.name).copied() else {
        let funcs: Vec<String> = Func::ALL.iter().map(|f| f.keyword().to_string()).collect();
        let d = if is_module(&callee.name) {
            tensor_not_scalar(span, &format!("`{}(…)` is a tensor", callee.name))
        } else {
            unknown_name(callee, &funcs, "function")
        };
        diags.push(d);
        return None;
    };
    if let Some(a) = args.iter().find(|a| a.name.is_some()) {
        let n = a.name.as_ref().map_or(span, |n| n.span);
        diags.push(
            Diagnostic::new(Code::E2007, n, format!("`{}` takes no keyword arguments", f.keyword()))
                .label("keyword argument")
                .help("pass the value by position"),
        );
        return None;
    }
    if args.len() != f.arity() {
        diags.push(arity(span, f.keyword(), f.arity(), args.len()));
        return None;
    }
    let vals: Vec<Option<Scalar>> = args.iter().map(|a| scalar(&a.value, names, diags)).collect();
    let vals: Option<Vec<Scalar>> = vals.into_iter().collect();
    let vals = vals?;
    if let [Scalar::Const(c)] = vals.as_slice() {
        let v = match f {
            Func::Sqrt => c.sqrt(),
            Func::Exp => c.exp(),
            Func::Log => c.ln(),
            _ => c.abs(),
        };
        if v.is_finite() {
            return Some(Scalar::Const(v));
        }
    }
    Some(Scalar::Call(f, vals))
}

pub fn is_module(name: &str) -> bool {
    matches!(name, "attn" | "mlp" | "rmsnorm" | "layernorm")
}

pub fn tensor_not_scalar(span: Span, what: &str) -> Diagnostic {
    Diagnostic::new(Code::E2005, span, format!("expected a scalar, but {what}"))
        .label("a tensor")
        .help("gains and settings are scalars: numbers, params, `depth`, `width`, `heads`, `layer`")
}

pub fn arity(span: Span, name: &str, want: usize, got: usize) -> Diagnostic {
    let s = if want == 1 { "" } else { "s" };
    let verb = if got == 1 { "was" } else { "were" };
    Diagnostic::new(Code::E2006, span, format!("`{name}` takes {want} argument{s}, but {got} {verb} given"))
        .label(format!("{got} argument{}", if got == 1 { "" } else { "s" }))
        .help(format!("call it as `{name}({})`", vec!["…"; want].join(", ")))
}

/// An `E2008` "expected …" diagnostic.
pub fn invalid(span: Span, key: &str, expected: &str) -> Diagnostic {
    Diagnostic::new(Code::E2008, span, format!("invalid value for `{key}`"))
        .label(format!("expected {expected}"))
        .help(format!("`{key}` takes {expected}"))
}

/// A constant number (arithmetic of numbers only).
pub fn number(e: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<f64> {
    match scalar(e, &mut NoNames, diags)? {
        Scalar::Const(v) => Some(v),
        _ => {
            diags.push(invalid(e.span(), key, "a constant number"));
            None
        }
    }
}

/// A whole number in `min..=max`; above `max` is a resource-limit error
/// when `limit` is set.
pub fn integer(e: &Expr, key: &str, min: u64, max: u64, limit: bool, diags: &mut Vec<Diagnostic>) -> Option<u64> {
    let v = number(e, key, diags)?;
    if v.fract() != 0.0 {
        diags.push(invalid(e.span(), key, "a whole number"));
        return None;
    }
    if v > max as f64 && limit {
        diags.push(
            Diagnostic::new(Code::E2016, e.span(), format!("`{key}` = {v} exceeds the limit of {max}"))
                .label(format!("above the {key} limit"))
                .help(format!("blkc accepts `{key}` up to {max}; larger models cannot be built or checked")),
        );
        return None;
    }
    if v < min as f64 || v > max as f64 {
        diags.push(out_of_range(e.span(), key, v, &format!("between {min} and {max}")));
        return None;
    }
    Some(v as u64)
}

pub fn out_of_range(span: Span, key: &str, v: f64, range: &str) -> Diagnostic {
    // Very small and very large values in exponent form (every digit
    // kept: the value is what is out of range).
    let shown = if v != 0.0 && v.is_finite() && (v.abs() < 1e-4 || v.abs() >= 1e16) {
        format!("{v:e}")
    } else {
        format!("{v}")
    };
    Diagnostic::new(Code::E2015, span, format!("`{key}` = {shown} is out of range"))
        .label(format!("must be {range}"))
        .help(format!("choose a value {range}"))
}

/// A keyword out of `choices`.
pub fn keyword<'c>(e: &Expr, key: &str, choices: &[&'c str], diags: &mut Vec<Diagnostic>) -> Option<&'c str> {
    let name = match e {
        Expr::Name(n) => n,
        _ => {
            diags.push(invalid(e.span(), key, &one_of(choices)));
            return None;
        }
    };
    if let Some(c) = choices.iter().find(|c| **c == name.name) {
        return Some(c);
    }
    let d = Diagnostic::new(Code::E2008, name.span, format!("`{}` is not a valid `{key}`", name.name))
        .label(format!("expected {}", one_of(choices)));
    let d = match did_you_mean(&name.name, choices.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("`{key}` takes {}", one_of(choices))),
    };
    diags.push(d);
    None
}

pub fn one_of(choices: &[&str]) -> String {
    let q: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("one of {} or {last}", rest.join(", ")),
        _ => q.join(""),
    }
}

pub fn boolean(e: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<bool> {
    keyword(e, key, &["true", "false"], diags).map(|k| k == "true")
}

pub(crate) const INITS: &[&str] = &["zeros", "identity", "orthogonal", "normal", "fan_in"];

/// An init: `zeros`, `identity`, `orthogonal[(gain)]`, `normal(std)`,
/// `fan_in[(gain)]`.
pub fn init(e: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Init> {
    let (name, args, span) = match e {
        Expr::Name(n) => (n, &[][..], n.span),
        Expr::Call { callee, args, span } => (callee, args.as_slice(), *span),
        _ => {
            diags.push(invalid(
                e.span(),
                key,
                "an init (`zeros`, `identity`, `orthogonal`, `normal(std)` or `fan_in(gain)`)",
            ));
            return None;
        }
    };
    let arg = |param: &str, default: Option<f64>, diags: &mut Vec<Diagnostic>| -> Option<Scalar> {
        one_arg(name, args, param, default, span, diags)
    };
    match name.name.as_str() {
        "zeros" | "identity" if !args.is_empty() => {
            diags.push(arity(span, &name.name, 0, args.len()));
            None
        }
        "zeros" => Some(Init::Zeros),
        "identity" => Some(Init::Identity),
        "orthogonal" => Some(Init::Orthogonal { gain: arg("gain", Some(1.0), diags)? }),
        "normal" => Some(Init::Normal { std: arg("std", None, diags)? }),
        "fan_in" => Some(Init::FanIn { gain: arg("gain", Some(1.0), diags)? }),
        _ => {
            let d = Diagnostic::new(Code::E2008, name.span, format!("`{}` is not an init", name.name))
                .label("unknown init");
            let help = match did_you_mean(&name.name, INITS.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "inits are `zeros`, `identity`, `orthogonal(gain)`, `normal(std)` and `fan_in(gain)`".into(),
            };
            diags.push(d.help(help));
            None
        }
    }
}

/// The single argument `param` of an init call, by position or name.
fn one_arg(
    name: &Ident,
    args: &[Arg],
    param: &str,
    default: Option<f64>,
    span: Span,
    diags: &mut Vec<Diagnostic>,
) -> Option<Scalar> {
    if args.len() > 1 {
        diags.push(arity(span, &name.name, 1, args.len()));
        return None;
    }
    let Some(a) = args.first() else {
        return match default {
            Some(d) => Some(Scalar::Const(d)),
            None => {
                diags.push(arity(span, &name.name, 1, 0));
                None
            }
        };
    };
    if let Some(n) = a.name.as_ref().filter(|n| n.name != param) {
        diags.push(
            Diagnostic::new(Code::E2007, n.span, format!("`{}` has no argument `{}`", name.name, n.name))
                .label("unknown argument")
                .help(format!("its argument is `{param}`")),
        );
        return None;
    }
    let s = scalar(&a.value, &mut VarsOnly, diags)?;
    if let Scalar::Const(v) = s {
        if v < 0.0 {
            diags.push(out_of_range(a.value.span(), param, v, "at least 0"));
            return None;
        }
    }
    Some(s)
}

/// A value/projection map: `identity`, `linear(init[, bias = b])` or
/// `reparam(skip = a, resid = b, init = i[, trainable])`.
pub fn linear(e: &Expr, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Linear> {
    let expected = "`identity`, `linear(init)` or `reparam(skip = …, resid = …, init = …)`";
    match e {
        Expr::Name(n) if n.name == "identity" => Some(Linear::Identity),
        Expr::Call { callee, args, span } if callee.name == "linear" => linear_dense(args, *span, diags),
        Expr::Call { callee, args, span } if callee.name == "reparam" => reparam(args, *span, diags),
        Expr::Name(n) | Expr::Call { callee: n, .. } if INITS.contains(&n.name.as_str()) => {
            diags.push(
                Diagnostic::new(Code::E2008, e.span(), format!("invalid value for `{key}`"))
                    .label("an init, not a map")
                    .help(format!("wrap the init: `{key} = linear({})`", crate::syntax::format::expr(e))),
            );
            None
        }
        _ => {
            diags.push(invalid(e.span(), key, expected));
            None
        }
    }
}

fn linear_dense(args: &[Arg], span: Span, diags: &mut Vec<Diagnostic>) -> Option<Linear> {
    let mut init_v = None;
    let mut bias = false;
    for (i, a) in args.iter().enumerate() {
        match (i, a.name.as_ref().map(|n| n.name.as_str())) {
            (0, None) | (_, Some("init")) => init_v = init(&a.value, "init", diags),
            (_, Some("bias")) => bias = boolean(&a.value, "bias", diags)?,
            _ => {
                diags.push(bad_arg(a, span, "linear", &["init", "bias"]));
                return None;
            }
        }
    }
    match init_v {
        Some(init) => Some(Linear::Dense { init, bias }),
        None if args.is_empty() => {
            diags.push(arity(span, "linear", 1, 0));
            None
        }
        None => None,
    }
}

fn reparam(args: &[Arg], span: Span, diags: &mut Vec<Diagnostic>) -> Option<Linear> {
    let (mut skip, mut resid, mut init_v, mut trainable) = (Scalar::one(), Scalar::one(), Some(Init::Identity), false);
    for a in args {
        match (a.name.as_ref().map(|n| n.name.as_str()), &a.value) {
            (None, Expr::Name(n)) if n.name == "trainable" => trainable = true,
            (Some("skip"), v) => skip = scalar(v, &mut VarsOnly, diags)?,
            (Some("resid"), v) => resid = scalar(v, &mut VarsOnly, diags)?,
            (Some("init"), v) => init_v = init(v, "init", diags),
            (Some("trainable"), v) => trainable = boolean(v, "trainable", diags)?,
            _ => {
                diags.push(bad_arg(a, span, "reparam", &["skip", "resid", "init", "trainable"]));
                return None;
            }
        }
    }
    Some(Linear::Reparam { skip, resid, init: init_v?, trainable })
}

fn bad_arg(a: &Arg, call: Span, name: &str, known: &[&str]) -> Diagnostic {
    let (span, what) = match &a.name {
        Some(n) => (n.span, format!("`{name}` has no argument `{}`", n.name)),
        None => (a.value.span(), format!("unexpected positional argument to `{name}`")),
    };
    let _ = call;
    let d = Diagnostic::new(Code::E2007, span, what).label("not an argument here");
    let suggestion = a.name.as_ref().and_then(|n| did_you_mean(&n.name, known.iter().copied()));
    match suggestion {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("its arguments are {}", one_of(known))),
    }
}
