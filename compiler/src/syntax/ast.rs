//! The AST: what the user wrote, with spans. Equality ignores spans.

use crate::span::Span;

/// A parsed file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Use(Use),
    Block(Block),
    Section(Section),
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Use(u) => u.span,
            Item::Block(b) => b.span,
            Item::Section(s) => s.span,
        }
    }
}

/// `use "path"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Use {
    pub path: StringLit,
    pub span: Span,
}

/// `block name { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: Ident,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// What a section configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    Attention,
    Mlp,
    Model,
    Train,
}

impl SectionKind {
    pub fn keyword(self) -> &'static str {
        match self {
            SectionKind::Attention => "attention",
            SectionKind::Mlp => "mlp",
            SectionKind::Model => "model",
            SectionKind::Train => "train",
        }
    }
}

/// `attention|mlp|model|train [name] { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub kind: SectionKind,
    pub name: Option<Ident>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A statement in a block, section or layer override.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Param(Param),
    Assign(Assign),
    Layer(LayerOverride),
}

impl Stmt {
    pub fn span(&self) -> Span {
        match self {
            Stmt::Param(p) => p.span,
            Stmt::Assign(a) => a.span,
            Stmt::Layer(l) => l.span,
        }
    }
}

/// Modifiers of a `param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Trainable,
    Fixed,
    PerHead,
}

impl Flag {
    pub fn keyword(self) -> &'static str {
        match self {
            Flag::Trainable => "trainable",
            Flag::Fixed => "fixed",
            Flag::PerHead => "per_head",
        }
    }
}

/// `param name = value flags…`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub value: Expr,
    pub flags: Vec<(Flag, Span)>,
    pub span: Span,
}

impl Param {
    pub fn has(&self, flag: Flag) -> bool {
        self.flags.iter().any(|(f, _)| *f == flag)
    }
}

/// `name = value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    pub name: Ident,
    pub value: Expr,
    pub span: Span,
}

/// Which layers an override applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerSelector {
    First,
    Last,
    Index(u64),
    /// `start..end`: the layers from `start` up to but not including `end`
    /// (as Rust's ranges), each bound a whole number or a function of `depth`.
    Range(Bound, Bound),
    /// `start..end step s`: every `s`-th layer of the range from `start`
    /// (`s` at least 2; a step of 1 is the plain range).
    Stepped(Bound, Bound, u64),
}

impl LayerSelector {
    /// Whether it is a range (stepped or not): it may match together with
    /// any other selector.
    pub fn is_range(self) -> bool {
        matches!(self, LayerSelector::Range(..) | LayerSelector::Stepped(..))
    }

    /// A range's bounds.
    pub fn bounds(self) -> Option<(Bound, Bound)> {
        match self {
            LayerSelector::Range(a, b) | LayerSelector::Stepped(a, b, _) => Some((a, b)),
            _ => None,
        }
    }
}

/// A layer-range bound: ⌊(per_depth·depth + offset) / divisor⌋, clamped to
/// `0..=depth` (`3`, `depth`, `depth/2`, `depth - 2`, `2*depth/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Bound {
    pub per_depth: i64,
    pub offset: i64,
    /// Always positive.
    pub divisor: i64,
}

impl Bound {
    pub fn at(self, depth: u64) -> u64 {
        let d = i128::from(depth as i64);
        let v = (i128::from(self.per_depth) * d + i128::from(self.offset)).div_euclid(i128::from(self.divisor.max(1)));
        v.clamp(0, d) as u64
    }

    /// The bound as written canonically (`depth/2`, `(depth + 1)/2`, `3`).
    pub fn text(self) -> String {
        let linear = match (self.per_depth, self.offset) {
            (0, b) => b.to_string(),
            (a, 0) => coefficient(a),
            (a, b) if b < 0 => format!("{} - {}", coefficient(a), -b),
            (a, b) => format!("{} + {b}", coefficient(a)),
        };
        match self.divisor {
            1 => linear,
            c if self.per_depth != 0 && self.offset != 0 => format!("({linear})/{c}"),
            c => format!("{linear}/{c}"),
        }
    }
}

fn coefficient(a: i64) -> String {
    match a {
        1 => "depth".into(),
        -1 => "-depth".into(),
        a => format!("{a}*depth"),
    }
}

/// `layer first|last|N|A..B { … }`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerOverride {
    pub selectors: Vec<(LayerSelector, Span)>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A name with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A string literal (escapes resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct StringLit {
    pub value: String,
    pub span: Span,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
        }
    }

    /// Binding strength, higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div => 2,
            BinOp::Pow => 4,
        }
    }
}

/// One argument of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number; `text` is kept so the formatter writes it as written.
    Number {
        value: f64,
        text: String,
        span: Span,
    },
    String(StringLit),
    Name(Ident),
    Call {
        callee: Ident,
        args: Vec<Arg>,
        span: Span,
    },
    Neg {
        operand: Box<Expr>,
        span: Span,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        span: Span,
    },
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Number { span, .. }
            | Expr::Call { span, .. }
            | Expr::Neg { span, .. }
            | Expr::Binary { span, .. } => *span,
            Expr::String(s) => s.span,
            Expr::Name(i) => i.span,
        }
    }

    /// The name, if the expression is a bare name.
    pub fn as_name(&self) -> Option<&Ident> {
        match self {
            Expr::Name(i) => Some(i),
            _ => None,
        }
    }
}
