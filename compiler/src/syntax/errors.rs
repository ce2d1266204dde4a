//! Syntax errors in human words.
//!
//! A delimiter and character pre-scan runs before pest, so unclosed braces,
//! unterminated strings and stray characters are each reported at the place
//! that caused them (pest would report where it gave up). pest's own error
//! is translated so that a user never sees a grammar rule's name.

use pest::error::{Error, ErrorVariant, InputLocation};

use super::parse::{describe, GrammarRule as Rule};
use crate::diag::{Code, Diagnostic};
use crate::span::{FileId, Span};

/// Most stray-character diagnostics reported for one file.
const MAX_STRAY: usize = 20;

/// Most operators in one expression (between two `=`, `,` or braces): keeps
/// expression trees shallow enough for every recursive pass.
pub const MAX_OPERATORS: usize = 256;

/// Finds unterminated strings, unbalanced delimiters and characters that
/// cannot start a token. Comments and strings are skipped.
pub fn prescan(file: FileId, text: &str) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut stray = 0;
    let mut ops = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if "={},".contains(c) {
            ops = 0;
        } else if "+-*/^".contains(c) {
            ops += 1;
            if ops > MAX_OPERATORS {
                diags.push(too_complex(file, i, &format!("more than {MAX_OPERATORS} operators in one expression")));
                return diags;
            }
        }
        if open.len() >= super::MAX_NESTING && "{(".contains(c) {
            diags.push(too_complex(file, i, &format!("more than {} nested brackets", super::MAX_NESTING)));
            return diags;
        }
        match c {
            '#' => skip_line(&mut chars),
            '"' => {
                if let Err(end) = skip_string(&mut chars, text.len()) {
                    diags.push(
                        Diagnostic::new(Code::E1002, Span::new(file, i, end), "unterminated string")
                            .label("this string has no closing `\"`")
                            .help("close the string with `\"` on the same line"),
                    );
                }
            }
            '{' | '(' => open.push((c, i)),
            '}' | ')' => close(file, &mut open, &mut diags, c, i),
            c if c.is_ascii_alphanumeric() || c.is_whitespace() || "_=+-*/^,.".contains(c) => {}
            c => {
                stray += 1;
                if stray <= MAX_STRAY {
                    diags.push(stray_char(file, i, c));
                }
            }
        }
    }
    for (c, i) in open {
        let closer = if c == '{' { '}' } else { ')' };
        diags.push(
            Diagnostic::new(Code::E1003, Span::new(file, i, i + 1), format!("unclosed `{c}`"))
                .label("opened here and never closed")
                .help(format!("add the matching `{closer}`")),
        );
    }
    diags
}

fn too_complex(file: FileId, i: usize, what: &str) -> Diagnostic {
    Diagnostic::new(Code::E1001, Span::new(file, i, i + 1), format!("expression too complex: {what}"))
        .label("limit reached here")
        .help("split the expression into named bindings or params")
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::CharIndices>) {
    while chars.next_if(|&(_, c)| c != '\n').is_some() {}
}

/// Skips to the closing quote; on failure returns where the string ends.
fn skip_string(chars: &mut std::iter::Peekable<std::str::CharIndices>, len: usize) -> Result<(), usize> {
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(()),
            '\\' => {
                chars.next_if(|&(_, c)| c != '\n');
            }
            '\n' => return Err(i),
            _ => {}
        }
    }
    Err(len)
}

fn close(file: FileId, open: &mut Vec<(char, usize)>, diags: &mut Vec<Diagnostic>, c: char, i: usize) {
    let want = if c == '}' { '{' } else { '(' };
    let Some(depth) = open.iter().rposition(|&(o, _)| o == want) else {
        diags.push(
            Diagnostic::new(Code::E1004, Span::new(file, i, i + 1), format!("unmatched `{c}`"))
                .label("nothing is open here")
                .help(format!("remove it, or add the `{want}` it closes")),
        );
        return;
    };
    // Everything opened after the matching delimiter was never closed.
    for (o, at) in open.drain(depth + 1..) {
        let closer = if o == '{' { '}' } else { ')' };
        diags.push(
            Diagnostic::new(Code::E1003, Span::new(file, at, at + 1), format!("unclosed `{o}`"))
                .label("opened here and never closed")
                .note(Span::new(file, i, i + 1), format!("`{c}` reached before `{closer}`"))
                .help(format!("add the matching `{closer}`")),
        );
    }
    open.pop();
}

fn stray_char(file: FileId, i: usize, c: char) -> Diagnostic {
    let hint = match c {
        ';' => "statements end at the end of the line; remove the `;`".to_string(),
        ':' => "settings are written `name = value`".to_string(),
        '[' | ']' => "lists are not part of the language; write one value".to_string(),
        '\'' => "strings use double quotes: \"…\"".to_string(),
        _ => "remove it; only names, numbers, strings and `{ } ( ) = + - * / ^ , .` are allowed".to_string(),
    };
    Diagnostic::new(Code::E1006, Span::new(file, i, i + c.len_utf8()), format!("unexpected character `{c}`"))
        .label("not allowed here")
        .help(hint)
}

/// Where an item that starts with a keyword fails, parsed alone: the
/// offset in the item's text and the tokens that would continue it there.
pub type ItemError = fn(&str, &str) -> Option<(usize, Vec<String>)>;

/// The words that start an item.
const ITEMS: &[&str] = &["use", "block", "attention", "mlp", "model", "train"];

/// Turns pest's error into a diagnostic with plain words. An error at the
/// start of an item (`model m-1 {`: pest gave up on the item and reports
/// where it began) is reported where the item itself fails (`item`).
pub fn translate(file: FileId, text: &str, e: &Error<Rule>, item: ItemError) -> Diagnostic {
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let pos = pos + text.get(pos..).map_or(0, |r| r.len() - r.trim_start().len());
    if let Some(d) = in_a_statement(file, text, pos) {
        return d;
    }
    let found = token_at(text, pos);
    if ITEMS.contains(&found) {
        if let Some((at, tokens)) = text.get(pos..).and_then(|rest| item(found, rest)) {
            return inside_item(file, text, pos + at, &tokens);
        }
    }
    at_position(file, text, pos, e)
}

/// The token at `pos` (past whitespace), its span, and how a message names
/// it.
fn found_at(file: FileId, text: &str, pos: usize) -> (&str, Span, String) {
    let pos = pos + text.get(pos..).map_or(0, |r| r.len() - r.trim_start().len());
    let found = token_at(text, pos);
    let span = Span::new(file, pos, pos + found.len().max(1).min(text.len().saturating_sub(pos).max(1)));
    let words = if found.is_empty() { "end of file".to_string() } else { format!("`{found}`") };
    (found, span, words)
}

/// The diagnostic of an item that fails at `pos`, where one of `tokens`
/// was expected.
fn inside_item(file: FileId, text: &str, pos: usize, tokens: &[String]) -> Diagnostic {
    let (found, span, found_words) = found_at(file, text, pos);
    let expected: Vec<String> = tokens.iter().map(|t| format!("`{t}`")).collect();
    let expected = if expected.is_empty() { "more of this item".to_string() } else { expected.join(" or ") };
    if let Some(d) = in_a_statement(file, text, pos) {
        return d;
    }
    let help = if found == "-" || found == "." {
        "names are letters, digits and `_` (e.g. `my_model`)".to_string()
    } else {
        help_for(&expected, found)
    };
    Diagnostic::new(Code::E1001, span, format!("expected {expected}, found {found_words}"))
        .label(format!("expected {expected}"))
        .help(help)
}

/// The diagnostic of pest's error `e` reported at `pos`.
fn at_position(file: FileId, text: &str, pos: usize, e: &Error<Rule>) -> Diagnostic {
    let (found, span, found_words) = found_at(file, text, pos);
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } if !positives.is_empty() => {
            let mut words: Vec<&str> = positives.iter().map(|r| describe(*r)).collect();
            if words.contains(&"an expression") {
                words.retain(|w| !matches!(*w, "a name" | "a number" | "a string"));
            }
            words.sort_unstable();
            words.dedup();
            words.join(" or ")
        }
        _ => String::new(),
    };
    let message = if expected.is_empty() {
        format!("unexpected {found_words}")
    } else {
        format!("expected {expected}, found {found_words}")
    };
    if let Some(d) = in_a_statement(file, text, pos) {
        return d;
    }
    Diagnostic::new(Code::E1001, span, message)
        .label(if expected.is_empty() { "not expected here".to_string() } else { format!("expected {expected}") })
        .help(help_for(&expected, found))
}

/// The mistakes inside one statement that pest reports where it gave up
/// (often the next statement or item): a missing `=`, a value with nothing
/// after its `=`, two values with no operator between them, a layer
/// override without its `{`. Each reported where it is, with the statement
/// as meant.
fn in_a_statement(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    missing_equals(file, text, pos)
        .or_else(|| empty_value(file, text, pos))
        .or_else(|| juxtaposed(file, text, pos))
        .or_else(|| layer_without_brace(file, text, pos))
        .or_else(|| trailing_comma(file, text, pos))
}

/// `query = zeros,`: a comma after a statement (statements end with their
/// line; commas separate a call's arguments only).
fn trailing_comma(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    if token_at(text, pos) != "," {
        return None;
    }
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = code_of_line(text, line_start);
    let open = text[line_start..pos].matches('(').count() > text[line_start..pos].matches(')').count();
    if open || line_start + line.len() != pos + 1 {
        return None;
    }
    Some(
        Diagnostic::new(Code::E1001, Span::new(file, pos, pos + 1), "unexpected `,` after a statement")
            .label("not needed here")
            .help("a statement ends with its line; commas only separate a call's arguments: remove the `,`"),
    )
}

/// The text of line `from..` up to its comment, without trailing space.
fn code_of_line(text: &str, from: usize) -> &str {
    let end = text[from..].find('\n').map_or(text.len(), |i| from + i);
    let raw = &text[from..end];
    raw.split('#').next().unwrap_or(raw).trim_end()
}

/// The start of the line before the one starting at `start` that has code.
fn previous_code_line(text: &str, start: usize) -> Option<usize> {
    let mut end = start.checked_sub(1)?;
    loop {
        let from = text[..end].rfind('\n').map_or(0, |i| i + 1);
        if !code_of_line(text, from).trim().is_empty() {
            return Some(from);
        }
        end = from.checked_sub(1)?;
    }
}

/// `depth =` with its value missing: pest read the next line's name as the
/// value and fails at that line's `=`.
fn empty_value(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    if token_at(text, pos) != "=" {
        return None;
    }
    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let head = text[start..pos].trim();
    if head.is_empty() || !head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let from = previous_code_line(text, start)?;
    let line = code_of_line(text, from);
    let name = line.trim_start().strip_suffix('=')?.trim_end();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let at = from + line.len() - 1;
    Some(
        Diagnostic::new(Code::E1001, Span::new(file, at, at + 1), format!("expected a value after `{name} =`"))
            .label("nothing follows this `=`")
            .help(format!("give `{name}` its value on the same line: `{name} = …`")),
    )
}

/// The expression that ends at byte `end` of `text` (on one line): a name,
/// a number, or a call with its parentheses.
fn expression_before(text: &str, end: usize) -> &str {
    let bytes = text.as_bytes();
    let mut start = end;
    if start > 0 && bytes[start - 1] == b')' {
        let mut depth = 0i32;
        while start > 0 {
            start -= 1;
            match bytes[start] {
                b')' => depth += 1,
                b'(' => depth -= 1,
                b'\n' => return &text[end..end],
                _ => {}
            }
            if depth == 0 {
                break;
            }
        }
    }
    while start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'.')) {
        start -= 1;
    }
    &text[start..end]
}

/// The expression that starts at byte `start`: a name or number, with the
/// parentheses of a call after it.
fn expression_after(text: &str, start: usize) -> &str {
    let word = token_at(text, start);
    let mut end = start + word.len();
    if text[end..].starts_with('(') {
        let mut depth = 0i32;
        for (i, c) in text[end..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '\n' => break,
                _ => {}
            }
            if depth == 0 {
                end += i + 1;
                break;
            }
        }
    }
    &text[start..end]
}

/// Two values in a row in a statement's value (`beta softmax`,
/// `attn(n) mlp(n)`): pest fails at the second (or, where it is an item's
/// keyword such as `mlp`, at its `(`).
fn juxtaposed(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    let mut start = pos;
    if text.get(pos..)?.starts_with('(') {
        start -=
            text[..pos].len() - text[..pos].trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_').len();
    }
    let next = token_at(text, start);
    if !next.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return None;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..start];
    let kept = before.trim_end();
    if kept.len() == before.len() || !kept.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ')') {
        return None;
    }
    let line = kept.trim_start();
    let first = token_at(line, 0);
    if !line.contains('=') || matches!(first, "param" | "layer" | "use") {
        return None;
    }
    // `1 trainabel`: a misspelt word, said by "did you mean".
    if crate::diag::did_you_mean(next, KEYWORDS.iter().copied()).is_some_and(|k| k != next) {
        return None;
    }
    let prev = expression_before(text, line_start + kept.len());
    let after = expression_after(text, start);
    let call = |e: &str| ["attn(", "mlp(", "rmsnorm(", "layernorm("].iter().any(|c| e.starts_with(c));
    let op = if call(after) && prev.ends_with(')') { "+" } else { "*" };
    Some(
        Diagnostic::new(
            Code::E1001,
            Span::new(file, start, start + next.len()),
            format!("expected an operator before `{next}`"),
        )
        .label("two values in a row")
        .help(format!("join them with `+`, `-`, `*` or `/`, e.g. `{prev} {op} {after}`")),
    )
}

/// `layer first out = x`: an override's selectors not followed by `{`.
fn layer_without_brace(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = code_of_line(text, line_start);
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start().strip_prefix("layer")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    // The selectors: words, numbers, `..`, arithmetic of `depth`, commas.
    let mut at = line_start + indent + "layer".len();
    let mut selectors = String::new();
    loop {
        at += text[at..].len() - text[at..].trim_start_matches([' ', '\t']).len();
        let t = token_at(text, at);
        let selector = t == "first"
            || t == "last"
            || t == "depth"
            || t == "step"
            || t.chars().all(|c| c.is_ascii_digit() || c == '.')
            || matches!(t, "," | "+" | "-" | "*" | "/" | "(" | ")");
        if t.is_empty() || !selector || t == "{" {
            break;
        }
        if t == "step" {
            selectors.push(' ');
        }
        selectors.push_str(t);
        if t == "," || t == "step" {
            selectors.push(' ');
        }
        at += t.len();
    }
    let found = token_at(text, at);
    if selectors.is_empty() || found == "{" || found.is_empty() {
        return None;
    }
    Some(
        Diagnostic::new(
            Code::E1001,
            Span::new(file, at, at + found.len()),
            format!("expected `{{` after `layer {selectors}`, found `{found}`"),
        )
        .label("expected `{`")
        .help(format!("a layer override is `layer {selectors} {{ … }}`, its statements inside the braces")),
    )
}

/// A statement written without its `=` (`h attn(x)`, `block b`), where an
/// error is at the start of a line: that line, or the one before it (the
/// parser fails at the next line when the statement looked unfinished).
/// Reported at the word that should follow `=`, with the statement as it
/// was meant.
fn missing_equals(file: FileId, text: &str, pos: usize) -> Option<Diagnostic> {
    let pos = pos + text.get(pos..).map_or(0, |r| r.len() - r.trim_start().len());
    let start = text.get(..pos)?.rfind('\n').map_or(0, |i| i + 1);
    if !text[start..pos].trim().is_empty() {
        return None;
    }
    let previous = text[..start.saturating_sub(1)].rfind('\n').map_or(0, |i| i + 1);
    let lines = if start == 0 { vec![start] } else { vec![start, previous] };
    lines.into_iter().find_map(|from| {
        let l = code_of_line(text, from);
        let indent = l.len() - l.trim_start().len();
        let l = l.trim_start();
        let name: usize = l.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').map(char::len_utf8).sum();
        let (head, rest) = l.split_at(name);
        let gap = rest.len() - rest.trim_start().len();
        let rest = rest.trim_start();
        let starts_value = rest.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '(' || c == '"');
        let keyword = matches!(head, "param" | "layer" | "use");
        let opens = l.ends_with('{') || l.ends_with('}');
        // `parm beta = 1` has its `=`: a misspelt keyword, not this.
        let mut depth = 0i32;
        let assigns = rest.chars().any(|c| {
            depth += i32::from(c == '(') - i32::from(c == ')');
            c == '=' && depth == 0
        });
        if name == 0 || gap == 0 || !starts_value || keyword || opens || assigns {
            return None;
        }
        let at = from + indent + name + gap;
        let next = token_at(text, at);
        Some(
            Diagnostic::new(
                Code::E1001,
                Span::new(file, at, at + next.len().max(1)),
                format!("expected `=` after `{head}`, found `{next}`"),
            )
            .label("expected `=` before this")
            .help(format!("a statement is `name = value`: write `{head} = {rest}`")),
        )
    })
}

/// Words the grammar knows where a misspelling is likely, for "did you mean".
const KEYWORDS: &[&str] =
    &["trainable", "fixed", "per_head", "param", "layer", "block", "attention", "mlp", "model", "train", "use"];

fn help_for(expected: &str, found: &str) -> String {
    let word = found.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !found.is_empty();
    // A keyword is not its own misspelling.
    let word = word && !KEYWORDS.contains(&found);
    if let Some(k) = word.then(|| crate::diag::did_you_mean(found, KEYWORDS.iter().copied())).flatten() {
        return format!("did you mean `{k}`?");
    }
    if expected.contains("expression") {
        "give a value: a number, a name, a call like `rmsnorm(x)`, or arithmetic of these".into()
    } else if expected.contains("item") {
        "top-level items are `block NAME { … }`, `attention NAME { … }`, `mlp NAME { … }`, `model { … }`, `train { … }` and `use \"file.blk\"`".into()
    } else if found == "=" {
        "one statement per `name = value`; a setting cannot be chained".into()
    } else {
        "a statement is `name = value`, `param name = value` or `layer … { … }` (line breaks are free)".into()
    }
}

/// The token starting at `pos`: a word, a number or one character.
fn token_at(text: &str, pos: usize) -> &str {
    let Some(rest) = text.get(pos..) else { return "" };
    let word: usize = rest
        .char_indices()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .map(|(_, c)| c.len_utf8())
        .sum();
    if word > 0 {
        return &rest[..word];
    }
    match rest.chars().next() {
        Some(c) if c.is_whitespace() => "",
        Some(c) => &rest[..c.len_utf8()],
        None => "",
    }
}
