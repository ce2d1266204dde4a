//! `--set KEY=VALUE` from a command line: a model setting (`depth`,
//! `width`, …), a param of the program (`beta_ff`, every param of that
//! name) or a setting of a named attention or MLP section
//! (`SECTION.KEY`: `local.window`, `swiglu.width`) given another value
//! than the file's, before the program is checked — so a value set on the
//! command line is checked by exactly the rules of one written in the
//! file, and its diagnostics point into `<command line>`.
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
use crate::span::{FileId, Span};
use crate::syntax::ast::{Assign, File, Ident, Item, Section, SectionKind, Stmt};
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
    // One line per pair, as diagnostics show them. The parser reads the
    // same lines with a section's name and its dot blanked (`local.window`
    // is read as `window`), so that spans are those of the text shown.
    let mut text = String::from("model {\n");
    let mut parsed_text = text.clone();
    let mut lines = Vec::new();
    for p in pairs {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let (k, v) = (k.trim(), v.trim());
        let start = text.len();
        let section = k.split_once('.').map(|(name, _)| (start + 4, name.len()));
        text.push_str(&format!("    {k} = {v}\n"));
        let blank = section.map_or(0, |(_, n)| n + 1);
        parsed_text.push_str(&format!("    {}{} = {v}\n", " ".repeat(blank), &k[blank..]));
        lines.push((start..text.len(), section));
    }
    text.push_str("}\n");
    parsed_text.push_str("}\n");
    let id = loaded.sources.add(ORIGIN, PathBuf::from(ORIGIN), &text);
    let parsed = match parse(id, &parsed_text) {
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
        // The section a `SECTION.KEY` names, from the line the setting is on.
        let at = a.span.start as usize;
        let named = lines.iter().find(|(line, _)| line.contains(&at)).and_then(|(_, s)| *s).map(|(start, n)| Ident {
            name: text[start..start + n].to_string(),
            span: Span::new(id, start, start + n),
        });
        let key = a.name.name.as_str();
        if let Some(name) = named.as_ref().filter(|n| n.name.is_empty()) {
            diags.push(
                Diagnostic::new(
                    Code::E2007,
                    Span::new(id, name.span.start as usize, name.span.start as usize + 1),
                    "no section before the dot",
                )
                .label("a section's name goes here")
                .help(
                    "`--set SECTION.KEY=VALUE` sets a named `attention` or `mlp` section, e.g. `--set local.window=64`",
                ),
            );
        } else if let Some(name) = named {
            set_section(loaded, &name, a, diags);
        } else if vocabulary::settings(SectionKind::Model).contains(&key) {
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

/// Sets `a` in every attention or MLP section called `name`: the setting
/// of that name (added when the section has none), or the section's param
/// of that name. Its layer overrides are left as they are. The checker
/// then holds the value to the section's rules.
fn set_section(loaded: &mut Loaded, name: &Ident, a: Assign, diags: &mut Vec<Diagnostic>) {
    let settable = |s: &Section| matches!(s.kind, SectionKind::Attention | SectionKind::Mlp);
    let mut found = 0;
    for item in loaded.files.iter_mut().flat_map(|f| f.items.iter_mut()) {
        let Item::Section(s) = item else { continue };
        if !settable(s) || s.name.as_ref().is_none_or(|n| n.name != name.name) {
            continue;
        }
        found += 1;
        let existing = s.body.iter_mut().find_map(|stmt| match stmt {
            Stmt::Assign(x) if x.name.name == a.name.name => Some(&mut x.value),
            Stmt::Param(p) if p.name.name == a.name.name => Some(&mut p.value),
            _ => None,
        });
        match existing {
            Some(value) => *value = a.value.clone(),
            None => s.body.push(Stmt::Assign(a.clone())),
        }
    }
    if found > 0 {
        return;
    }
    let sections: Vec<&str> = loaded
        .files
        .iter()
        .flat_map(|f| &f.items)
        .filter_map(|i| match i {
            Item::Section(s) if settable(s) => s.name.as_ref().map(|n| n.name.as_str()),
            _ => None,
        })
        .collect();
    let d = Diagnostic::new(Code::E2007, name.span, format!("no attention or MLP section `{}`", name.name))
        .label("not in this program");
    diags.push(match did_you_mean(&name.name, sections.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None if sections.is_empty() => {
            d.help("`--set SECTION.KEY=VALUE` sets a named `attention` or `mlp` section; this program has none")
        }
        None => d.help(format!("`--set SECTION.KEY=VALUE` sets a named section: {}", sections.join(", "))),
    });
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
        None => d.help(format!(
            "`--set` takes a model setting, a param of the program ({}) or a section's setting (`SECTION.KEY`)",
            known.join(", ")
        )),
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

    const SECTIONS: &str = "attention local {\n    window = 32\n    matrix = a * I + softmax\n    param a = 0.5\n}\n\
        mlp wide {\n    width = 4\n}\n\
        block b {\n    out = x + attn(rmsnorm(x), local) + mlp(rmsnorm(x), wide)\n}\n";

    /// The program as JSON, where the sections' settings show.
    fn json(c: crate::Compilation) -> String {
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        serde_json::to_string(&c.program.unwrap_or_else(|| panic!("does not compile"))).unwrap_or_default()
    }

    #[test]
    fn a_sections_setting_takes_the_value() {
        assert!(json(compiled(SECTIONS, &[])).contains("\"window\":32"));
        // Replaced, added (`kv_heads` is not written), and a section's param.
        let set = json(compiled(SECTIONS, &["local.window=8", "local.kv_heads = 2", "wide.width=2", "local.a=0.25"]));
        assert!(set.contains("\"window\":8") && !set.contains("\"window\":32"), "{set}");
        assert!(set.contains("\"kv_heads\":2"), "{set}");
        assert!(set.contains("\"width\":2.0") && !set.contains("\"width\":4.0"), "{set}");
        assert!(set.contains("\"init\":{\"Const\":0.25}"), "{set}");
        // `none` is a window's value too: no window.
        assert!(!json(compiled(SECTIONS, &["local.window=none"])).contains("\"window\""));
    }

    #[test]
    fn a_bad_sections_setting_is_located_in_the_command_line() {
        let origin = |c: &crate::Compilation| c.sources.get(c.diagnostics[0].span.file).name.clone();
        // No such section: the name is pointed at, with the nearest one.
        let c = compiled(SECTIONS, &["depth=3", "locl.window=8"]);
        let d = &c.diagnostics[0];
        assert_eq!((d.code, origin(&c)), (Code::E2007, ORIGIN.to_string()));
        assert!(d.message.contains("`locl`") && d.help.contains("`local`"), "{d:?}");
        let shown = &c.sources.get(d.span.file).text[d.span.start as usize..d.span.end as usize];
        assert_eq!(shown, "locl");
        // A value the section refuses, by the section's own rule (E2015: a
        // window of 0), and a key it does not have.
        let c = compiled(SECTIONS, &["local.window=0"]);
        assert!(c.has_errors() && origin(&c) == ORIGIN, "{:?}", c.diagnostics);
        assert_eq!(c.diagnostics[0].code, Code::E2015);
        let c = compiled(SECTIONS, &["local.windw=8"]);
        assert!(c.has_errors() && origin(&c) == ORIGIN, "{:?}", c.diagnostics);
        let c = compiled(SECTIONS, &[".window=8"]);
        assert!(c.diagnostics[0].message.contains("no section before the dot"), "{:?}", c.diagnostics);
        // A block or the model is not a section to set.
        let c = compiled(SECTIONS, &["b.out=x"]);
        assert!(c.diagnostics[0].message.contains("no attention or MLP section `b`"), "{:?}", c.diagnostics);
        // A value the model does not fit (3 key/value heads of the small
        // model's 4), a rule checked where the section is used: the error
        // is at the attention's call, its note at the command line's value.
        let c = compiled(SECTIONS, &["depth=3", "local.kv_heads=3"]);
        let d = &c.diagnostics[0];
        assert_eq!((d.code, c.sources.get(d.span.file).name.as_str()), (Code::E2013, "b.blk"), "{d:?}");
        let (at, text) = d.notes.first().unwrap_or_else(|| panic!("no note: {d:?}"));
        assert_eq!(c.sources.get(at.file).name, ORIGIN);
        assert_eq!(&c.sources.get(at.file).text[at.start as usize..at.end as usize], "kv_heads = 3", "added whole");
        assert!(text.contains("set here"), "{text}");
    }

    /// Where a model setting was written (what a later diagnostic points
    /// at, as `vocab` against the tokenizer's): the whole setting in its
    /// file, or, set from the command line, the value there (the name
    /// stays the file's: a span over both would mix two files).
    #[test]
    fn a_settings_place_is_its_value_on_the_command_line() {
        let text = format!(
            "{FILE}model m {{\n    block = b\n    depth = 2\n    width = 64\n    heads = 4\n    vocab = 300\n}}\n"
        );
        let shown = |c: &crate::Compilation, key: &str| {
            let m = c.program.as_ref().and_then(|p| p.model.as_ref()).unwrap_or_else(|| panic!("{:?}", c.diagnostics));
            let at = m.span_of(key);
            let file = c.sources.get(at.file);
            (file.name.clone(), file.text[at.start as usize..at.end as usize].to_string())
        };
        let c = compiled(&text, &[]);
        assert_eq!(shown(&c, "vocab"), ("b.blk".to_string(), "vocab = 300".to_string()));
        let c = compiled(&text, &["vocab=512"]);
        assert_eq!(shown(&c, "vocab"), (ORIGIN.to_string(), "512".to_string()));
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
