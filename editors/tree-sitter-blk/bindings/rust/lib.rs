//! The blkc block language (`.blk`) for tree-sitter: [`LANGUAGE`] for a
//! `tree_sitter::Parser`, and the queries editors use.
//!
//! ```
//! let mut parser = tree_sitter::Parser::new();
//! parser.set_language(&tree_sitter_blk::LANGUAGE.into()).expect("the ABI matches");
//! let tree = parser.parse("block b { out = x }", None).expect("a tree");
//! assert_eq!(tree.root_node().to_sexp(), "(source_file (block name: (identifier) body: (body \
//!     (assignment name: (identifier) value: (identifier)))))");
//! ```

use tree_sitter_language::LanguageFn;

extern "C" {
    fn tree_sitter_blk() -> *const ();
}

/// The language of `.blk` files.
// SAFETY: `tree_sitter_blk` is the function `tree-sitter generate` wrote in
// src/parser.c, compiled and linked by build.rs; it takes nothing and
// returns a pointer to the static language table, as `LanguageFn` requires.
#[allow(unsafe_code)]
pub const LANGUAGE: LanguageFn = unsafe { LanguageFn::from_raw(tree_sitter_blk) };

/// The syntax tree's node kinds and fields.
pub const NODE_TYPES: &str = include_str!("../../src/node-types.json");

/// Highlighting (`queries/highlights.scm`).
pub const HIGHLIGHTS_QUERY: &str = include_str!("../../queries/highlights.scm");

/// Folding (`queries/folds.scm`).
pub const FOLDS_QUERY: &str = include_str!("../../queries/folds.scm");

/// Indentation (`queries/indents.scm`).
pub const INDENTS_QUERY: &str = include_str!("../../queries/indents.scm");
