//! Collects the definitions of every loaded file into one namespace per
//! kind (blocks, attention sections, mlp sections) and reports duplicates.

use std::collections::BTreeMap;

use super::sections::duplicate;
use crate::diag::{Code, Diagnostic};
use crate::span::Span;
use crate::syntax::ast::{Block, File, Item, Section, SectionKind};

/// Every definition, by name.
#[derive(Default)]
pub struct Defs<'a> {
    pub blocks: BTreeMap<&'a str, &'a Block>,
    /// Blocks in source order (files in load order).
    pub block_order: Vec<&'a Block>,
    pub attention: BTreeMap<&'a str, &'a Section>,
    pub mlp: BTreeMap<&'a str, &'a Section>,
    pub model: Option<&'a Section>,
    /// Every `train` section, used files first: later settings win.
    pub train: Vec<&'a Section>,
    /// The `use`s whose files were not loaded (see [`Loaded::unread`](crate::load::Loaded::unread)).
    pub unread: &'a [Span],
}

impl Defs<'_> {
    /// `d`, about a block or section that is not defined, with a note at
    /// each `use` whose file was not loaded: it may be defined there, so
    /// that the error is read as the other's consequence.
    pub fn perhaps_unread(&self, d: Diagnostic, name: &str) -> Diagnostic {
        self.unread.iter().fold(d, |d, span| d.note(*span, format!("not loaded: `{name}` may be defined there")))
    }
}

pub fn collect<'a>(files: &'a [File], unread: &'a [Span], diags: &mut Vec<Diagnostic>) -> Defs<'a> {
    let mut defs = Defs { unread, ..Defs::default() };
    for item in files.iter().flat_map(|f| &f.items) {
        match item {
            Item::Use(_) => {}
            Item::Block(b) => {
                if let Some(prev) = defs.blocks.get(b.name.name.as_str()) {
                    diags.push(duplicate(&b.name, prev.name.span, "block"));
                } else {
                    defs.blocks.insert(&b.name.name, b);
                    defs.block_order.push(b);
                }
            }
            Item::Section(s) => section(&mut defs, s, diags),
        }
    }
    defs
}

fn section<'a>(defs: &mut Defs<'a>, s: &'a Section, diags: &mut Vec<Diagnostic>) {
    let header = crate::span::Span { end: s.span.start + s.kind.keyword().len() as u32, ..s.span };
    if s.body.len() > super::MAX_STATEMENTS {
        diags.push(
            Diagnostic::new(
                Code::E2016,
                header,
                format!("`{}` section with more than {} statements", s.kind.keyword(), super::MAX_STATEMENTS),
            )
            .label("too large")
            .help("a section holds a few settings; split generated content out"),
        );
        return;
    }
    match s.kind {
        SectionKind::Attention | SectionKind::Mlp => {
            let Some(name) = &s.name else {
                let kw = s.kind.keyword();
                let call = if s.kind == SectionKind::Mlp { "mlp" } else { "attn" };
                diags.push(
                    Diagnostic::new(Code::E2017, header, format!("`{kw}` section without a name"))
                        .label("needs a name")
                        .help(format!("name it so blocks can use it: `{kw} NAME {{ … }}`, then `{call}(n, NAME)`")),
                );
                return;
            };
            let map = if s.kind == SectionKind::Attention { &mut defs.attention } else { &mut defs.mlp };
            if let Some(prev) = map.get(name.name.as_str()) {
                let first = prev.name.as_ref().map_or(prev.span, |n| n.span);
                diags.push(duplicate(name, first, s.kind.keyword()));
            } else {
                map.insert(&name.name, s);
            }
        }
        SectionKind::Train => defs.train.push(s),
        SectionKind::Model => {
            let slot = &mut defs.model;
            match slot {
                Some(prev) => {
                    let kw = s.kind.keyword();
                    diags.push(
                        Diagnostic::new(Code::E2018, header, format!("more than one `{kw}` section"))
                            .label(format!("second `{kw}`"))
                            .note(
                                crate::span::Span { end: prev.span.start + kw.len() as u32, ..prev.span },
                                "first one here",
                            )
                            .help(format!("a program has one `{kw}`; put other variants in their own files")),
                    );
                }
                None => *slot = Some(s),
            }
        }
    }
}
