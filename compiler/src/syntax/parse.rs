//! pest parse tree → spanned AST, one function per grammar rule.

use std::sync::LazyLock;

use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use pest_derive::Parser;

use super::ast::*;
use super::errors;
use crate::diag::{Code, Diagnostic};
use crate::span::{FileId, Span};

#[derive(Parser)]
#[grammar = "../../grammar/blk.pest"]
struct BlkParser;

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
        .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
        .op(Op::prefix(Rule::neg))
        .op(Op::infix(Rule::pow, Assoc::Right))
});

/// Deepest nesting of parentheses and calls accepted (keeps the recursive
/// parser and every later pass well inside the stack).
pub const MAX_NESTING: usize = 32;

/// Parses one file. Syntax errors are translated into diagnostics; pest
/// stops at the first one, so at most one syntax diagnostic comes back
/// (plus any found by the delimiter pre-scan).
pub fn parse(file: FileId, text: &str) -> Result<File, Vec<Diagnostic>> {
    let pre = errors::prescan(file, text);
    if !pre.is_empty() {
        return Err(pre);
    }
    let mut pairs =
        BlkParser::parse(Rule::file, text).map_err(|e| vec![errors::translate(file, text, &e, item_error)])?;
    let Some(root) = pairs.next() else {
        return Ok(File { items: Vec::new() });
    };
    let mut cx = Cx { file, diags: Vec::new() };
    let items = root.into_inner().filter(|p| p.as_rule() != Rule::EOI).map(|p| cx.item(p)).collect();
    if cx.diags.is_empty() {
        Ok(File { items })
    } else {
        Err(cx.diags)
    }
}

struct Cx {
    file: FileId,
    diags: Vec<Diagnostic>,
}

impl Cx {
    /// The span of a pair, without the whitespace and comments that pest's
    /// implicit skipping leaves at the end of rules ending in `x*` or `x?`.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.start() + significant_len(s.as_str()))
    }

    fn item(&mut self, p: Pair<Rule>) -> Item {
        match p.as_rule() {
            Rule::use_item => Item::Use(self.use_item(p)),
            Rule::block_item => Item::Block(self.block_item(p)),
            _ => Item::Section(self.section_item(p)),
        }
    }

    fn use_item(&mut self, p: Pair<Rule>) -> Use {
        let span = self.span(&p);
        let path = match p.into_inner().next() {
            Some(s) => self.string(s),
            None => StringLit { value: String::new(), span },
        };
        Use { path, span }
    }

    fn block_item(&mut self, p: Pair<Rule>) -> Block {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next());
        let body = inner.map(|s| self.stmt(s)).collect();
        Block { name, body, span }
    }

    fn section_item(&mut self, p: Pair<Rule>) -> Section {
        let span = self.span(&p);
        let mut inner = p.into_inner().peekable();
        let kind = self.section_kind(inner.next());
        let name = match inner.peek() {
            Some(n) if n.as_rule() == Rule::ident => Some(self.ident(inner.next())),
            _ => None,
        };
        let body = inner.map(|s| self.stmt(s)).collect();
        Section { kind, name, body, span }
    }

    fn section_kind(&mut self, p: Option<Pair<Rule>>) -> SectionKind {
        match p.as_ref().map(Pair::as_str) {
            Some("attention") => SectionKind::Attention,
            Some("mlp") => SectionKind::Mlp,
            Some("model") => SectionKind::Model,
            _ => SectionKind::Train,
        }
    }

    fn stmt(&mut self, p: Pair<Rule>) -> Stmt {
        match p.as_rule() {
            Rule::param => Stmt::Param(self.param(p)),
            Rule::layer_override => Stmt::Layer(self.layer_override(p)),
            _ => Stmt::Assign(self.assign(p)),
        }
    }

    fn param(&mut self, p: Pair<Rule>) -> Param {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next());
        let value = self.expr_opt(inner.next(), span);
        let flags = inner.map(|f| (self.flag(&f), self.span(&f))).collect();
        Param { name, value, flags, span }
    }

    fn flag(&mut self, p: &Pair<Rule>) -> Flag {
        match p.as_str() {
            "trainable" => Flag::Trainable,
            "fixed" => Flag::Fixed,
            _ => Flag::PerHead,
        }
    }

    fn layer_override(&mut self, p: Pair<Rule>) -> LayerOverride {
        let span = self.span(&p);
        let mut selectors = Vec::new();
        let mut body = Vec::new();
        for q in p.into_inner() {
            if q.as_rule() == Rule::layer_selector {
                selectors.push((self.layer_selector(&q), self.span(&q)));
            } else if q.as_rule() == Rule::layer_range {
                let span = self.span(&q);
                let mut parts = q.into_inner();
                let (a, b) = (parts.next().map(|b| self.range_bound(b)), parts.next().map(|b| self.range_bound(b)));
                let step = parts.next().map(|s| self.range_step(s));
                if let (Some(Some(a)), Some(Some(b))) = (a, b) {
                    match step {
                        None | Some(Some(1)) => selectors.push((LayerSelector::Range(a, b), span)),
                        Some(Some(s)) => selectors.push((LayerSelector::Stepped(a, b, s), span)),
                        Some(None) => {}
                    }
                }
            } else {
                body.push(self.stmt(q));
            }
        }
        LayerOverride { selectors, body, span }
    }

    fn layer_selector(&mut self, p: &Pair<Rule>) -> LayerSelector {
        match p.as_str() {
            "first" => LayerSelector::First,
            "last" => LayerSelector::Last,
            digits => match digits.parse::<u64>() {
                Ok(n) => LayerSelector::Index(n),
                Err(_) => {
                    self.diags.push(too_large(self.span(p)));
                    LayerSelector::Index(u64::MAX)
                }
            },
        }
    }

    /// A range's `step S`: a whole number of at least 1 (`None`, reported,
    /// otherwise).
    fn range_step(&mut self, p: Pair<Rule>) -> Option<u64> {
        let span = self.span(&p);
        let n = p.into_inner().next().and_then(|n| n.as_str().parse::<u64>().ok());
        match n {
            Some(s) if s >= 1 => Some(s),
            _ => {
                self.diags.push(
                    Diagnostic::new(Code::E1005, span, "a layer range's step must be a whole number of at least 1")
                        .label("this step")
                        .help("`A..B step S` takes every S-th layer from A, e.g. `1..depth step 2` for the odd layers"),
                );
                None
            }
        }
    }

    /// A range bound as ⌊(a·depth + b)/c⌋; `None` (reported) when it is
    /// not of that form (depth times depth, division by depth or by zero)
    /// or its numbers are too large.
    fn range_bound(&mut self, p: Pair<Rule>) -> Option<Bound> {
        let span = self.span(&p);
        let bad = |why: &str| {
            Diagnostic::new(Code::E1005, span, format!("layer range bound {why}")).label("this bound").help(
                "a bound is a whole number or a linear function of `depth`, e.g. `0..depth/2`, `depth - 2..depth`",
            )
        };
        match linear(p) {
            Ok((a, b, c)) => Some(Bound { per_depth: a, offset: b, divisor: c }),
            Err(why) => {
                self.diags.push(bad(why));
                None
            }
        }
    }

    fn assign(&mut self, p: Pair<Rule>) -> Assign {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let name = self.ident(inner.next());
        let value = self.expr_opt(inner.next(), span);
        Assign { name, value, span }
    }

    fn expr_opt(&mut self, p: Option<Pair<Rule>>, at: Span) -> Expr {
        match p {
            Some(p) => self.expr(p, 0),
            None => Expr::Number { value: 0.0, text: "0".into(), span: at },
        }
    }

    fn expr(&mut self, p: Pair<Rule>, depth: usize) -> Expr {
        let span = self.span(&p);
        if depth > MAX_NESTING {
            self.diags.push(
                Diagnostic::new(Code::E1001, span, "expression nested too deeply")
                    .label(format!("more than {MAX_NESTING} levels of nesting"))
                    .help("split the expression into named bindings or params"),
            );
            return Expr::Number { value: 0.0, text: "0".into(), span };
        }
        let file = self.file;
        PRATT
            .map_primary(|q| self.operand(q, depth))
            .map_prefix(move |op, rhs| {
                let s = Span::new(file, op.as_span().start(), op.as_span().end()).to(rhs.span());
                Expr::Neg { operand: Box::new(rhs), span: s }
            })
            .map_infix(move |lhs, op, rhs| {
                let op = bin_op(op.as_rule());
                let s = lhs.span().to(rhs.span());
                Expr::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs), span: s }
            })
            .parse(p.into_inner())
    }

    fn operand(&mut self, p: Pair<Rule>, depth: usize) -> Expr {
        match p.as_rule() {
            Rule::call => self.call(p, depth),
            Rule::number => self.number(&p),
            Rule::string => Expr::String(self.string(p)),
            Rule::ident => Expr::Name(self.ident(Some(p))),
            _ => self.expr(p, depth + 1),
        }
    }

    fn call(&mut self, p: Pair<Rule>, depth: usize) -> Expr {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let callee = self.ident(inner.next());
        let args = inner.map(|a| self.arg(a, depth + 1)).collect();
        Expr::Call { callee, args, span }
    }

    fn arg(&mut self, p: Pair<Rule>, depth: usize) -> Arg {
        if p.as_rule() == Rule::named_arg {
            let span = self.span(&p);
            let mut inner = p.into_inner();
            let name = Some(self.ident(inner.next()));
            let value = match inner.next() {
                Some(v) => self.expr(v, depth),
                None => Expr::Number { value: 0.0, text: "0".into(), span },
            };
            Arg { name, value }
        } else {
            Arg { name: None, value: self.expr(p, depth) }
        }
    }

    fn number(&mut self, p: &Pair<Rule>) -> Expr {
        let span = self.span(p);
        let text = p.as_str().to_string();
        let value = text.replace('_', "").parse::<f64>().unwrap_or(f64::INFINITY);
        if !value.is_finite() {
            self.diags.push(too_large(span));
        }
        Expr::Number { value, text, span }
    }

    fn string(&mut self, p: Pair<Rule>) -> StringLit {
        let span = self.span(&p);
        let body = p.into_inner().next().map_or("", |b| b.as_str());
        let value = body.replace("\\\"", "\"").replace("\\\\", "\\");
        StringLit { value, span }
    }

    fn ident(&mut self, p: Option<Pair<Rule>>) -> Ident {
        match p {
            Some(p) => Ident { name: p.as_str().to_string(), span: self.span(&p) },
            None => Ident { name: String::new(), span: Span::default() },
        }
    }
}

/// Length of `text` without trailing whitespace and trailing comments.
fn significant_len(text: &str) -> usize {
    let mut end = text.trim_end().len();
    while end > 0 {
        let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
        match comment_start(&text[line_start..end]) {
            Some(c) => end = text[..line_start + c].trim_end().len(),
            None => break,
        }
    }
    end
}

/// Where a `#` comment starts in one line (strings never span lines).
fn comment_start(line: &str) -> Option<usize> {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match (in_string, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (true, _, _) => escaped = false,
            (false, _, '"') => in_string = true,
            (false, _, '#') => return Some(i),
            _ => {}
        }
    }
    None
}

fn bin_op(rule: Rule) -> BinOp {
    match rule {
        Rule::add => BinOp::Add,
        Rule::sub => BinOp::Sub,
        Rule::mul => BinOp::Mul,
        Rule::div => BinOp::Div,
        _ => BinOp::Pow,
    }
}

/// (a, b, c) with a range expression = (a·depth + b)/c, c > 0.
fn linear(p: Pair<Rule>) -> Result<(i64, i64, i64), &'static str> {
    let big = "has numbers too large to represent";
    match p.as_rule() {
        Rule::range_int => p.as_str().parse::<i64>().map(|n| (0, n, 1)).map_err(|_| big),
        Rule::range_depth => Ok((1, 0, 1)),
        Rule::range_sum | Rule::range_product => {
            let mut inner = p.into_inner();
            let mut acc = linear(inner.next().ok_or("is empty")?)?;
            while let (Some(op), Some(rhs)) = (inner.next(), inner.next()) {
                let (a2, b2, c2) = linear(rhs)?;
                let (a1, b1, c1) = acc;
                let m = |x: i64, y: i64| x.checked_mul(y).ok_or(big);
                let add = |x: i64, y: i64| x.checked_add(y).ok_or(big);
                acc = match op.as_str() {
                    "+" => (add(m(a1, c2)?, m(a2, c1)?)?, add(m(b1, c2)?, m(b2, c1)?)?, m(c1, c2)?),
                    "-" => (add(m(a1, c2)?, -m(a2, c1)?)?, add(m(b1, c2)?, -m(b2, c1)?)?, m(c1, c2)?),
                    "*" if a1 != 0 && a2 != 0 => return Err("multiplies depth by depth"),
                    "*" => (add(m(a1, b2)?, m(a2, b1)?)?, m(b1, b2)?, m(c1, c2)?),
                    _ if a2 != 0 => return Err("divides by depth"),
                    _ if b2 == 0 => return Err("divides by zero"),
                    // x / (b2/c2) = x·c2 / b2, kept with a positive divisor.
                    _ => {
                        let s = b2.signum();
                        (m(m(a1, c2)?, s)?, m(m(b1, c2)?, s)?, m(c1, b2.abs())?)
                    }
                };
            }
            Ok(acc)
        }
        _ => Err("is not a number or `depth`"),
    }
}

fn too_large(span: Span) -> Diagnostic {
    Diagnostic::new(Code::E1005, span, "number is too large to represent")
        .label("this number")
        .help("write a number below 1.8e308 (layer indices below 2^64)")
}

/// Where the item of kind `keyword` that starts `rest` fails when parsed
/// alone, and the literal tokens that would have continued it there (pest,
/// failing inside an item of a file, reports the item's start, and names
/// rules, not the `{` that was missing): an offset into `rest`; `None` if
/// the item parses, or fails at its first word or inside its braces.
fn item_error(keyword: &str, rest: &str) -> Option<(usize, Vec<String>)> {
    let rule = match keyword {
        "use" => Rule::use_item,
        "block" => Rule::block_item,
        _ => Rule::section_item,
    };
    // pest's detail (the furthest position tried and the tokens expected
    // there) is a process-wide switch, on for this one parse: a parse on
    // another thread meanwhile only collects more than it reports.
    pest::set_error_detail(true);
    let result = BlkParser::parse(rule, rest);
    pest::set_error_detail(false);
    let attempts = result.err()?.parse_attempts()?;
    let expected = attempts
        .expected_tokens()
        .into_iter()
        .map(|t| t.to_string())
        // Literal words and marks only: not character ranges (`a..z`),
        // built-in rules, whitespace or comments.
        .filter(|t| {
            let range = t.chars().count() == 4 && t.chars().nth(1) == Some('.') && t.chars().nth(2) == Some('.');
            !range && t != "BUILTIN_RULE" && t != "_" && !t.trim().is_empty() && !t.starts_with('#')
        })
        .collect();
    // Only the item's head (its kind, name, `{`): inside the braces the
    // furthest try can be deeper than the mistake.
    let head = rest.find('{').map_or(rest.len(), |b| b + 1);
    let at = attempts.max_position;
    (at > 0 && at < head).then_some((at, expected))
}

/// A rule's name in words, for syntax errors.
pub(super) fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::file | Rule::EOI => "end of file",
        Rule::item
        | Rule::use_item
        | Rule::block_item
        | Rule::section_item
        | Rule::section_kind
        | Rule::keyword_use
        | Rule::keyword_block => "an item (`block`, `attention`, `mlp`, `model`, `train` or `use`)",
        Rule::stmt | Rule::param | Rule::assign | Rule::layer_override | Rule::keyword_param | Rule::keyword_layer => {
            "a statement (`name = …`, `param …` or `layer … { … }`)"
        }
        Rule::flag => "a flag (`trainable`, `fixed` or `per_head`)",
        Rule::layer_selector => "a layer (`first`, `last` or a number)",
        Rule::layer_range
        | Rule::range_sum
        | Rule::range_product
        | Rule::range_atom
        | Rule::range_int
        | Rule::range_depth => "a layer range (`A..B`, e.g. `0..depth/2`)",
        Rule::range_step | Rule::keyword_step => "a layer range's step (`step S`, e.g. `1..depth step 2`)",
        Rule::range_add_op | Rule::range_mul_op => "an operator of a layer range (`+ - * /`)",
        Rule::expr | Rule::operand | Rule::prefix | Rule::neg | Rule::call | Rule::arg => "an expression",
        Rule::named_arg => "an argument",
        Rule::infix | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::pow => "an operator",
        Rule::ident | Rule::ident_char => "a name",
        Rule::number => "a number",
        Rule::string | Rule::string_body => "a string",
        Rule::WHITESPACE | Rule::COMMENT => "whitespace",
    }
}

pub(super) use Rule as GrammarRule;
