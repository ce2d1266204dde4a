//! The canonical layout of a `.blk` file (`blkc fmt`).
//!
//! Rules: four-space indent; a blank line between top-level items (runs of
//! `use` keep their own spacing); at most one blank line between statements,
//! kept where the source had one; `=` aligned within a run of consecutive
//! assignments or params; single spaces around operators; a one-statement
//! `layer` override without comments on one line. Comments are kept: a
//! comment alone on its line stays before the statement that follows it, a
//! comment after code stays at the end of that line. Formatting twice
//! changes nothing, and the output parses to the same AST.

use super::ast::*;
use super::comments::{self, Comment};

/// Formats a parsed file; `src` is the text it was parsed from (comments
/// and blank lines are read from it).
pub fn format(file: &File, src: &str) -> String {
    let mut p = Printer { src, comments: comments::collect(src), next: 0, out: String::new(), last: 0 };
    let mut prev: Option<&Item> = None;
    for item in &file.items {
        if let Some(prev) = prev {
            let both_use = matches!((prev, item), (Item::Use(_), Item::Use(_)));
            if !both_use || p.blank_between(prev.span().end, item.span().start) {
                p.out.push('\n');
            }
        }
        p.leading(item.span().start as usize, 0);
        p.item(item);
        prev = Some(item);
    }
    let rest = p.comments.len();
    p.flush_until(rest, usize::MAX, 0);
    if p.out.ends_with("\n\n") {
        p.out.truncate(p.out.trim_end().len() + 1);
    }
    p.out
}

struct Printer<'a> {
    src: &'a str,
    comments: Vec<Comment>,
    next: usize,
    out: String,
    /// Source offset of the end of the last thing printed.
    last: usize,
}

const INDENT: &str = "    ";

impl Printer<'_> {
    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str(INDENT);
        }
    }

    /// Whether the source has an empty line between two offsets.
    fn blank_between(&self, from: u32, to: u32) -> bool {
        let (from, to) = (from as usize, (to as usize).min(self.src.len()));
        if from >= to {
            return false;
        }
        let gap = &self.src[from..to];
        let mut lines = gap.split('\n').skip(1).peekable();
        let mut blank = false;
        while let Some(l) = lines.next() {
            if lines.peek().is_some() && l.trim().is_empty() {
                blank = true;
            }
        }
        blank
    }

    /// Emits own-line comments that start before `pos`.
    fn leading(&mut self, pos: usize, level: usize) {
        let upto = self.comments.iter().position(|c| c.start >= pos).unwrap_or(self.comments.len());
        self.flush_until(upto, pos, level);
    }

    fn flush_until(&mut self, upto: usize, _pos: usize, level: usize) {
        while self.next < upto {
            let c = self.comments[self.next].clone();
            let fresh = self.out.is_empty() || self.out.ends_with("\n\n") || self.out.ends_with("{\n");
            if !fresh && self.blank_between(self.last as u32, c.start as u32) {
                self.out.push('\n');
            }
            self.last = c.end;
            self.indent(level);
            self.out.push_str(c.text(self.src));
            self.out.push('\n');
            self.next += 1;
        }
    }

    /// Emits a comment that sits on the same line after offset `end`.
    fn trailing(&mut self, end: usize) {
        self.last = end;
        if let Some(c) = self.comments.get(self.next) {
            if c.start >= end && !self.src[end..c.start].contains('\n') {
                let text = c.text(self.src).to_string();
                self.out.push_str("  ");
                self.out.push_str(&text);
                self.last = c.end;
                self.next += 1;
            }
        }
        self.out.push('\n');
    }

    /// Whether any comment lies inside `start..end`.
    fn has_comment_within(&self, start: u32, end: u32) -> bool {
        self.comments.iter().any(|c| c.start > start as usize && c.start < end as usize)
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Use(u) => {
                self.out.push_str("use ");
                self.out.push_str(&string_lit(&u.path.value));
                self.trailing(u.span.end as usize);
            }
            Item::Block(b) => self.body(&format!("block {}", b.name.name), &b.body, b.span, 0),
            Item::Section(s) => {
                let head = match &s.name {
                    Some(n) => format!("{} {}", s.kind.keyword(), n.name),
                    None => s.kind.keyword().to_string(),
                };
                self.body(&head, &s.body, s.span, 0);
            }
        }
    }

    /// `head { stmts }` at indent `level`, with the closing brace at `span.end`.
    fn body(&mut self, head: &str, stmts: &[Stmt], span: crate::span::Span, level: usize) {
        self.out.push_str(head);
        let close = span.end.saturating_sub(1) as usize;
        if stmts.is_empty() && !self.has_comment_within(span.start, span.end) {
            self.out.push_str(" {}");
            self.trailing(span.end as usize);
            return;
        }
        self.out.push_str(" {");
        let open =
            self.src[span.start as usize..close].find('{').map_or(span.start as usize, |o| span.start as usize + o + 1);
        self.trailing(open);
        let widths = run_widths(stmts, |a, b| self.blank_between(a, b));
        for (i, stmt) in stmts.iter().enumerate() {
            if i > 0 && self.blank_between(stmts[i - 1].span().end, first_start(self, stmt)) {
                self.out.push('\n');
            }
            self.leading(stmt.span().start as usize, level + 1);
            self.indent(level + 1);
            self.stmt(stmt, widths[i], level + 1);
        }
        self.leading(close, level + 1);
        self.indent(level);
        self.out.push('}');
        self.trailing(span.end as usize);
    }

    fn stmt(&mut self, stmt: &Stmt, width: usize, level: usize) {
        match stmt {
            Stmt::Param(p) => {
                self.out.push_str(&format!("param {:<width$} = {}", p.name.name, expr(&p.value)));
                for (f, _) in &p.flags {
                    self.out.push(' ');
                    self.out.push_str(f.keyword());
                }
                self.trailing(p.span.end as usize);
            }
            Stmt::Assign(a) => {
                self.out.push_str(&format!("{:<width$} = {}", a.name.name, expr(&a.value)));
                self.trailing(a.span.end as usize);
            }
            Stmt::Layer(l) => self.layer(l, level),
        }
    }

    fn layer(&mut self, l: &LayerOverride, level: usize) {
        let sel: Vec<String> = l.selectors.iter().map(|(s, _)| selector(*s)).collect();
        let head = format!("layer {}", sel.join(", "));
        let one_line = l.body.len() == 1
            && !matches!(l.body[0], Stmt::Layer(_))
            && !self.has_comment_within(l.span.start, l.span.end);
        if one_line {
            self.out.push_str(&head);
            self.out.push_str(" { ");
            let line = match &l.body[0] {
                Stmt::Param(p) => {
                    let flags: String = p.flags.iter().map(|(f, _)| format!(" {}", f.keyword())).collect();
                    format!("param {} = {}{}", p.name.name, expr(&p.value), flags)
                }
                Stmt::Assign(a) => format!("{} = {}", a.name.name, expr(&a.value)),
                Stmt::Layer(_) => String::new(),
            };
            self.out.push_str(&line);
            self.out.push_str(" }");
            self.trailing(l.span.end as usize);
        } else {
            self.body(&head, &l.body, l.span, level);
        }
    }
}

/// Where a statement's text starts, counting its leading comments.
fn first_start(p: &Printer, stmt: &Stmt) -> u32 {
    let start = stmt.span().start as usize;
    p.comments.iter().skip(p.next).find(|c| c.own_line && c.start < start).map_or(start, |c| c.start) as u32
}

/// The name width to pad to for each statement: the widest name in its run
/// of consecutive statements of the same kind (a blank line ends a run).
fn run_widths(stmts: &[Stmt], blank: impl Fn(u32, u32) -> bool) -> Vec<usize> {
    let key = |s: &Stmt| match s {
        Stmt::Param(p) => Some((0, p.name.name.len())),
        Stmt::Assign(a) => Some((1, a.name.name.len())),
        Stmt::Layer(_) => None,
    };
    let mut widths = vec![0; stmts.len()];
    let mut i = 0;
    while i < stmts.len() {
        let Some((kind, _)) = key(&stmts[i]) else {
            i += 1;
            continue;
        };
        // `layer` overrides inside a run do not break it.
        let mut j = i + 1;
        while j < stmts.len()
            && (matches!(stmts[j], Stmt::Layer(_)) || key(&stmts[j]).is_some_and(|(k, _)| k == kind))
            && !blank(stmts[j - 1].span().end, stmts[j].span().start)
        {
            j += 1;
        }
        let w = stmts[i..j].iter().filter_map(|s| key(s).map(|(_, w)| w)).max().unwrap_or(0);
        widths[i..j].iter_mut().for_each(|x| *x = w);
        i = j;
    }
    widths
}

/// A layer selector as written in canonical form.
pub fn selector(s: LayerSelector) -> String {
    match s {
        LayerSelector::First => "first".into(),
        LayerSelector::Last => "last".into(),
        LayerSelector::Index(n) => n.to_string(),
        LayerSelector::Range(a, b) => format!("{}..{}", a.text(), b.text()),
        LayerSelector::Stepped(a, b, s) => format!("{}..{} step {s}", a.text(), b.text()),
    }
}

fn string_lit(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An expression on one line with the fewest parentheses that keep its tree.
pub fn expr(e: &Expr) -> String {
    match e {
        Expr::Number { text, .. } => text.clone(),
        Expr::String(s) => string_lit(&s.value),
        Expr::Name(i) => i.name.clone(),
        Expr::Call { callee, args, .. } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", callee.name, args.join(", "))
        }
        Expr::Neg { operand, .. } => {
            let inner = expr(operand);
            if prec(operand) < NEG_PREC {
                format!("-({inner})")
            } else {
                format!("-{inner}")
            }
        }
        Expr::Binary { op, lhs, rhs, .. } => {
            let p = op.precedence();
            let right_assoc = *op == BinOp::Pow;
            let l_paren =
                prec(lhs) < p || (right_assoc && prec(lhs) <= p) || (right_assoc && matches!(**lhs, Expr::Neg { .. }));
            let r_paren = prec(rhs) < p || (!right_assoc && prec(rhs) == p);
            format!("{} {} {}", wrap(lhs, l_paren), op.symbol(), wrap(rhs, r_paren))
        }
    }
}

const NEG_PREC: u8 = 3;

fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Binary { op, .. } => op.precedence(),
        Expr::Neg { .. } => NEG_PREC,
        _ => u8::MAX,
    }
}

fn wrap(e: &Expr, paren: bool) -> String {
    if paren {
        format!("({})", expr(e))
    } else {
        expr(e)
    }
}
