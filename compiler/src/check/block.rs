//! A `block` → its [`Graph`] for one layer class: bindings are resolved in
//! order, every expression is typed (scalar or tensor), tensor arithmetic
//! becomes weighted sums, and every textual module call becomes a node with
//! its own parameters.

use super::expr::{self, Lookup, Names};
use super::scope::Defs;
use super::sections::{self, Flat};
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::graph::{Func, Graph, Node, NodeId, Norm, NormKind, Op, ParamDef, Scalar, Term, Var};
use crate::span::Span;
use crate::syntax::ast::{Arg, BinOp, Block, Expr, Ident, LayerSelector};

/// Names a block may not bind.
pub(crate) const RESERVED: &[&str] = &["x", "depth", "width", "heads", "layer"];
pub(crate) const MODULES: &[&str] = &["attn", "mlp", "rmsnorm", "layernorm"];

/// Default epsilon of `rmsnorm` and `layernorm`: the GPT-2 config's 1e-5,
/// which the reference code uses for every norm (docs/theory.md §6).
pub const DEFAULT_EPS: f64 = 1e-5;

/// A typed value.
#[derive(Clone)]
enum Val {
    Scalar(Scalar),
    /// A weighted sum of nodes.
    Tensor(Vec<Term>),
    /// An error was already reported.
    Poison,
}

#[derive(Clone)]
enum Kind {
    Tensor(NodeId),
    Scalar(Scalar),
    Poison,
}

struct Binding {
    name: String,
    span: Span,
    kind: Kind,
    used: bool,
    is_param: bool,
}

/// The result of checking one layer class.
pub struct Checked {
    pub graph: Option<Graph>,
    pub diags: Vec<Diagnostic>,
    /// "never used" warnings, kept only if every layer class agrees.
    pub unused: Vec<Diagnostic>,
}

/// Checks `block` for layer class `m`.
pub fn check(block: &Block, defs: &Defs, m: &[LayerSelector]) -> Checked {
    let mut diags = Vec::new();
    let flat = sections::flatten(&block.body, m, false, &mut diags);
    let mut cx = Cx {
        defs,
        m,
        diags,
        nodes: vec![Node { op: Op::Input, name: Some("x".into()), span: block.name.span }],
        params: Vec::new(),
        scope: Vec::new(),
        x_used: false,
        used_early: Vec::new(),
        all_names: flat.iter().map(|f| (f.name().name.clone(), f.name().span)).collect(),
    };
    for f in &flat {
        cx.statement(f);
    }
    cx.finish(block)
}

struct Cx<'a> {
    defs: &'a Defs<'a>,
    m: &'a [LayerSelector],
    diags: Vec<Diagnostic>,
    nodes: Vec<Node>,
    params: Vec<ParamDef>,
    scope: Vec<Binding>,
    x_used: bool,
    all_names: Vec<(String, Span)>,
    /// Names used before their definition (already an error; not "unused").
    used_early: Vec<String>,
}

impl<'a> Cx<'a> {
    fn statement(&mut self, f: &Flat) {
        let name = f.name();
        if RESERVED.contains(&name.name.as_str()) {
            self.diags.push(
                Diagnostic::new(Code::E2019, name.span, format!("`{}` is reserved and cannot be assigned", name.name))
                    .label("reserved name")
                    .help(format!("pick another name; `{}` is predefined in every block", name.name)),
            );
            return;
        }
        if let Some(prev) = self.scope.iter().find(|b| b.name == name.name) {
            self.diags.push(sections::duplicate(name, prev.span, "name"));
            return;
        }
        let kind = match f {
            Flat::Param(p) => match sections::param(p, false, &mut self.diags) {
                Some(def) => {
                    self.params.push(def);
                    Kind::Scalar(Scalar::Param(self.params.len() - 1))
                }
                None => Kind::Poison,
            },
            Flat::Assign(_, value, span) => match self.value(value) {
                Val::Tensor(terms) => {
                    let id = self.materialise(terms, *span, Some(&name.name));
                    // A binding of a module call names that module's node.
                    self.nodes[id].name.get_or_insert_with(|| name.name.clone());
                    Kind::Tensor(id)
                }
                Val::Scalar(s) => Kind::Scalar(s),
                Val::Poison => Kind::Poison,
            },
        };
        let is_param = matches!(f, Flat::Param(_));
        self.scope.push(Binding { name: name.name.clone(), span: name.span, kind, used: false, is_param });
    }

    fn finish(mut self, block: &Block) -> Checked {
        let out = self.scope.iter_mut().find(|b| b.name == "out").map(|b| {
            b.used = true;
            (b.kind.clone(), b.span)
        });
        let out = match out {
            Some((Kind::Tensor(n), _)) => Some(n),
            Some((Kind::Scalar(_), span)) => {
                self.diags.push(scalar_not_tensor(span, "`out` is a scalar"));
                None
            }
            Some((Kind::Poison, _)) => None,
            None => {
                self.diags.push(
                    Diagnostic::new(Code::E2002, block.name.span, format!("block `{}` has no `out`", block.name.name))
                        .label("no output")
                        .help("bind the block's output: `out = …`"),
                );
                None
            }
        };
        let unused = self.unused(block);
        let graph = match out {
            Some(out) if !self.diags.iter().any(Diagnostic::is_error) => {
                Some(Graph { nodes: self.nodes, params: self.params, out })
            }
            _ => None,
        };
        Checked { graph, diags: self.diags, unused }
    }

    fn unused(&self, block: &Block) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if !self.x_used {
            out.push(
                Diagnostic::new(
                    Code::W2002,
                    block.name.span,
                    format!("block `{}` never uses its input `x`", block.name.name),
                )
                .label("input unused")
                .help("a block should transform its input; refer to `x`"),
            );
        }
        for b in self.scope.iter().filter(|b| !b.used && !self.used_early.contains(&b.name)) {
            let (code, what, help) = if b.is_param {
                (Code::W2003, "param", "use it as a gain, e.g. `out = x + g * attn(n)`, or remove it")
            } else {
                (Code::W2001, "binding", "use it or remove it (the binding named `out` is the block's output)")
            };
            out.push(
                Diagnostic::new(code, b.span, format!("{what} `{}` is never used", b.name))
                    .label("never used")
                    .help(help),
            );
        }
        out
    }

    /// A tensor as one node: a single unit-gain term is that node, anything
    /// else becomes a [`Op::Sum`].
    fn materialise(&mut self, terms: Vec<Term>, span: Span, name: Option<&str>) -> NodeId {
        if let [Term { gain: Scalar::Const(g), input }] = terms.as_slice() {
            if *g == 1.0 {
                return *input;
            }
        }
        self.nodes.push(Node { op: Op::Sum { terms }, name: name.map(str::to_string), span });
        self.nodes.len() - 1
    }

    fn value(&mut self, e: &Expr) -> Val {
        match e {
            Expr::Number { value, .. } => Val::Scalar(Scalar::Const(*value)),
            Expr::String(s) => {
                self.diags.push(expr::invalid(s.span, "expression", "a number or a tensor, not a string"));
                Val::Poison
            }
            Expr::Name(n) => self.name(n),
            Expr::Neg { operand, .. } => match self.value(operand) {
                Val::Scalar(s) => Val::Scalar(s.negate()),
                Val::Tensor(t) => Val::Tensor(scale(t, Scalar::Const(-1.0))),
                Val::Poison => Val::Poison,
            },
            Expr::Binary { op, lhs, rhs, span } => {
                let (l, r) = (self.value(lhs), self.value(rhs));
                self.binary(*op, l, r, lhs.span(), rhs.span(), *span)
            }
            Expr::Call { callee, args, span } => self.call(callee, args, *span),
        }
    }

    fn name(&mut self, n: &Ident) -> Val {
        if n.name == "x" {
            self.x_used = true;
            return Val::Tensor(vec![Term { gain: Scalar::one(), input: 0 }]);
        }
        if let Some(b) = self.scope.iter_mut().find(|b| b.name == n.name) {
            b.used = true;
            return match &b.kind {
                Kind::Tensor(node) => Val::Tensor(vec![Term { gain: Scalar::one(), input: *node }]),
                Kind::Scalar(s) => Val::Scalar(s.clone()),
                Kind::Poison => Val::Poison,
            };
        }
        if let Lookup::Scalar(s) = expr::var_lookup(&n.name) {
            return Val::Scalar(s);
        }
        if let Some((_, at)) = self.all_names.iter().find(|(k, _)| *k == n.name) {
            self.used_early.push(n.name.clone());
            self.diags.push(
                Diagnostic::new(Code::E2023, n.span, format!("`{}` is used before it is defined", n.name))
                    .label("not defined yet")
                    .note(*at, "defined here")
                    .help("bindings form a graph in order: define a name before using it (a block cannot refer to itself)"),
            );
            return Val::Poison;
        }
        if n.name == "head" {
            self.diags.push(expr::head_outside(n));
            return Val::Poison;
        }
        let mut candidates: Vec<String> = self.scope.iter().map(|b| b.name.clone()).collect();
        candidates.push("x".into());
        candidates.extend(Var::ALL.iter().map(|v| v.keyword().to_string()));
        let d = expr::unknown_name(n, &candidates, "name");
        // The binding the typo meant is used, in intent: no "never used"
        // warning for it on top of the error.
        if let Some(meant) = did_you_mean(&n.name, candidates.iter().map(String::as_str)) {
            if let Some(b) = self.scope.iter_mut().find(|b| b.name == meant) {
                b.used = true;
            }
        }
        let d = if self.defs.attention.contains_key(n.name.as_str()) || self.defs.mlp.contains_key(n.name.as_str()) {
            d.help(format!("`{}` is a section; pass it to a call: `attn(n, {})`", n.name, n.name))
        } else {
            d
        };
        self.diags.push(d);
        Val::Poison
    }

    fn binary(&mut self, op: BinOp, l: Val, r: Val, ls: Span, rs: Span, span: Span) -> Val {
        use Val::*;
        match (op, l, r) {
            (_, Poison, _) | (_, _, Poison) => Poison,
            (_, Scalar(a), Scalar(b)) => Scalar(expr::fold(op, a, b)),
            (BinOp::Add, Tensor(a), Tensor(b)) => Tensor(merge(a, b)),
            (BinOp::Sub, Tensor(a), Tensor(b)) => Tensor(merge(a, scale(b, crate::graph::Scalar::Const(-1.0)))),
            (BinOp::Mul, Scalar(s), Tensor(t)) | (BinOp::Mul, Tensor(t), Scalar(s)) => Tensor(scale(t, s)),
            (BinOp::Div, Tensor(t), Scalar(s)) => Tensor(scale(
                t,
                crate::graph::Scalar::Bin(BinOp::Div, Box::new(crate::graph::Scalar::one()), Box::new(s)),
            )),
            (BinOp::Mul | BinOp::Div, Tensor(_), Tensor(_)) => {
                let what = if op == BinOp::Mul { "multiply" } else { "divide" };
                self.diags.push(
                    Diagnostic::new(Code::E2003, span, format!("cannot {what} two tensors"))
                        .label("both sides are tensors")
                        .help("tensors can be added, subtracted and scaled by scalars; an elementwise product is not a block edge"),
                );
                Poison
            }
            (BinOp::Add | BinOp::Sub, Scalar(_), Tensor(_)) => {
                self.diags.push(scalar_not_tensor(ls, "a scalar is added to a tensor"));
                Poison
            }
            (BinOp::Add | BinOp::Sub, Tensor(_), Scalar(_)) => {
                self.diags.push(scalar_not_tensor(rs, "a scalar is added to a tensor"));
                Poison
            }
            (_, Tensor(_), _) => {
                self.diags
                    .push(expr::tensor_not_scalar(ls, &format!("the left side of `{}` is a tensor", op.symbol())));
                Poison
            }
            (_, _, Tensor(_)) => {
                self.diags
                    .push(expr::tensor_not_scalar(rs, &format!("the right side of `{}` is a tensor", op.symbol())));
                Poison
            }
        }
    }

    fn call(&mut self, callee: &Ident, args: &[Arg], span: Span) -> Val {
        let name = callee.name.as_str();
        if let Some(f) = Func::ALL.iter().find(|f| f.keyword() == name) {
            return self.func(*f, args, span);
        }
        if !MODULES.contains(&name) {
            let mut known: Vec<String> = MODULES.iter().map(|s| s.to_string()).collect();
            known.extend(Func::ALL.iter().map(|f| f.keyword().to_string()));
            let d = expr::unknown_name(callee, &known, "module or function");
            let d = if name == "attention" { d.help("did you mean `attn`?") } else { d };
            self.diags.push(d);
            return Val::Poison;
        }
        let positional: Vec<&Expr> = args.iter().filter(|a| a.name.is_none()).map(|a| &a.value).collect();
        let kwargs: Vec<(&Ident, &Expr)> = args.iter().filter_map(|a| a.name.as_ref().map(|n| (n, &a.value))).collect();
        let max = if matches!(name, "attn" | "mlp") { 2 } else { 1 };
        if positional.is_empty() || positional.len() > max {
            let d = if max == 2 {
                Diagnostic::new(
                    Code::E2006,
                    span,
                    format!("`{name}` takes 1 or 2 arguments, but {} were given", positional.len()),
                )
                .label("wrong number of arguments")
                .help(format!(
                    "call it as `{name}(input)` or `{name}(input, section)`, with settings as `name = value`"
                ))
            } else {
                expr::arity(span, name, 1, positional.len())
                    .help(format!("call it as `{name}(input)` or `{name}(input, eps = 1e-6)`"))
            };
            self.diags.push(d);
            return Val::Poison;
        }
        let input = match self.value(positional[0]) {
            Val::Tensor(t) => self.materialise(t, positional[0].span(), None),
            Val::Scalar(_) => {
                self.diags.push(scalar_not_tensor(positional[0].span(), &format!("the input of `{name}` is a scalar")));
                return Val::Poison;
            }
            Val::Poison => return Val::Poison,
        };
        let op = match name {
            "rmsnorm" | "layernorm" => self.norm(name, input, &kwargs),
            _ => self.sub_block(name, input, positional.get(1).copied(), &kwargs),
        };
        match op {
            Some(op) => {
                self.nodes.push(Node { op, name: None, span });
                Val::Tensor(vec![Term { gain: Scalar::one(), input: self.nodes.len() - 1 }])
            }
            None => Val::Poison,
        }
    }

    fn norm(&mut self, name: &str, input: NodeId, kwargs: &[(&Ident, &Expr)]) -> Option<Op> {
        let kind = if name == "rmsnorm" { NormKind::RmsNorm } else { NormKind::LayerNorm };
        let mut eps = DEFAULT_EPS;
        for (k, v) in kwargs {
            if k.name != "eps" {
                self.diags.push(sections::unknown_setting(k, &["eps"], name));
                return None;
            }
            eps = expr::number(v, "eps", &mut self.diags)?;
            if !(eps > 0.0 && eps < 1.0) {
                self.diags.push(expr::out_of_range(v.span(), "eps", eps, "between 0 and 1 (exclusive)"));
                return None;
            }
        }
        Some(Op::Norm { norm: Norm { kind, eps }, input })
    }

    fn sub_block(
        &mut self,
        name: &str,
        input: NodeId,
        config: Option<&Expr>,
        kwargs: &[(&Ident, &Expr)],
    ) -> Option<Op> {
        let section = match config {
            None => None,
            Some(e) => Some(self.section_ref(name, e)?),
        };
        if name == "attn" {
            let spec = sections::attention(section, kwargs, self.m, &mut self.diags)?;
            Some(Op::Attention { spec: Box::new(spec), input })
        } else {
            let spec = sections::mlp(section, kwargs, self.m, &mut self.diags)?;
            Some(Op::Mlp { spec, input })
        }
    }

    fn section_ref(&mut self, name: &str, e: &Expr) -> Option<&'a crate::syntax::ast::Section> {
        let defs: &'a Defs<'a> = self.defs;
        let (map, what) = if name == "attn" { (&defs.attention, "attention") } else { (&defs.mlp, "mlp") };
        let Some(id) = e.as_name() else {
            self.diags.push(expr::invalid(
                e.span(),
                name,
                &format!("the name of an `{what}` section as second argument"),
            ));
            return None;
        };
        match map.get(id.name.as_str()) {
            Some(s) => Some(s),
            None => {
                let known: Vec<String> = map.keys().map(|k| k.to_string()).collect();
                let mut d = expr::unknown_name(id, &known, &format!("{what} section"));
                if known.is_empty() || did_you_mean(&id.name, known.iter().map(String::as_str)).is_none() {
                    d = d.help(format!("define it with `{what} {} {{ … }}`, or `use` the file that does", id.name));
                }
                self.diags.push(self.defs.perhaps_unread(d, &id.name));
                None
            }
        }
    }

    fn func(&mut self, f: Func, args: &[Arg], span: Span) -> Val {
        let call = Expr::Call { callee: Ident { name: f.keyword().into(), span }, args: args.to_vec(), span };
        let mut diags = Vec::new();
        let r = expr::scalar(&call, &mut ScopeNames { cx: self }, &mut diags);
        self.diags.extend(diags);
        r.map_or(Val::Poison, Val::Scalar)
    }
}

/// Scalar names inside a block: params, scalar bindings and variables.
struct ScopeNames<'a, 'b> {
    cx: &'a mut Cx<'b>,
}

impl Names for ScopeNames<'_, '_> {
    fn lookup(&mut self, name: &Ident, _: &mut Vec<Diagnostic>) -> Lookup {
        match self.cx.name(name) {
            Val::Scalar(s) => Lookup::Scalar(s),
            Val::Tensor(_) => Lookup::Tensor,
            Val::Poison => Lookup::Reported,
        }
    }
}

fn scalar_not_tensor(span: Span, what: &str) -> Diagnostic {
    Diagnostic::new(Code::E2004, span, format!("expected a tensor, but {what}"))
        .label("a scalar")
        .help("tensors are `x`, module calls such as `attn(n)`, and bindings of them")
}

fn scale(terms: Vec<Term>, by: Scalar) -> Vec<Term> {
    terms.into_iter().map(|t| Term { gain: by.clone().times(t.gain), input: t.input }).collect()
}

/// `a + b`, adding the gains of terms on the same node.
fn merge(mut a: Vec<Term>, b: Vec<Term>) -> Vec<Term> {
    for t in b {
        match a.iter_mut().find(|u| u.input == t.input) {
            Some(u) => u.gain = expr::fold(BinOp::Add, u.gain.clone(), t.gain),
            None => a.push(t),
        }
    }
    a
}
