//! Syntax: text → spanned AST ([`parse`]), comment collection and the
//! canonical formatter ([`format`](mod@format)).

pub mod ast;
pub mod comments;
mod errors;
pub mod format;
mod parse;

pub use parse::{parse, MAX_NESTING};

#[cfg(test)]
mod tests {
    use super::ast::{Item, Stmt};
    use super::parse;
    use crate::span::FileId;

    /// `use`, `block`, `param` and `layer` start an item or a statement
    /// only as whole words: a name that begins with one is a name.
    #[test]
    fn keywords_are_whole_words() {
        let text = "block b {\n    params = 0.5\n    paramg = 1\n    layer0 = 2\n    layers = 3\n    out = x\n}\n";
        let file = parse(FileId(0), text).unwrap_or_else(|e| panic!("{e:?}"));
        let Some(Item::Block(b)) = file.items.first() else { panic!("no block: {file:?}") };
        let names: Vec<&str> = b
            .body
            .iter()
            .map(|s| match s {
                Stmt::Assign(a) => a.name.name.as_str(),
                other => panic!("not a binding: {other:?}"),
            })
            .collect();
        assert_eq!(names, ["params", "paramg", "layer0", "layers", "out"]);
        // A flag's name before `=` starts a binding, with a comment between
        // as without.
        let text = "block b {\n    param g = 1 trainable # why\n    = 2\n    out = x\n}\n";
        let file = parse(FileId(0), text).unwrap_or_else(|e| panic!("{e:?}"));
        let Some(Item::Block(b)) = file.items.first() else { panic!("no block: {file:?}") };
        assert!(matches!(&b.body[0], Stmt::Param(p) if p.flags.is_empty()), "{:?}", b.body[0]);
        assert!(matches!(&b.body[1], Stmt::Assign(a) if a.name.name == "trainable"), "{:?}", b.body[1]);
        for glued in ["blockb {\n    out = x\n}\n", "block b {\n    layer0 { n = x }\n    out = x\n}\n"] {
            assert!(parse(FileId(0), glued).is_err(), "{glued}");
        }
    }
}
