//! `--set KEY=VALUE` from a command line: a model setting (`depth`,
//! `width`, …) or a param of the program (`beta_ff`, every param of that
//! name) given another value than the file's, before the program is
//! checked — so a value set on the command line is checked by exactly the
//! rules of one written in the file, and its diagnostics point into
//! `<command line>`.
//!
//! A file without a model whose root defines one block (a bare block) is
//! given the small CPU model as a `model` section, so its settings can be
//! changed the same way (`--set depth=12` trains or checks twelve blocks).
//! Training settings (`lr`, `steps`, …) are the runtime's to apply; here
//! they are refused with a note saying which commands take them.

use std::path::PathBuf;

use crate::check::vocabulary;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::graph::Model;
use crate::load::Loaded;
use crate::span::FileId;
use crate::syntax::ast::{Assign, File, Item, Section, SectionKind, Stmt};
use crate::syntax::parse;

/// The name diagnostics give the command line.
pub const ORIGIN: &str = "<command line>";

/// Whether `key` is one `--set` hands to the compiler (a model setting or
/// anything that is not a training setting).
pub fn is_program_key(key: &str) -> bool {
    !vocabulary::settings(SectionKind::Train).contains(&key)
}

/// Applies `pairs` (`KEY=VALUE`) to the loaded files; problems go to `diags`.
pub fn apply(loaded: &mut Loaded, pairs: &[String], diags: &mut Vec<Diagnostic>) {
    let mut text = String::from("model {\n");
    for p in pairs {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        text.push_str(&format!("    {} = {}\n", k.trim(), v.trim()));
    }
    text.push_str("}\n");
    let id = loaded.sources.add(ORIGIN, PathBuf::from(ORIGIN), &text);
    let parsed = match parse(id, &text) {
        Ok(f) => f,
        Err(ds) => {
            diags.extend(ds);
            return;
        }
    };
    let Some(Item::Section(section)) = parsed.items.into_iter().next() else { return };
    for stmt in section.body {
        let Stmt::Assign(a) = stmt else {
            diags.push(
                Diagnostic::new(Code::E2007, stmt.span(), "`--set` takes KEY=VALUE")
                    .label("not a setting")
                    .help("write a model setting or a param and its value, e.g. `--set depth=12`"),
            );
            continue;
        };
        let key = a.name.name.as_str();
        if vocabulary::settings(SectionKind::Model).contains(&key) {
            set_model(loaded, a, diags);
        } else if !is_program_key(key) {
            diags.push(
                Diagnostic::new(Code::E2007, a.name.span, format!("`{key}` is a training setting"))
                    .label("not a model setting or param")
                    .help("`blkc train` and `blkc compare` take training settings; this command has none to set"),
            );
        } else if !set_params(loaded, &a) {
            diags.push(unknown(loaded, &a));
        }
    }
}

/// Sets a model setting, in the program's `model` section or in the small
/// model given to a bare block.
fn set_model(loaded: &mut Loaded, a: Assign, diags: &mut Vec<Diagnostic>) {
    if model_section(loaded).is_none() {
        match small_model_for_bare_block(loaded) {
            Some((id, file)) => {
                loaded.files.push(file);
                loaded.ids.push(id);
            }
            None => {
                diags.push(
                    Diagnostic::new(Code::E2007, a.name.span, format!("no model to set `{}` in", a.name.name))
                        .label("the program has no `model` section")
                        .help("a file with one block gets the small model; with several, write a `model` section that names one"),
                );
                return;
            }
        }
    }
    let Some(model) = model_section(loaded) else { return };
    match model.body.iter_mut().find_map(|s| match s {
        Stmt::Assign(x) if x.name.name == a.name.name => Some(x),
        _ => None,
    }) {
        Some(existing) => existing.value = a.value,
        None => model.body.push(Stmt::Assign(a)),
    }
}

fn model_section(loaded: &mut Loaded) -> Option<&mut Section> {
    loaded.files.iter_mut().flat_map(|f| f.items.iter_mut()).find_map(|i| match i {
        Item::Section(s) if s.kind == SectionKind::Model => Some(s),
        _ => None,
    })
}

/// The small CPU model as a `model` section for the one block of the root
/// file (`None` when the root defines no block or several).
fn small_model_for_bare_block(loaded: &mut Loaded) -> Option<(FileId, File)> {
    let root = loaded.ids.iter().position(|id| id.0 == 0)?;
    let blocks: Vec<&str> = loaded.files[root]
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Block(b) => Some(b.name.name.as_str()),
            _ => None,
        })
        .collect();
    let [block] = blocks.as_slice() else { return None };
    let m = Model::small(0);
    let text = format!(
        "model small_{block} {{\n    block = {block}\n    depth = {}\n    width = {}\n    heads = {}\n    context = {}\n    vocab = {}\n}}\n",
        m.depth, m.width, m.heads, m.context, m.vocab
    );
    let id = loaded.sources.add("<small model>", PathBuf::from("<small model>"), &text);
    parse(id, &text).ok().map(|f| (id, f))
}

/// Gives every param named like `a` its value; whether there was one.
fn set_params(loaded: &mut Loaded, a: &Assign) -> bool {
    fn body(stmts: &mut [Stmt], a: &Assign) -> usize {
        let mut n = 0;
        for s in stmts {
            match s {
                Stmt::Param(p) if p.name.name == a.name.name => {
                    p.value = a.value.clone();
                    n += 1;
                }
                Stmt::Layer(l) => n += body(&mut l.body, a),
                _ => {}
            }
        }
        n
    }
    let mut n = 0;
    for item in loaded.files.iter_mut().flat_map(|f| f.items.iter_mut()) {
        n += match item {
            Item::Block(b) => body(&mut b.body, a),
            Item::Section(s) => body(&mut s.body, a),
            Item::Use(_) => 0,
        };
    }
    n > 0
}

fn unknown(loaded: &Loaded, a: &Assign) -> Diagnostic {
    fn params<'a>(stmts: &'a [Stmt], out: &mut Vec<&'a str>) {
        for s in stmts {
            match s {
                Stmt::Param(p) => out.push(&p.name.name),
                Stmt::Layer(l) => params(&l.body, out),
                Stmt::Assign(_) => {}
            }
        }
    }
    let mut known: Vec<&str> = vocabulary::settings(SectionKind::Model);
    for item in loaded.files.iter().flat_map(|f| &f.items) {
        match item {
            Item::Block(b) => params(&b.body, &mut known),
            Item::Section(s) => params(&s.body, &mut known),
            Item::Use(_) => {}
        }
    }
    let d = Diagnostic::new(Code::E2007, a.name.span, format!("no model setting or param `{}`", a.name.name))
        .label("not in this program");
    match did_you_mean(&a.name.name, known.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(format!("`--set` takes a model setting or a param of the program: {}", known.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile_with, MemLoader};
    use std::path::Path;

    const FILE: &str = "block b {\n    param g = 0.5 trainable\n    out = x + g * attn(rmsnorm(x))\n}\n";

    fn compiled(text: &str, sets: &[&str]) -> crate::Compilation {
        let loader = MemLoader::default().with("b.blk", text);
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        compile_with(Path::new("b.blk"), &loader, &sets).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_bare_block_gets_the_small_model_with_the_settings_given() {
        let c = compiled(FILE, &["depth=12", "width = 128"]);
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        let m = c.program.and_then(|p| p.model).unwrap_or_else(|| panic!("no model"));
        assert_eq!((m.name.as_deref(), m.depth, m.width, m.heads), (Some("small_b"), 12, 128, 4));
        // Unset, the settings are the small model's (as a bare block trains).
        let c = compiled(FILE, &["depth=6"]);
        let m = c.program.and_then(|p| p.model).unwrap_or_else(|| panic!("no model"));
        let small = Model::small(0);
        assert_eq!((m.depth, m.width, m.heads, m.context, m.vocab), (6, 256, 4, 128, 4096));
        assert_eq!(
            (m.mask, m.positions, m.final_norm, m.tied_embeddings),
            (small.mask, small.positions, small.final_norm, small.tied_embeddings)
        );
        assert_eq!(m.embed_init, small.embed_init);
    }

    #[test]
    fn a_param_takes_the_value_and_is_checked_like_the_files() {
        let c = compiled(FILE, &["g=0.25"]);
        let p = c.program.unwrap_or_else(|| panic!("does not compile"));
        let init = &p.blocks[0].base.params[0].init;
        assert_eq!(init.as_const(), Some(0.25));
        assert!(compiled(FILE, &["g=1/sqrt(depth)"]).program.is_some());
    }

    #[test]
    fn bad_sets_are_located_in_the_command_line() {
        let c = compiled(FILE, &["depht=12"]);
        let d = &c.diagnostics[0];
        assert_eq!((d.code, c.sources.get(d.span.file).name.as_str()), (Code::E2007, ORIGIN));
        assert!(d.help.contains("`depth`"), "{}", d.help);
        let c = compiled(FILE, &["heads=3"]);
        assert!(c.has_errors(), "3 heads do not divide 256");
        assert_eq!(c.sources.get(c.diagnostics[0].span.file).name, ORIGIN);
        let c = compiled(FILE, &["lr=3e-4"]);
        assert!(c.diagnostics[0].message.contains("training setting"));
        let c = compiled(FILE, &["depth="]);
        assert!(c.has_errors());
        let two = "block a { out = x }\nblock b { out = x }\n";
        assert!(compiled(two, &["depth=3"]).diagnostics[0].message.contains("no model"));
    }
}
