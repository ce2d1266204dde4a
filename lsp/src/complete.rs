//! Completion, from the text before the cursor (so it works while the
//! file does not parse): which section or block encloses the cursor,
//! whether it stands where a setting's name or its value goes, which call
//! it is an argument of. Names come from the analysis's index (the last
//! one that parsed).

use blkc::check::vocabulary;
use blkc::graph::Func;
use blkc::syntax::ast::SectionKind;
use lsp_types::{CompletionItem, CompletionItemKind};

use crate::analysis::Analysis;
use crate::index::DefKind;

/// Where the cursor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Outside every item.
    TopLevel,
    /// Where a statement starts, in a section of this kind.
    SettingName(SectionKind),
    /// After `key =` in a section.
    SettingValue(SectionKind, String),
    /// Where a statement starts in a block (named).
    BlockStatement(String),
    /// In an expression of a block; `call` is the innermost open call.
    BlockValue { block: String, call: Option<String> },
}

/// What the text before `offset` says about the cursor's place.
pub fn place(text: &str, offset: usize) -> Place {
    let before = &text[..text.floor_char_boundary(offset)];
    let code = strip_comments(before);
    let headers = open_headers(&code);
    let line = code.rsplit('\n').next().unwrap_or("");
    let enclosing = headers.iter().rev().find(|h| !h.starts_with("layer"));
    let Some(header) = enclosing else { return Place::TopLevel };
    let mut words = header.split_whitespace();
    let keyword = words.next().unwrap_or("");
    let name = words.next().unwrap_or("").to_string();
    let value = line.split_once('=').map(|(key, _)| key.split_whitespace().last().unwrap_or("").to_string());
    let kind = match keyword {
        "attention" => SectionKind::Attention,
        "mlp" => SectionKind::Mlp,
        "model" => SectionKind::Model,
        "train" => SectionKind::Train,
        "block" => {
            return match value {
                Some(_) => Place::BlockValue { block: name, call: open_call(line) },
                None => Place::BlockStatement(name),
            };
        }
        _ => return Place::TopLevel,
    };
    match value {
        Some(key) => Place::SettingValue(kind, key),
        None => Place::SettingName(kind),
    }
}

/// The items to offer at `offset`.
pub fn complete(text: &str, offset: usize, a: Option<&Analysis>) -> Vec<CompletionItem> {
    let item = |label: &str, kind: CompletionItemKind, detail: Option<&str>| CompletionItem {
        label: label.to_string(),
        kind: Some(kind),
        detail: detail.map(str::to_string),
        ..CompletionItem::default()
    };
    let globals = |kind: DefKind| -> Vec<String> {
        a.map(|a| {
            a.index.defs.iter().filter(|d| d.parent.is_none() && d.kind == kind).map(|d| d.name.clone()).collect()
        })
        .unwrap_or_default()
    };
    let mut items = Vec::new();
    match place(text, offset) {
        Place::TopLevel => {
            for k in ["use", "block", "attention", "mlp", "model", "train"] {
                items.push(item(k, CompletionItemKind::KEYWORD, None));
            }
        }
        Place::SettingName(kind) => {
            for key in vocabulary::settings(kind) {
                items.push(item(key, CompletionItemKind::PROPERTY, vocabulary::describe(kind, key)));
            }
            if matches!(kind, SectionKind::Attention | SectionKind::Mlp) {
                items.push(item("param", CompletionItemKind::KEYWORD, Some("a gain of this section")));
                items.push(item("layer", CompletionItemKind::KEYWORD, Some("settings for some layers only")));
            }
        }
        Place::SettingValue(kind, key) => {
            for v in vocabulary::values(kind, &key) {
                items.push(item(v, CompletionItemKind::ENUM_MEMBER, None));
            }
            if kind == SectionKind::Model && key == "block" {
                for b in globals(DefKind::Block) {
                    items.push(item(&b, CompletionItemKind::CLASS, Some("block")));
                }
            }
        }
        Place::BlockStatement(_) => {
            for k in ["param", "layer", "out"] {
                items.push(item(k, CompletionItemKind::KEYWORD, None));
            }
        }
        Place::BlockValue { block, call } => {
            let section = match call.as_deref() {
                Some("attn") => Some(DefKind::Section(SectionKind::Attention)),
                Some("mlp") => Some(DefKind::Section(SectionKind::Mlp)),
                _ => None,
            };
            if let Some(kind) = section {
                for s in globals(kind) {
                    items.push(item(&s, CompletionItemKind::MODULE, Some("section")));
                }
            }
            if let Some(a) = a {
                let me = a.index.global(&block, DefKind::Block);
                for d in a.index.defs.iter().filter(|d| me.is_some() && d.parent == me) {
                    let (kind, what) = match d.kind {
                        DefKind::Param => (CompletionItemKind::CONSTANT, "param"),
                        _ => (CompletionItemKind::VARIABLE, "binding"),
                    };
                    items.push(item(&d.name, kind, Some(what)));
                }
            }
            for r in vocabulary::reserved() {
                items.push(item(r, CompletionItemKind::VARIABLE, Some("built in")));
            }
            for m in vocabulary::modules() {
                items.push(item(m, CompletionItemKind::FUNCTION, Some("module")));
            }
            for f in Func::ALL {
                items.push(item(f.keyword(), CompletionItemKind::FUNCTION, Some("function")));
            }
        }
    }
    items
}

/// The text with `# …` comments blanked (strings kept: a `#` in a string
/// is not a comment).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut in_comment) = (false, false);
    for c in text.chars() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            '"' if !in_comment => in_string = !in_string,
            '#' if !in_string => in_comment = true,
            _ => {}
        }
        out.push(if in_comment { ' ' } else { c });
    }
    out
}

/// The headers (`block sas_p`, `layer first`, …) of the braces still open
/// at the end of `code`, outermost first.
fn open_headers(code: &str) -> Vec<String> {
    let mut open: Vec<usize> = Vec::new();
    for (i, c) in code.char_indices() {
        match c {
            '{' => open.push(i),
            '}' => {
                open.pop();
            }
            _ => {}
        }
    }
    open.iter()
        .map(|&i| {
            let before = &code[..i];
            let start = before.rfind(['{', '}', '\n']).map_or(0, |j| j + 1);
            before[start..].trim().to_string()
        })
        .collect()
}

/// The name of the innermost call still open on the line.
fn open_call(line: &str) -> Option<String> {
    let mut depth = 0i32;
    for (i, c) in line.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' if depth > 0 => depth -= 1,
            '(' => {
                let name: String = line[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return (!name.is_empty()).then_some(name);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Place {
        let offset = text.find('|').unwrap_or(text.len());
        place(&text.replace('|', ""), offset)
    }

    #[test]
    fn the_place_follows_braces_equals_and_calls() {
        assert_eq!(at("use \"x.blk\"\n|"), Place::TopLevel);
        assert_eq!(at("attention a {\n  qu|"), Place::SettingName(SectionKind::Attention));
        assert_eq!(at("attention a {\n  query = |"), Place::SettingValue(SectionKind::Attention, "query".into()));
        assert_eq!(
            at("attention a {\n  layer first { value = |"),
            Place::SettingValue(SectionKind::Attention, "value".into())
        );
        assert_eq!(
            at("model m { # a { brace in a comment\n  block = |"),
            Place::SettingValue(SectionKind::Model, "block".into())
        );
        assert_eq!(at("block b {\n  |"), Place::BlockStatement("b".into()));
        assert_eq!(
            at("block b {\n  out = x + attn(rmsnorm(x), |"),
            Place::BlockValue { block: "b".into(), call: Some("attn".into()) }
        );
        assert_eq!(
            at("block b {\n  out = x + attn(rmsnorm(x)) + |"),
            Place::BlockValue { block: "b".into(), call: None }
        );
        assert_eq!(at("block b { out = x }\n|"), Place::TopLevel);
    }
}
