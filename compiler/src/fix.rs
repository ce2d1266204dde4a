//! `blkc check --fix`: the smallest change to a file that makes a rejected
//! block pass.
//!
//! The rules of thumb the checker's help gives — a skip around each
//! token-mixing sub-block, the attention shaped to be the identity at
//! init, residual branches down-weighted by about 1/√depth, skip gains of
//! one, no branch that starts at zero — are each a small edit of the text.
//! The fixer lists every such edit the rejected block's file allows
//! ([`changes`]), weighs each by how much of the text it changes, and
//! checks every candidate with the same analysis as `blkc check`: a change
//! is proposed only when the whole pipeline (parse, check, signal
//! propagation at the analysed depth) accepts the changed file. Changes
//! are searched breadth first, up to [`MAX_CHANGES`] at once, expanding
//! the candidates that got furthest (the latest layer of the first
//! rejection); the cheapest passing set wins, a clean pass before a
//! warning.
//!
//! Edits keep the file as written (comments, order, spacing); a file that
//! was formatted stays formatted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::graph::Program;
use crate::signal::report::{setup, Request};
use crate::signal::verdict::{Finding, Status};
use crate::signal::{analyse, Dims, Options};
use crate::source::{normalise, Loader};
use crate::span::FileId;
use crate::syntax::ast::{Arg, BinOp, Block, Expr, File, Item, SectionKind, Stmt};

/// The most changes combined into one fix.
pub const MAX_CHANGES: usize = 3;
/// How many of the unfinished candidates of one round are expanded.
const BEAM: usize = 4;
/// The most variants checked for one block (each is a compile and an
/// analysis: a bound on the time a fix takes).
pub const MAX_VARIANTS: usize = 120;

/// A replacement of `start..end` (bytes of the root file) by `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

impl Edit {
    fn insert(at: usize, text: impl Into<String>) -> Self {
        Edit { start: at, end: at, text: text.into() }
    }
}

/// One change a fix may make: what it does, in words, its edits, and its
/// weight (about the number of tokens it writes or removes).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub what: String,
    pub cost: u32,
    pub edits: Vec<Edit>,
}

/// A set of changes that makes a block pass.
#[derive(Debug, Clone)]
pub struct Fix {
    pub changes: Vec<String>,
    pub cost: u32,
    /// The file the changes are made in: the one that defines the block
    /// (the root file, or one it `use`s).
    pub file: PathBuf,
    /// The fixed text of that file.
    pub text: String,
    /// Its verdict: `Pass`, or `Warn` where nothing cheaper passes cleanly.
    pub status: Status,
}

/// What the fixer found for one rejected block.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The cheapest fix, with other fixes that also pass (cheapest first).
    Fixed { block: String, fix: Fix, others: Vec<Fix> },
    /// No set of up to [`MAX_CHANGES`] changes passes; `tried` variants were
    /// checked.
    NotFound { block: String, tried: usize, why: String },
}

/// Fixes every rejected block of the file at `root` in turn (each fix
/// searched on the texts the previous ones left), each in the file that
/// defines it, analysed as `root` analyses it (its model's depth and
/// width). An empty list: nothing is rejected. `Err`: the file does not
/// compile (fix its errors first).
///
/// The search stops at `budget` (checking a variant can take seconds where
/// the analysis samples random queries): what it found by then is its
/// answer.
pub fn fix(
    root: &Path,
    loader: &dyn Loader,
    sets: &[String],
    req: &Request,
    budget: Duration,
) -> Result<Vec<Outcome>, String> {
    loader.load(&normalise(root))?;
    let deadline = Instant::now() + budget;
    let mut search = Search {
        root: normalise(root),
        loader,
        sets,
        req,
        tried: 0,
        deadline,
        edited: HashMap::new(),
        target: normalise(root),
    };
    let Some(verdicts) = search.verdicts(None, None) else {
        return Err("the file has errors: fix them first (`blkc check` shows them)".into());
    };
    let mut outcomes = Vec::new();
    for (block, status, _, file) in verdicts {
        if status != Status::Reject {
            continue;
        }
        search.tried = 0;
        search.target = file.clone();
        let text = match search.edited.get(&file) {
            Some(t) => t.clone(),
            None => loader.load(&file)?,
        };
        let outcome = search.one(&text, &block);
        if let Outcome::Fixed { fix, .. } = &outcome {
            search.edited.insert(file, fix.text.clone());
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// How far a rejected variant got: the layer of its first rejection (a
/// zero branch: layer 0), then how close its tokens are (lower is better).
type Progress = (u64, f64);

struct Search<'a> {
    root: PathBuf,
    loader: &'a dyn Loader,
    sets: &'a [String],
    req: &'a Request,
    tried: usize,
    deadline: Instant,
    /// The files fixed so far, with their new texts.
    edited: HashMap<PathBuf, String>,
    /// The file the current search changes.
    target: PathBuf,
}

/// The files fixed so far and the variant under test in place of theirs,
/// every other file read as before.
struct Overlay<'a> {
    edited: &'a HashMap<PathBuf, String>,
    variant: Option<(&'a Path, &'a str)>,
    inner: &'a dyn Loader,
}

impl Loader for Overlay<'_> {
    fn load(&self, path: &Path) -> Result<String, String> {
        let path = normalise(path);
        match self.variant {
            Some((p, text)) if p == path => Ok(text.to_string()),
            _ => self.edited.get(&path).cloned().map_or_else(|| self.inner.load(&path), Ok),
        }
    }
}

impl Search<'_> {
    /// The verdict of each block analysed in the root file (of `only`, when
    /// given) with `variant` in place of its file, with how far it got and
    /// the file that defines the block; `None` when that does not compile.
    #[allow(clippy::type_complexity)]
    fn verdicts(
        &mut self,
        variant: Option<&str>,
        only: Option<&str>,
    ) -> Option<Vec<(String, Status, Progress, PathBuf)>> {
        self.tried += 1;
        let variant = variant.map(|t| (self.target.as_path(), t));
        let overlay = Overlay { edited: &self.edited, variant, inner: self.loader };
        let c = crate::compile_with(&self.root, &overlay, self.sets).ok()?;
        let p: &Program = c.program.as_ref()?;
        Some(
            p.analysed_models(FileId(0))
                .iter()
                .filter(|(m, _)| only.is_none_or(|b| p.blocks[m.block].name == b))
                .map(|(m, _)| {
                    let block = &p.blocks[m.block];
                    let (dims, opts): (Dims, Options) = setup(m, self.req);
                    let a = analyse(block, dims, &opts);
                    let layer = a
                        .findings
                        .iter()
                        .filter_map(|f| match f {
                            Finding::Collapse { layer, .. } | Finding::Scale { layer, .. } => Some(*layer),
                            Finding::ZeroOutput { .. } => Some(0),
                            _ => None,
                        })
                        .min()
                        .unwrap_or(opts.depth + 1);
                    let cosine = a.traces.get(a.worst).and_then(|t| t.layers.last()).map_or(1.0, |l| l.cosine);
                    let file = normalise(&c.sources.get(block.span.file).path);
                    (block.name.clone(), a.status, (layer, -cosine), file)
                })
                .collect(),
        )
    }

    /// Whether the search must stop: too many variants or too long.
    fn out_of_budget(&self) -> bool {
        self.tried >= MAX_VARIANTS || Instant::now() >= self.deadline
    }

    /// The verdict of `block` in `text`.
    fn verdict(&mut self, text: &str, block: &str) -> Option<(Status, Progress)> {
        self.verdicts(Some(text), Some(block))?.into_iter().next().map(|(_, s, p, _)| (s, p))
    }

    /// The cheapest fix of `block` in `text`.
    fn one(&mut self, text: &str, block: &str) -> Outcome {
        // Each state: the text so far, the changes made, their weight.
        let mut frontier = vec![(text.to_string(), Vec::<String>::new(), 0u32)];
        let mut found: Vec<Fix> = Vec::new();
        let mut seen: HashSet<String> = HashSet::from([text.to_string()]);
        for round in 0..MAX_CHANGES {
            let mut rejected: Vec<(Progress, String, Vec<String>, u32)> = Vec::new();
            for (base, made, weight) in &frontier {
                let Some(file) = parse(base) else { continue };
                for change in changes(&file, base, block) {
                    if self.out_of_budget() {
                        break;
                    }
                    let fixed = apply(base, &change.edits);
                    if !seen.insert(fixed.clone()) {
                        continue;
                    }
                    let cost = weight + change.cost;
                    // Past the single changes, nothing dearer than a fix
                    // found is worth checking.
                    if round > 0 && found.iter().any(|f| f.cost < cost) {
                        continue;
                    }
                    let mut names = made.clone();
                    names.push(change.what.clone());
                    match self.verdict(&fixed, block) {
                        Some((Status::Reject, progress)) => rejected.push((progress, fixed, names, cost)),
                        Some((status, _)) => {
                            found.push(Fix { changes: names, cost, file: self.target.clone(), text: fixed, status })
                        }
                        None => {}
                    }
                }
            }
            let cheapest = found.iter().map(|f| f.cost).min();
            // A further round adds at least one more change (weight ≥ 1).
            let next_best = rejected.iter().map(|r| r.3 + 1).min();
            if cheapest.is_some_and(|c| next_best.is_none_or(|n| c <= n)) || round + 1 == MAX_CHANGES {
                break;
            }
            rejected.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.3.cmp(&b.3)));
            frontier = rejected.into_iter().take(BEAM).map(|(_, t, n, c)| (t, n, c)).collect();
            if frontier.is_empty() {
                break;
            }
        }
        if found.is_empty() {
            let why = if self.tried >= MAX_VARIANTS {
                format!("none of the {MAX_VARIANTS} variants tried passes")
            } else if Instant::now() >= self.deadline {
                "none of the variants checked in the time allowed passes".to_string()
            } else {
                format!("no set of up to {MAX_CHANGES} changes passes")
            };
            return Outcome::NotFound { block: block.to_string(), tried: self.tried, why };
        }
        // Cheapest first; a clean pass before a warning; fewer changes.
        found.sort_by_key(|f| (f.cost, f.status as u8, f.changes.len()));
        // The same changes made in another order are one fix.
        let mut sets: HashSet<Vec<String>> = HashSet::new();
        found.retain(|f| {
            let mut set = f.changes.clone();
            set.sort();
            sets.insert(set)
        });
        let formatted = parse(text).is_some_and(|f| crate::syntax::format::format(&f, text) == text);
        if formatted {
            for f in &mut found {
                if let Some(file) = parse(&f.text) {
                    f.text = crate::syntax::format::format(&file, &f.text);
                }
            }
        }
        let fix = found.remove(0);
        found.truncate(3);
        Outcome::Fixed { block: block.to_string(), fix, others: found }
    }
}

fn parse(text: &str) -> Option<File> {
    crate::syntax::parse(FileId(0), text).ok()
}

/// `text` with `edits` (not overlapping) made; edits at one position are
/// made in the order given.
pub fn apply(text: &str, edits: &[Edit]) -> String {
    let mut order: Vec<&Edit> = edits.iter().collect();
    order.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for e in order {
        if e.start < at || e.end > text.len() {
            continue;
        }
        out.push_str(&text[at..e.start]);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(&text[at..]);
    out
}

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
    let mut streams: HashSet<String> = HashSet::from(["x".to_string()]);
    for s in &b.body {
        if let Stmt::Assign(a) = s {
            streams.insert(a.name.name.clone());
        }
    }
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
    let assigns: Vec<&crate::syntax::ast::Assign> = b
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Assign(a) => Some(a),
            _ => None,
        })
        .collect();
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

/// A line diff of `a` and `b` with `context` unchanged lines around each
/// change: `(line in a, line in b, marker, text)`, marker `' '`, `'-'` or `'+'`;
/// `None` between hunks.
pub fn diff(a: &str, b: &str, context: usize) -> Vec<Option<(usize, usize, char, String)>> {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // The common prefix and suffix, then a longest common subsequence of
    // what is left (fixes change a few lines).
    let pre = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
    let suf = x[pre..].iter().rev().zip(y[pre..].iter().rev()).take_while(|(p, q)| p == q).count();
    let (xm, ym) = (&x[pre..x.len() - suf], &y[pre..y.len() - suf]);
    let (n, m) = (xm.len(), ym.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if xm[i] == ym[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(usize, usize, char, String)> = (0..pre).map(|k| (k + 1, k + 1, ' ', x[k].to_string())).collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && xm[i] == ym[j] {
            ops.push((pre + i + 1, pre + j + 1, ' ', xm[i].to_string()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push((pre + i + 1, pre + j + 1, '-', xm[i].to_string()));
            i += 1;
        } else {
            ops.push((pre + i + 1, pre + j + 1, '+', ym[j].to_string()));
            j += 1;
        }
    }
    for k in 0..suf {
        let (ia, ib) = (x.len() - suf + k, y.len() - suf + k);
        ops.push((ia + 1, ib + 1, ' ', x[ia].to_string()));
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.2 != ' ').map(|(k, _)| k).collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= context);
    let mut out = Vec::new();
    let mut last: Option<usize> = None;
    for (k, op) in ops.into_iter().enumerate() {
        if !near(k) {
            continue;
        }
        if last.is_some_and(|l| k > l + 1) {
            out.push(None);
        }
        out.push(Some(op));
        last = Some(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{apply, changes, diff, fix, Edit, Outcome};
    use crate::signal::report::Request;
    use crate::signal::verdict::Status;
    use crate::MemLoader;

    /// The outcomes of fixing `text` as `m.blk`.
    fn fixed(text: &str) -> Result<Vec<Outcome>, String> {
        fix(Path::new("m.blk"), &MemLoader::default().with("m.blk", text), &[], &Request::default(), LONG)
    }

    /// The single outcome's fix: its changes and text.
    fn only(text: &str) -> (Vec<String>, String, Status) {
        let mut out = fixed(text).expect("compiles");
        assert_eq!(out.len(), 1, "one rejected block");
        match out.remove(0) {
            Outcome::Fixed { fix, .. } => (fix.changes, fix.text, fix.status),
            Outcome::NotFound { why, .. } => panic!("no fix found: {why}"),
        }
    }

    /// Whether `text` passes `blkc check`'s analysis.
    fn passes(text: &str) -> bool {
        fixed(text).expect("compiles").is_empty()
    }

    /// Time enough for any search of these tests.
    const LONG: std::time::Duration = std::time::Duration::from_secs(600);

    const MODEL: &str = "model {\n    block = b\n    depth = 12\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";

    #[test]
    fn attention_without_a_skip_gets_one() {
        let text = format!("# attention with no skip\nblock b {{\n    h   = attn(rmsnorm(x))  # mixes\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
        assert!(!passes(&text), "the test's block is rejected");
        let (changes, after, status) = only(&text);
        assert_eq!(changes, ["add a skip from `x` around `attn(…)` in `h`"]);
        assert!(after.contains("h   = x + attn(rmsnorm(x))  # mixes"), "{after}");
        assert!(after.starts_with("# attention with no skip\n"), "comments are kept: {after}");
        assert_ne!(status, Status::Reject);
        assert!(passes(&after));
    }

    #[test]
    fn a_skip_gain_that_explodes_is_dropped() {
        let text = "block b {\n    out = 2 * x + mlp(x)\n}\n\nmodel {\n    block = b\n    depth = 18\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
        assert!(!passes(text));
        let (changes, after, _) = only(text);
        assert_eq!(changes, ["drop the skip gain 2 on `x` in `out`"]);
        assert!(after.contains("out = x + mlp(x)"), "{after}");
    }

    #[test]
    fn a_skip_gain_param_is_initialised_to_one() {
        let text = "block b {\n    param a = 0.5 trainable\n    out = a * x + 0.1 * attn(x)\n}\n\nmodel {\n    block = b\n    depth = 12\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
        assert!(!passes(text));
        let (changes, after, _) = only(text);
        assert_eq!(changes, ["initialise the skip gain `a` to 1"]);
        assert!(after.contains("param a = 1 trainable"), "{after}");
    }

    #[test]
    fn a_branch_that_starts_at_zero_gets_its_default_init() {
        let text = format!("mlp dead {{\n    down = zeros\n    up = fan_in\n}}\n\nblock b {{\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h), dead)\n}}\n\n{MODEL}");
        assert!(!passes(&text));
        let (changes, after, _) = only(&text);
        assert_eq!(changes, ["`down = zeros` in `mlp dead` makes its output zero: use the default init"]);
        assert!(after.contains("mlp dead {\n    up = fan_in\n}"), "the line is gone, no blank left: {after}");
    }

    #[test]
    fn an_mlp_chain_gets_a_skip_and_what_else_it_needs() {
        let text = "block b {\n    out = mlp(rmsnorm(x))\n}\n\nmodel {\n    block = b\n    depth = 72\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
        assert!(!passes(text));
        let (changes, after, _) = only(text);
        assert!(changes[0].starts_with("add a skip from `x`"), "{changes:?}");
        assert!(passes(&after), "{after}");
    }

    /// A block that needs several changes gets them; the same changes made
    /// in another order are offered once.
    #[test]
    fn several_changes_combine_and_orders_are_one_fix() {
        let text = "block naive {\n    h   = attn(x)\n    out = h + mlp(h)\n}\n\nmodel {\n    block = naive\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
        assert!(!passes(text));
        let mut out = fixed(text).expect("compiles");
        let Some(Outcome::Fixed { fix, others, .. }) = out.pop() else { panic!("not fixed") };
        assert!(fix.changes.len() >= 2, "{:?}", fix.changes);
        assert!(passes(&fix.text), "{}", fix.text);
        let mut sets: Vec<Vec<String>> = std::iter::once(&fix)
            .chain(&others)
            .map(|f| {
                let mut c = f.changes.clone();
                c.sort();
                c
            })
            .collect();
        let n = sets.len();
        sets.sort();
        sets.dedup();
        assert_eq!(sets.len(), n, "no set of changes offered twice");
    }

    #[test]
    fn a_formatted_file_stays_formatted() {
        let text = format!("block b {{\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
        let (_, after, _) = only(&text);
        let file = crate::syntax::parse(crate::span::FileId(0), &after).expect("parses");
        assert_eq!(crate::syntax::format::format(&file, &after), after);
    }

    #[test]
    fn passing_files_are_left_alone_and_broken_ones_refused() {
        let text = format!("block b {{\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
        assert!(fixed(&text).expect("compiles").is_empty());
        let err = fixed("block b {\n    out = x + mlp(y)\n}\n").expect_err("an unknown name");
        assert!(err.contains("errors"), "{err}");
    }

    /// A shaped attention whose queries are not zero is offered them (its
    /// softmax is then the centre, and with β = γ the attention is the
    /// identity at init), in place or as a new line.
    #[test]
    fn a_shaped_attention_is_offered_zero_queries() {
        let section = |query: &str| {
            format!("attention s {{\n{query}    value  = identity\n    matrix = alpha * I + beta * softmax - gamma * centre\n    param alpha = 1 trainable per_head\n    param beta  = 1 trainable per_head\n    param gamma = 1 trainable per_head\n}}\n\nblock b {{\n    out = attn(rmsnorm(x), s)\n}}\n")
        };
        for (query, expect) in
            [("    query  = fan_in(4)\n", "    query  = zeros\n"), ("", "    query = zeros\n    value")]
        {
            let text = section(query);
            let file = crate::syntax::parse(crate::span::FileId(0), &text).expect("parses");
            let all = changes(&file, &text, "b");
            let zero = all.iter().find(|c| c.what.starts_with("zero queries in `attention s`")).expect("offered");
            let after = apply(&text, &zero.edits);
            assert!(after.contains(expect), "{after}");
            assert!(crate::compile_str("m.blk", &after).program.is_some(), "the change compiles: {after}");
        }
        // Zero already: nothing to offer.
        let text = section("    query  = zeros\n");
        let file = crate::syntax::parse(crate::span::FileId(0), &text).expect("parses");
        assert!(!changes(&file, &text, "b").iter().any(|c| c.what.starts_with("zero queries")));
    }

    #[test]
    fn every_rejected_bare_block_is_fixed_in_turn() {
        let text = "block one {\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}\n\nblock two {\n    out = 8 * x + mlp(x)\n}\n\nblock fine {\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}\n";
        let out = fixed(text).expect("compiles");
        let blocks: Vec<&str> = out
            .iter()
            .map(|o| match o {
                Outcome::Fixed { block, .. } => block.as_str(),
                Outcome::NotFound { block, why, .. } => panic!("`{block}` not fixed: {why}"),
            })
            .collect();
        assert_eq!(blocks, ["one", "two"]);
        let Some(Outcome::Fixed { fix, .. }) = out.last() else { unreachable!() };
        assert!(
            fix.text.contains("h   = x + attn(rmsnorm(x))") && fix.text.contains("out = x + mlp(x)"),
            "{}",
            fix.text
        );
        assert!(passes(&fix.text), "the last fix's text has both changes");
    }

    /// A block from a `use`d file is fixed in that file, as the model that
    /// uses it analyses it (Post-LN passes in the small bare model, not at
    /// depth 72 and width 768).
    #[test]
    fn a_block_from_another_file_is_fixed_in_its_file() {
        let lib = "block postln {\n    h   = rmsnorm(x + attn(x))\n    out = rmsnorm(h + mlp(h))\n}\n";
        let model = "use \"lib.blk\"\n\nmodel {\n    block = postln\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
        let loader = MemLoader::default().with("lib.blk", lib).with("m.blk", model);
        assert!(fixed(lib).expect("compiles").is_empty(), "the bare block passes");
        let out = fix(Path::new("m.blk"), &loader, &[], &Request::default(), LONG).expect("compiles");
        let [Outcome::Fixed { block, fix, .. }] = &out[..] else { panic!("{out:?}") };
        assert_eq!((block.as_str(), fix.file.as_path()), ("postln", Path::new("lib.blk")));
        assert!(fix.text.starts_with("block postln {\n    param beta_"), "{}", fix.text);
        let after = MemLoader::default().with("lib.blk", &fix.text).with("m.blk", model);
        let again = fix_with(&after);
        assert!(again.is_empty(), "the model passes with the fixed file: {again:?}");
    }

    fn fix_with(loader: &MemLoader) -> Vec<Outcome> {
        fix(Path::new("m.blk"), loader, &[], &Request::default(), LONG).expect("compiles")
    }

    #[test]
    fn a_block_on_one_line_gets_its_new_gain_on_that_line() {
        let text = "block b { h = rmsnorm(x + attn(x)) out = rmsnorm(h + mlp(h)) }\nmodel {\n    block = b\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
        assert!(!passes(text));
        let (changes, after, _) = only(text);
        assert!(changes[0].starts_with("down-weight"), "{changes:?}");
        assert!(after.starts_with("block b { param beta_"), "{after}");
        assert!(passes(&after));
    }

    #[test]
    fn the_search_stops_at_its_budget() {
        let text = format!("block b {{\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
        let loader = MemLoader::default().with("m.blk", &text);
        let out =
            fix(Path::new("m.blk"), &loader, &[], &Request::default(), std::time::Duration::ZERO).expect("compiles");
        match &out[..] {
            [Outcome::NotFound { why, tried, .. }] => {
                assert!(why.contains("time allowed"), "{why}");
                assert_eq!(*tried, 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edits_apply_in_order_and_diffs_show_the_changed_lines() {
        let text = "a\nb\nc\nd\ne\n";
        let edits = [Edit { start: 2, end: 3, text: "B".into() }, Edit::insert(6, "x\n")];
        let after = apply(text, &edits);
        assert_eq!(after, "a\nB\nc\nx\nd\ne\n");
        let d = diff(text, &after, 0);
        let shown: Vec<String> =
            d.iter().map(|o| o.as_ref().map_or("…".into(), |(_, _, m, t)| format!("{m}{t}"))).collect();
        assert_eq!(shown, ["-b", "+B", "…", "+x"]);
        assert!(diff(text, text, 1).is_empty());
    }
}
