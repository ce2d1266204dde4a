//! The changes the fixer may make to a rejected block and the sections of
//! its file: each a text edit of the block as written, found from its AST
//! (streams, sums, skips, branches and their gains), with its weight.

use std::collections::HashSet;

use super::{Change, Edit};
use crate::syntax::ast::{Arg, BinOp, Block, Expr, File, Item, SectionKind, Stmt};

fn find_block<'f>(file: &'f File, name: &str) -> Option<&'f Block> {
    file.items.iter().find_map(|i| match i {
        Item::Block(b) if b.name.name == name => Some(b),
        _ => None,
    })
}

/// The sub-block a call runs: `attn` or `mlp`.
fn branch_call(e: &Expr) -> Option<(&'static str, &[Arg])> {
    match e {
        Expr::Call { callee, args, .. } if callee.name == "attn" => Some(("attn", args)),
        Expr::Call { callee, args, .. } if callee.name == "mlp" => Some(("mlp", args)),
        _ => None,
    }
}

/// One term of a sum, as the fixer sees it.
enum Term<'a> {
    /// The stream itself (`x`, `h`), with its gain; `whole` the term.
    Skip {
        gain: Option<&'a Expr>,
        var: &'a str,
        whole: &'a Expr,
    },
    /// A sub-block's output, with its gain.
    Branch {
        gain: Option<&'a Expr>,
        call: &'a Expr,
        kind: &'static str,
        args: &'a [Arg],
    },
    Other,
}

fn classify<'a>(e: &'a Expr, streams: &HashSet<String>) -> Term<'a> {
    let stream = |e: &'a Expr| e.as_name().filter(|i| streams.contains(&i.name)).map(|i| i.name.as_str());
    if let Some(var) = stream(e) {
        return Term::Skip { gain: None, var, whole: e };
    }
    if let Some((kind, args)) = branch_call(e) {
        return Term::Branch { gain: None, call: e, kind, args };
    }
    if let Expr::Binary { op: BinOp::Mul, lhs, rhs, .. } = e {
        for (g, t) in [(&**lhs, &**rhs), (&**rhs, &**lhs)] {
            if let Some(var) = stream(t) {
                return Term::Skip { gain: Some(g), var, whole: e };
            }
            if let Some((kind, args)) = branch_call(t) {
                return Term::Branch { gain: Some(g), call: t, kind, args };
            }
        }
    }
    Term::Other
}

/// The terms of a sum (`a + b + c`; a lone expression is one term).
fn terms(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Binary { op: BinOp::Add, lhs, rhs, .. } => {
            let mut t = terms(lhs);
            t.extend(terms(rhs));
            t
        }
        e => vec![e],
    }
}

/// The sum inside a statement's value: through norms wrapped around it
/// (Post-LN's `rmsnorm(x + attn(x))`).
fn sum_of(e: &Expr) -> &Expr {
    match e {
        Expr::Call { callee, args, .. } if matches!(callee.name.as_str(), "rmsnorm" | "layernorm") => {
            args.first().filter(|a| a.name.is_none()).map_or(e, |a| sum_of(&a.value))
        }
        e => e,
    }
}

/// The streams `e` reads.
fn reads<'a>(e: &'a Expr, streams: &HashSet<String>, out: &mut Vec<&'a str>) {
    match e {
        Expr::Name(i) if streams.contains(&i.name) && !out.contains(&i.name.as_str()) => out.push(&i.name),
        Expr::Call { args, .. } => args.iter().filter(|a| a.name.is_none()).for_each(|a| reads(&a.value, streams, out)),
        Expr::Neg { operand, .. } => reads(operand, streams, out),
        Expr::Binary { lhs, rhs, .. } => {
            reads(lhs, streams, out);
            reads(rhs, streams, out);
        }
        _ => {}
    }
}

/// A name not yet taken in `file`, from `base`.
fn fresh(file_text: &str, base: &str) -> String {
    let taken = |n: &str| file_text.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == n);
    if !taken(base) {
        return base.to_string();
    }
    (2..).map(|k| format!("{base}{k}")).find(|n| !taken(n)).unwrap_or_else(|| base.to_string())
}

/// The start of the line holding byte `at`, and that line's indentation.
fn line_of(text: &str, at: usize) -> (usize, &str) {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent_end = start + text[start..].len() - text[start..].trim_start_matches([' ', '\t']).len();
    (start, &text[start..indent_end])
}

/// Inserting statement `stmt` before the statement at `at`: a line of its
/// own, indented as that one, or (where that statement shares its line
/// with what comes before, `block b { out = … }`) on the same line.
fn statement_before(text: &str, at: usize, stmt: &str) -> Edit {
    let (line, indent) = line_of(text, at);
    if text[line..at].trim().is_empty() {
        Edit::insert(line, format!("{indent}{stmt}\n"))
    } else {
        Edit::insert(at, format!("{stmt} "))
    }
}

/// The whole lines a statement occupies, with its line break (removing a
/// statement leaves no blank line).
fn lines_of(text: &str, start: usize, end: usize) -> (usize, usize) {
    let (first, _) = line_of(text, start);
    let last = text[end..].find('\n').map_or(text.len(), |i| end + i + 1);
    (first, last)
}

const DOWN_WEIGHT: &str = "1 / sqrt(depth)";

/// Every change the fixer may make to `block` of `file` (`text`).
pub fn changes(file: &File, text: &str, block: &str) -> Vec<Change> {
    let Some(b) = find_block(file, block) else { return Vec::new() };
    let mut out = Vec::new();
    let assigns: Vec<&crate::syntax::ast::Assign> = b
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Assign(a) => Some(a),
            _ => None,
        })
        .collect();
    // The streams a term may add: the input and every binding.
    let streams: HashSet<String> =
        std::iter::once("x".to_string()).chain(assigns.iter().map(|a| a.name.name.clone())).collect();
    let params: Vec<&crate::syntax::ast::Param> = b
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Param(p) => Some(p),
            _ => None,
        })
        .collect();
    let param = |g: &Expr| g.as_name().and_then(|n| params.iter().find(|p| p.name.name == n.name).copied());
    let first_stmt = b.body.first().map(|s| s.span().start as usize);
    for a in &assigns {
        let sum = sum_of(&a.value);
        let ts: Vec<Term> = terms(sum).into_iter().map(|t| classify(t, &streams)).collect();
        let skipped = ts.iter().any(|t| matches!(t, Term::Skip { .. }));
        for t in &ts {
            match t {
                Term::Branch { gain, call, kind, args } => {
                    let shown = format!("{kind}(…)");
                    if !skipped {
                        let mut read = Vec::new();
                        if let Some(arg) = args.first().filter(|a| a.name.is_none()) {
                            reads(&arg.value, &streams, &mut read);
                        }
                        if let [v] = read[..] {
                            out.push(Change {
                                what: format!("add a skip from `{v}` around `{shown}` in `{}`", a.name.name),
                                cost: 2,
                                edits: vec![Edit::insert(sum.span().start as usize, format!("{v} + "))],
                            });
                        }
                    } else {
                        out.extend(down_weight(text, b, first_stmt, *gain, call, kind, &param, &a.name.name));
                    }
                    if *kind == "attn" && args.iter().skip(1).all(|a| a.name.is_some()) {
                        out.extend(shape(text, b, args, &a.name.name));
                    }
                }
                Term::Skip { gain: Some(g), var, whole } => match (g, param(g)) {
                    (Expr::Number { value, .. }, _) if *value != 1.0 => out.push(Change {
                        what: format!(
                            "drop the skip gain {} on `{var}` in `{}`",
                            crate::syntax::format::expr(g),
                            a.name.name
                        ),
                        cost: 1,
                        edits: vec![Edit {
                            start: whole.span().start as usize,
                            end: whole.span().end as usize,
                            text: (*var).to_string(),
                        }],
                    }),
                    (_, Some(p)) if !matches!(p.value, Expr::Number { value, .. } if value == 1.0) => {
                        out.push(Change {
                            what: format!("initialise the skip gain `{}` to 1", p.name.name),
                            cost: 1,
                            edits: vec![Edit {
                                start: p.value.span().start as usize,
                                end: p.value.span().end as usize,
                                text: "1".into(),
                            }],
                        })
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    // The output normalised (Post-LN's last norm), where it is not.
    if let Some(o) = assigns.iter().find(|a| a.name.name == "out") {
        let normed =
            matches!(&o.value, Expr::Call { callee, .. } if matches!(callee.name.as_str(), "rmsnorm" | "layernorm"));
        if !normed {
            let (s, e) = (o.value.span().start as usize, o.value.span().end as usize);
            out.push(Change {
                what: "normalise the block's output: `out = rmsnorm(…)`".into(),
                cost: 3,
                edits: vec![Edit::insert(s, "rmsnorm("), Edit::insert(e, ")")],
            });
        }
    }
    out.extend(section_changes(file, text));
    out
}

/// Down-weighting a branch beside a skip to about 1/√depth: a gain
/// initialised so, new or the one it has.
#[allow(clippy::too_many_arguments)]
fn down_weight<'p>(
    text: &str,
    b: &Block,
    first_stmt: Option<usize>,
    gain: Option<&Expr>,
    call: &Expr,
    kind: &str,
    param: &impl Fn(&Expr) -> Option<&'p crate::syntax::ast::Param>,
    stmt: &str,
) -> Option<Change> {
    let shown = format!("{kind}(…)");
    match gain {
        None => {
            let at = first_stmt.unwrap_or((b.span.end as usize).saturating_sub(1));
            let name = fresh(text, if kind == "attn" { "beta_sa" } else { "beta_ff" });
            Some(Change {
                what: format!("down-weight `{shown}` in `{stmt}` by a gain `{name}` = {DOWN_WEIGHT}"),
                cost: 4,
                edits: vec![
                    statement_before(text, at, &format!("param {name} = {DOWN_WEIGHT} trainable")),
                    Edit::insert(call.span().start as usize, format!("{name} * ")),
                ],
            })
        }
        Some(g) => {
            let p = param(g)?;
            if crate::syntax::format::expr(&p.value) == DOWN_WEIGHT {
                return None;
            }
            Some(Change {
                what: format!("initialise the gain `{}` of `{shown}` to {DOWN_WEIGHT}", p.name.name),
                cost: 2,
                edits: vec![Edit {
                    start: p.value.span().start as usize,
                    end: p.value.span().end as usize,
                    text: DOWN_WEIGHT.into(),
                }],
            })
        }
    }
}

/// The paper's shaped attention (`blocks/shaped.blk`'s maths, without its
/// trainable first-layer value): the identity at init.
fn shaped_section(name: &str) -> String {
    format!(
        "attention {name} {{\n    query  = zeros\n    value  = identity\n    proj   = identity\n    matrix = alpha * I + \
         beta * softmax - gamma * centre\n    param alpha = 1 trainable per_head\n    param beta  = 1 trainable \
         per_head\n    param gamma = 1 trainable per_head\n}}\n\n"
    )
}

/// A plain `attn(…)` made a shaped attention (a new section, named in the
/// call).
fn shape(text: &str, b: &Block, args: &[Arg], stmt: &str) -> Option<Change> {
    let first = args.first().filter(|a| a.name.is_none())?;
    let name = fresh(text, "shaped");
    let (line, _) = line_of(text, b.span.start as usize);
    Some(Change {
        what: format!("shape the attention in `{stmt}`: `attention {name}` (αI + β·softmax − γ·centre, zero queries)"),
        cost: 10,
        edits: vec![
            Edit::insert(line, shaped_section(&name)),
            Edit::insert(first.value.span().end as usize, format!(", {name}")),
        ],
    })
}

/// Changes to the file's attention and MLP sections: a branch that starts
/// at zero gets its default init back; a shaped attention gets zero
/// queries (its softmax is then the centre, and it is the identity at init
/// when β = γ).
fn section_changes(file: &File, text: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for item in &file.items {
        let Item::Section(s) = item else { continue };
        if !matches!(s.kind, SectionKind::Attention | SectionKind::Mlp) {
            continue;
        }
        let label = s
            .name
            .as_ref()
            .map_or_else(|| s.kind.keyword().to_string(), |n| format!("{} {}", s.kind.keyword(), n.name));
        let mut query = None;
        let mut shaped = false;
        for st in &s.body {
            let Stmt::Assign(a) = st else { continue };
            let key = a.name.name.as_str();
            let zeros = a.value.as_name().is_some_and(|n| n.name == "zeros");
            if zeros && matches!(key, "down" | "proj" | "value" | "up") {
                let (from, to) = lines_of(text, a.span.start as usize, a.span.end as usize);
                out.push(Change {
                    what: format!("`{key} = zeros` in `{label}` makes its output zero: use the default init"),
                    cost: 2,
                    edits: vec![Edit { start: from, end: to, text: String::new() }],
                });
            }
            if key == "query" {
                query = Some((a, zeros));
            }
            if key == "matrix" {
                let m = crate::syntax::format::expr(&a.value);
                shaped = m.contains("centre") || m.contains(" I ") || m.starts_with("I ") || m.contains("* I");
            }
        }
        if !shaped || s.kind != SectionKind::Attention {
            continue;
        }
        match query {
            Some((_, true)) => {}
            Some((a, false)) => out.push(Change {
                what: format!("zero queries in `{label}`: `query = zeros`"),
                cost: 1,
                edits: vec![Edit {
                    start: a.value.span().start as usize,
                    end: a.value.span().end as usize,
                    text: "zeros".into(),
                }],
            }),
            None => {
                let at = s.body.first().map_or((s.span.end as usize).saturating_sub(1), |st| st.span().start as usize);
                out.push(Change {
                    what: format!("zero queries in `{label}`: `query = zeros`"),
                    cost: 3,
                    edits: vec![statement_before(text, at, "query = zeros")],
                });
            }
        }
    }
    out
}
