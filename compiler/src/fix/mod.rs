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
use crate::syntax::ast::File;

mod changes;
#[cfg(test)]
mod tests;
mod text;

pub use changes::changes;
pub use text::{apply, diff};

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
