//! Renaming a block, a section, a param or a binding: every occurrence the
//! index resolves to it, in the programs of every open document, replaced
//! by the new name. Refused when the new name is not one the language
//! takes there (a keyword, a malformed name), or when the renamed programs
//! would read differently: a compile error they did not have, or a name
//! that now means the renamed one although it did not (a built-in such as
//! `x`, another definition) — both found by compiling the renamed text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use blkc::span::Span;

use crate::analysis::{Analysis, Options};
use crate::index::{DefKind, Target};
use crate::workspace::{uri_of, Document, Documents};

/// The definition whose name is under byte `offset` of `a`'s root file.
pub fn target(a: &Analysis, offset: u32) -> Result<usize, String> {
    let o = a.index.at(blkc::span::FileId(0), offset).ok_or("no name here to rename")?;
    match o.target {
        Target::Def(i) => Ok(i),
        Target::Setting(_) => Err(format!("`{}` is a setting of the language; it cannot be renamed", o.name)),
        Target::Builtin => Err(format!("`{}` is built into the language; it cannot be renamed", o.name)),
        Target::Unknown => Err(format!("`{}` is not defined; there is nothing to rename", o.name)),
    }
}

/// Where a definition is: its file and the start of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    path: PathBuf,
    start: u32,
}

fn place(a: &Analysis, span: Span) -> Place {
    Place { path: a.compilation.sources.get(span.file).path.clone(), start: span.start }
}

/// The definition at `at` in `a`, and how many occurrences it has.
fn uses_of(a: &Analysis, at: &Place) -> Option<(usize, usize)> {
    let file = a.file(&at.path)?;
    let j = a.index.defs.iter().position(|d| d.span.file == file && d.span.start == at.start)?;
    Some((j, a.index.uses(j).count()))
}

/// The byte ranges to replace, by file, for renaming definition `def` of
/// `a`, in `a`'s program and every other one in `others` that holds it.
pub fn occurrences(a: &Analysis, def: usize, others: &[&Analysis]) -> BTreeMap<PathBuf, Vec<(u32, u32)>> {
    let at = place(a, a.index.defs[def].span);
    let mut out: BTreeMap<PathBuf, Vec<(u32, u32)>> = BTreeMap::new();
    for other in std::iter::once(a).chain(others.iter().copied()) {
        let Some((j, _)) = uses_of(other, &at) else { continue };
        for o in other.index.uses(j) {
            let path = other.compilation.sources.get(o.span.file).path.clone();
            let spans = out.entry(path).or_default();
            if !spans.contains(&(o.span.start, o.span.end)) {
                spans.push((o.span.start, o.span.end));
            }
        }
    }
    for spans in out.values_mut() {
        spans.sort_unstable();
    }
    out
}

/// Whether `name` is a name the language takes for a definition (the
/// parser says; its keywords are keywords by place only).
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return false;
    }
    // Keywords are refused by the parser where a name must stand.
    let (_, parsed) =
        blkc::load::load_text("name", &format!("block {name} {{\n    param {name} = 1\n    out = x\n}}\n"));
    parsed.is_ok()
}

/// `text` with the byte ranges `spans` (sorted, apart) replaced by `new`.
fn replaced(text: &str, spans: &[(u32, u32)], new: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(start, end) in spans {
        out.push_str(text.get(at..start as usize)?);
        out.push_str(new);
        at = end as usize;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

/// Checks that renaming definition `def` of `a` to `new` (at the ranges
/// `edits` of the files' `texts`) leaves the programs of `roots` reading
/// as before: no new error, and the renamed definition used exactly where
/// it was.
pub fn check(
    a: &Analysis,
    def: usize,
    new: &str,
    edits: &BTreeMap<PathBuf, Vec<(u32, u32)>>,
    texts: &BTreeMap<PathBuf, String>,
    roots: &[PathBuf],
    docs: &Documents,
) -> Result<(), String> {
    let d = &a.index.defs[def];
    if !is_name(new) {
        return Err(format!("`{new}` is not a name the language takes (letters, digits and `_`, not a keyword)"));
    }
    if new == d.name {
        return Ok(());
    }
    let mut edited = docs.clone();
    for (path, spans) in edits {
        let text = texts.get(path).ok_or("a file without its text")?;
        let (uri, version) = match docs.get(path) {
            Some(doc) => (doc.uri.clone(), doc.version),
            None => (uri_of(path, docs).ok_or("a file without a URL")?, 0),
        };
        let text = replaced(text, spans, new).ok_or("the document changed under the rename")?;
        edited.open(Document { uri, text, version });
    }
    let at = place(a, d.span);
    let before_def = edits.get(&at.path).map_or(0, |s| s.iter().filter(|(start, _)| *start < at.start).count());
    let shift = (new.len() as i64 - d.name.len() as i64) * before_def as i64;
    let moved = Place { path: at.path.clone(), start: (i64::from(at.start) + shift) as u32 };
    let syntax = Options { depth: None, syntax_only: true };
    for root in roots {
        let (Some(before), Some(after)) = (Analysis::of(root, docs, syntax), Analysis::of(root, &edited, syntax))
        else {
            continue;
        };
        let errors = |x: &Analysis| x.compilation.diagnostics.iter().filter(|d| d.is_error()).count();
        if errors(&after) > errors(&before) {
            // The error the rename brings (not one the program had).
            let had = |e: &blkc::Diagnostic| {
                before.compilation.diagnostics.iter().any(|b| b.code == e.code && b.message == e.message)
            };
            let first =
                after.compilation.diagnostics.iter().find(|e| e.is_error() && !had(e)).map(|e| e.message.clone());
            return Err(format!("renaming `{}` to `{new}` would not compile: {}", d.name, first.unwrap_or_default()));
        }
        let used = uses_of(&before, &at).map(|u| u.1);
        if used.is_some() && uses_of(&after, &moved).map(|u| u.1) != used {
            let what = match d.kind {
                DefKind::Block => "block",
                DefKind::Section(_) => "section",
                DefKind::Param => "param",
                DefKind::Binding => "binding",
            };
            return Err(format!(
                "`{new}` already means something where the {what} `{}` is used (a built-in or another \
                 definition): renaming would change what the program says",
                d.name
            ));
        }
    }
    Ok(())
}

/// The roots of the analyses whose programs hold `path`.
pub fn roots_holding(path: &Path, analyses: &[&Analysis]) -> Vec<PathBuf> {
    analyses.iter().filter(|x| x.file(path).is_some()).map(|x| x.root.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_digits_and_underscores_but_not_keywords() {
        for good in ["beta", "_b2", "h_mid", "alpha_ff"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "2b", "a-b", "a b", "é"] {
            assert!(!is_name(bad), "{bad}");
        }
        assert_eq!(replaced("ab ab", &[(0, 2), (3, 5)], "xyz").as_deref(), Some("xyz xyz"));
        assert_eq!(replaced("ab", &[(0, 9)], "x"), None);
    }
}
