//! Names and what they refer to, from the parsed files of one
//! compilation: every definition (blocks, sections, params, bindings) and
//! every use of a name, resolved by the language's scopes — a block's
//! params and bindings, a section's params, then the built-in variables,
//! then the blocks and sections of every loaded file.

use blkc::span::{FileId, Span};
use blkc::syntax::ast::{Expr, File, Item, SectionKind, Stmt};

/// What a definition defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefKind {
    Block,
    Section(SectionKind),
    Param,
    Binding,
}

/// A definition: its name's span, and the span of the whole item or
/// statement that defines it.
#[derive(Debug, Clone)]
pub struct Def {
    pub name: String,
    pub kind: DefKind,
    pub span: Span,
    pub whole: Span,
    /// The block or section it belongs to (params and bindings).
    pub parent: Option<usize>,
}

/// What a name in the text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A definition (index into [`Index::defs`]).
    Def(usize),
    /// A setting key of a section (`query`, `depth`, …).
    Setting(SectionKind),
    /// A built-in: `x`, a variable, a module or function, a keyword value.
    Builtin,
    /// Not defined (the compiler says so).
    Unknown,
}

/// One occurrence of a name.
#[derive(Debug, Clone)]
pub struct Occurrence {
    pub span: Span,
    pub name: String,
    pub target: Target,
    /// The call it is an argument or callee of (`attn`, `mlp`, …).
    pub call: Option<String>,
}

/// Every definition and occurrence of a compilation's files.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub defs: Vec<Def>,
    pub occurrences: Vec<Occurrence>,
}

impl Index {
    pub fn build(files: &[(FileId, File)]) -> Index {
        let mut ix = Index::default();
        for (_, file) in files {
            for item in &file.items {
                ix.top_level(item);
            }
        }
        let globals = ix.defs.len();
        for (_, file) in files {
            for item in &file.items {
                ix.item(item, globals);
            }
        }
        ix
    }

    /// The occurrence under byte `offset` of `file`.
    pub fn at(&self, file: FileId, offset: u32) -> Option<&Occurrence> {
        self.occurrences
            .iter()
            .filter(|o| o.span.file == file && o.span.start <= offset && offset <= o.span.end)
            .min_by_key(|o| o.span.len())
    }

    /// Every occurrence of definition `def` (its own name included).
    pub fn uses(&self, def: usize) -> impl Iterator<Item = &Occurrence> {
        self.occurrences.iter().filter(move |o| o.target == Target::Def(def))
    }

    /// The definition of a block, attention or mlp section by name.
    pub fn global(&self, name: &str, kind: DefKind) -> Option<usize> {
        self.defs.iter().position(|d| d.parent.is_none() && d.kind == kind && d.name == name)
    }

    fn top_level(&mut self, item: &Item) {
        let (name, kind, whole) = match item {
            Item::Block(b) => (&b.name, DefKind::Block, b.span),
            Item::Section(s) => match &s.name {
                Some(n) => (n, DefKind::Section(s.kind), s.span),
                None => return,
            },
            Item::Use(_) => return,
        };
        // The first definition of a name wins (the compiler reports the rest).
        if self.global(&name.name, kind).is_none() {
            self.defs.push(Def { name: name.name.clone(), kind, span: name.span, whole, parent: None });
        }
    }

    fn item(&mut self, item: &Item, globals: usize) {
        match item {
            Item::Use(_) => {}
            Item::Block(b) => {
                let me = self.own(&b.name.name, DefKind::Block, b.name.span, globals);
                let scope = self.locals(&b.body, me, true);
                self.statements(&b.body, &scope, None);
            }
            Item::Section(s) => {
                let me = match &s.name {
                    Some(n) => self.own(&n.name, DefKind::Section(s.kind), n.span, globals),
                    None => None,
                };
                let scope = self.locals(&s.body, me, false);
                self.statements(&s.body, &scope, Some(s.kind));
            }
        }
    }

    /// Records the name of a top-level definition as an occurrence of it.
    fn own(&mut self, name: &str, kind: DefKind, span: Span, globals: usize) -> Option<usize> {
        let i = (0..globals).find(|&i| {
            let d = &self.defs[i];
            d.kind == kind && d.name == name && d.span.position_cmp(&span).is_eq()
        });
        let target = i.map_or(Target::Unknown, Target::Def);
        self.occurrences.push(Occurrence { span, name: name.to_string(), target, call: None });
        i
    }

    /// The params (and, in a block, the bindings) of a body, then those
    /// of its layer overrides that the base body does not define.
    fn locals(&mut self, body: &[Stmt], parent: Option<usize>, bindings: bool) -> Vec<usize> {
        let mut scope = Vec::new();
        let mut bodies = vec![body];
        while let Some(stmts) = bodies.pop() {
            for s in stmts {
                let (name, kind, whole) = match s {
                    Stmt::Param(p) => (&p.name, DefKind::Param, p.span),
                    Stmt::Assign(a) if bindings => (&a.name, DefKind::Binding, a.span),
                    Stmt::Assign(_) => continue,
                    Stmt::Layer(l) => {
                        bodies.insert(0, &l.body);
                        continue;
                    }
                };
                if !scope.iter().any(|&i: &usize| self.defs[i].name == name.name) {
                    self.defs.push(Def { name: name.name.clone(), kind, span: name.span, whole, parent });
                    scope.push(self.defs.len() - 1);
                }
            }
        }
        scope
    }

    fn statements(&mut self, body: &[Stmt], scope: &[usize], section: Option<SectionKind>) {
        for s in body {
            match s {
                Stmt::Param(p) => {
                    let target = self.local(scope, &p.name.name);
                    self.occurrences.push(Occurrence {
                        span: p.name.span,
                        name: p.name.name.clone(),
                        target,
                        call: None,
                    });
                    self.expr(&p.value, scope, None);
                }
                Stmt::Assign(a) => {
                    let target = match section {
                        Some(kind) => Target::Setting(kind),
                        None => self.local(scope, &a.name.name),
                    };
                    self.occurrences.push(Occurrence {
                        span: a.name.span,
                        name: a.name.name.clone(),
                        target,
                        call: None,
                    });
                    if section == Some(SectionKind::Model) && a.name.name == "block" {
                        if let Some(n) = a.value.as_name() {
                            let target = self.global(&n.name, DefKind::Block).map_or(Target::Unknown, Target::Def);
                            self.occurrences.push(Occurrence {
                                span: n.span,
                                name: n.name.clone(),
                                target,
                                call: None,
                            });
                            continue;
                        }
                    }
                    self.expr(&a.value, scope, None);
                }
                Stmt::Layer(l) => self.statements(&l.body, scope, section),
            }
        }
    }

    fn local(&self, scope: &[usize], name: &str) -> Target {
        scope.iter().copied().find(|&i| self.defs[i].name == name).map_or(Target::Unknown, Target::Def)
    }

    fn expr(&mut self, e: &Expr, scope: &[usize], call: Option<&str>) {
        match e {
            Expr::Number { .. } | Expr::String(_) => {}
            Expr::Name(n) => {
                let mut target = self.local(scope, &n.name);
                if target == Target::Unknown {
                    // A section named as an argument of the module it configures.
                    let kind = match call {
                        Some("attn") => Some(DefKind::Section(SectionKind::Attention)),
                        Some("mlp") => Some(DefKind::Section(SectionKind::Mlp)),
                        _ => None,
                    };
                    target = match kind.and_then(|k| self.global(&n.name, k)) {
                        Some(i) => Target::Def(i),
                        None => Target::Builtin,
                    };
                }
                self.occurrences.push(Occurrence {
                    span: n.span,
                    name: n.name.clone(),
                    target,
                    call: call.map(str::to_string),
                });
            }
            Expr::Call { callee, args, .. } => {
                self.occurrences.push(Occurrence {
                    span: callee.span,
                    name: callee.name.clone(),
                    target: Target::Builtin,
                    call: Some(callee.name.clone()),
                });
                for a in args {
                    self.expr(&a.value, scope, Some(&callee.name));
                }
            }
            Expr::Neg { operand, .. } => self.expr(operand, scope, call),
            Expr::Binary { lhs, rhs, .. } => {
                self.expr(lhs, scope, call);
                self.expr(rhs, scope, call);
            }
        }
    }
}
