//! The outline of a file (document symbols) and the verdict written
//! beside each analysed block (inlay hints).

use blkc::span::FileId;
use blkc::syntax::ast::{Item, SectionKind, Stmt};
use lsp_types::{DocumentSymbol, InlayHint, InlayHintKind, InlayHintLabel, SymbolKind};

use crate::analysis::Analysis;
use crate::hover::{report, verdict_line};
use crate::index::DefKind;

/// The root file's items, each with its params, bindings and settings.
pub fn outline(a: &Analysis) -> Vec<DocumentSymbol> {
    let Some((_, file)) = a.compilation.files.iter().find(|(id, _)| *id == FileId(0)) else { return Vec::new() };
    file.items
        .iter()
        .map(|item| {
            let (name, kind, detail, body, span, at) = match item {
                Item::Use(u) => {
                    return symbol(a, &u.path.value, SymbolKind::FILE, Some("use"), u.span, u.path.span, Vec::new())
                }
                Item::Block(b) => (b.name.name.clone(), SymbolKind::CLASS, "block", &b.body, b.span, b.name.span),
                Item::Section(s) => {
                    let kind = match s.kind {
                        SectionKind::Attention | SectionKind::Mlp => SymbolKind::MODULE,
                        SectionKind::Model | SectionKind::Train => SymbolKind::NAMESPACE,
                    };
                    let name = s.name.as_ref().map_or_else(|| s.kind.keyword().to_string(), |n| n.name.clone());
                    let at = s.name.as_ref().map_or(s.span, |n| n.span);
                    (name, kind, s.kind.keyword(), &s.body, s.span, at)
                }
            };
            let children = statements(a, body);
            symbol(a, &name, kind, Some(detail), span, at, children)
        })
        .collect()
}

fn statements(a: &Analysis, body: &[Stmt]) -> Vec<DocumentSymbol> {
    body.iter()
        .map(|s| match s {
            Stmt::Param(p) => {
                symbol(a, &p.name.name, SymbolKind::CONSTANT, Some("param"), p.span, p.name.span, Vec::new())
            }
            Stmt::Assign(x) => symbol(a, &x.name.name, SymbolKind::FIELD, None, x.span, x.name.span, Vec::new()),
            Stmt::Layer(l) => {
                let at = l.selectors.first().map_or(l.span, |(_, s)| *s);
                let name = format!(
                    "layer {}",
                    a.compilation.sources.get(at.file).text.get(at.start as usize..at.end as usize).unwrap_or("")
                );
                symbol(a, &name, SymbolKind::NAMESPACE, None, l.span, at, statements(a, &l.body))
            }
        })
        .collect()
}

#[allow(deprecated)] // `deprecated` is a required field of lsp-types 0.95's DocumentSymbol
fn symbol(
    a: &Analysis,
    name: &str,
    kind: SymbolKind,
    detail: Option<&str>,
    whole: blkc::span::Span,
    at: blkc::span::Span,
    children: Vec<DocumentSymbol>,
) -> DocumentSymbol {
    DocumentSymbol {
        name: if name.is_empty() { "·".to_string() } else { name.to_string() },
        detail: detail.map(str::to_string),
        kind,
        tags: None,
        deprecated: None,
        range: a.range(whole),
        selection_range: a.range(at),
        children: (!children.is_empty()).then_some(children),
    }
}

/// `pass · cos 0.200 at layer 6` after the name of each analysed block of
/// the root file.
pub fn hints(a: &Analysis) -> Vec<InlayHint> {
    a.index
        .defs
        .iter()
        .filter(|d| d.kind == DefKind::Block && d.parent.is_none() && d.span.file == FileId(0))
        .filter_map(|d| {
            let r = report(a, &d.name)?;
            Some(InlayHint {
                position: a.range(d.span).end,
                label: InlayHintLabel::String(verdict_line(r)),
                kind: Some(InlayHintKind::TYPE),
                text_edits: None,
                tooltip: None,
                padding_left: Some(true),
                padding_right: Some(true),
                data: None,
            })
        })
        .collect()
}
