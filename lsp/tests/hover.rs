//! Hovers that need a whole program: a model setting shows the value the
//! checker resolved, defaults included.

use std::path::Path;

use blkc::span::FileId;
use blkc_lsp::analysis::{Analysis, Options};
use blkc_lsp::hover::hover;
use blkc_lsp::workspace::{Document, Documents};
use lsp_types::Url;

#[test]
fn a_model_setting_shows_its_value_in_effect() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let path = root.join("examples/small/llama.blk");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut docs = Documents::default();
    let uri = Url::from_file_path(&path).expect("a file URI");
    docs.open(Document { uri, text: text.clone(), version: 1 });
    let a = Analysis::of(&path, &docs, Options::default()).expect("analysed");
    let at = |key: &str| {
        let offset = text.find(&format!("    {key}")).expect("the key") + 4;
        hover(&a, &[], FileId(0), offset as u32).map(|(h, _)| h).unwrap_or_default()
    };
    assert!(at("depth ").contains("In effect: `6`"), "{}", at("depth "));
    assert!(at("positions").contains("In effect: `rope(base = 10000, fraction = 1)`"), "{}", at("positions"));
    assert!(at("final_norm").contains("In effect: `rmsnorm`"), "{}", at("final_norm"));
}
