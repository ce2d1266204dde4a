//! Compiles the parser that `tree-sitter generate` wrote from `grammar.js`.

fn main() {
    let src = std::path::Path::new("src");
    let mut c = cc::Build::new();
    c.std("c11").include(src).file(src.join("parser.c"));
    #[cfg(target_env = "msvc")]
    c.flag("-utf-8");
    c.warnings(false);
    c.compile("tree-sitter-blk");
    println!("cargo:rerun-if-changed=src/parser.c");
    println!("cargo:rerun-if-changed=src/tree_sitter/parser.h");
}
