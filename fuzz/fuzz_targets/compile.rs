//! Long-running fuzzing of the front end: any bytes, parsed, checked and
//! formatted, must never panic (`cargo +nightly fuzz run compile` from
//! this directory; the seed corpus is every `.blk` file of the repository).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = blkc::compile_str("fuzz.blk", &text);
    if c.program.is_some() {
        let (_, parsed) = blkc::load::load_text("fuzz.blk", &text);
        if let Ok(ast) = parsed {
            let formatted = blkc::syntax::format::format(&ast, &text);
            let (_, again) = blkc::load::load_text("fuzz.blk", &formatted);
            assert_eq!(again.ok(), Some(ast), "formatting changed the AST");
        }
    }
});
