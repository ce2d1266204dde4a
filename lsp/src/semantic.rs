//! Semantic tokens: every name of the root file coloured by what it is —
//! a block, a section, a param, a binding, a setting key, a built-in
//! function or variable — from the same index that answers hovers and
//! references. The editor's TextMate grammar colours the rest.

use blkc::span::FileId;
use blkc::syntax::ast::SectionKind;
use lsp_types::{SemanticToken, SemanticTokenModifier, SemanticTokenType, SemanticTokensLegend};

use crate::analysis::Analysis;
use crate::index::{DefKind, Target};

/// The token types, in the legend's order.
const TYPES: [SemanticTokenType; 7] = [
    SemanticTokenType::CLASS,     // a block
    SemanticTokenType::TYPE,      // an attention or mlp section
    SemanticTokenType::NAMESPACE, // a model or train section
    SemanticTokenType::PARAMETER, // a param
    SemanticTokenType::VARIABLE,  // a binding, or a built-in variable
    SemanticTokenType::PROPERTY,  // a setting key
    SemanticTokenType::FUNCTION,  // a built-in function or module
];

/// The modifiers, in the legend's order (bits of a token's set).
const MODIFIERS: [SemanticTokenModifier; 2] =
    [SemanticTokenModifier::DECLARATION, SemanticTokenModifier::DEFAULT_LIBRARY];

pub fn legend() -> SemanticTokensLegend {
    SemanticTokensLegend { token_types: TYPES.to_vec(), token_modifiers: MODIFIERS.to_vec() }
}

/// The root file's names as semantic tokens (LSP's relative encoding).
pub fn tokens(a: &Analysis) -> Vec<SemanticToken> {
    let root = FileId(0);
    let text = &*a.compilation.sources.get(root).text;
    let lines = a.lines(root);
    let mut occurrences: Vec<_> = a.index.occurrences.iter().filter(|o| o.span.file == root).collect();
    occurrences.sort_by_key(|o| (o.span.start, o.span.end));
    occurrences.dedup_by_key(|o| o.span.start);
    let (mut line, mut column) = (0, 0);
    let mut out = Vec::with_capacity(occurrences.len());
    for o in occurrences {
        let (kind, modifiers) = match o.target {
            Target::Def(i) => {
                let d = &a.index.defs[i];
                let kind = match d.kind {
                    DefKind::Block => 0,
                    DefKind::Section(SectionKind::Attention | SectionKind::Mlp) => 1,
                    DefKind::Section(SectionKind::Model | SectionKind::Train) => 2,
                    DefKind::Param => 3,
                    DefKind::Binding => 4,
                };
                // (Spans compare equal whatever their place: the place here.)
                let declared = d.span.file == o.span.file && d.span.start == o.span.start;
                (kind, u32::from(declared))
            }
            Target::Setting(_) => (5, 0),
            Target::Builtin if o.call.as_deref() == Some(o.name.as_str()) => (6, 2),
            Target::Builtin => (4, 2),
            Target::Unknown => continue,
        };
        let (start, end) = (o.span.start as usize, o.span.end as usize);
        let Some(name) = text.get(start..end) else { continue };
        let at = lines.position(start);
        let delta_line = at.line - line;
        let delta_start = if delta_line == 0 { at.character - column } else { at.character };
        out.push(SemanticToken {
            delta_line,
            delta_start,
            length: name.encode_utf16().count() as u32,
            token_type: kind,
            token_modifiers_bitset: modifiers,
        });
        (line, column) = (at.line, at.character);
    }
    out
}
