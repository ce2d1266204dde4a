//! Syntax: text → spanned AST ([`parse`]), comment collection and the
//! canonical formatter ([`format`]).

pub mod ast;
pub mod comments;
mod errors;
pub mod format;
mod parse;

pub use parse::{parse, MAX_NESTING};
