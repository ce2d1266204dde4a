//! The canonical blocks and examples: they check clean, are formatted,
//! format round-trips, their settings match the paper's preset table
//! (docs/language.md §11: the reference code's CodeParrot presets) and the CodeParrot parameter counts land on
//! the paper's 167M / 146M.

use blkc::graph::params::count;
use blkc::graph::{Graph, Init, Linear, MatrixTerm, Op, Program, Scalar};
use blkc::syntax::format::format;
use blkc_tests::{blk_files, compile_rel, rel, rendered};

fn canonical_files() -> Vec<String> {
    let mut files: Vec<String> = blk_files("blocks").iter().map(|p| rel(p)).collect();
    files.extend(blk_files("examples").iter().map(|p| rel(p)));
    files
}

fn program(path: &str) -> Program {
    let c = compile_rel(path);
    match c.program {
        Some(p) => p,
        None => panic!("{path} does not compile:\n{}", rendered(&c)),
    }
}

#[test]
fn every_canonical_file_checks_without_any_diagnostic() {
    let files = canonical_files();
    assert!(files.len() >= 25, "expected the blocks and both example sets, found {}", files.len());
    for f in &files {
        let c = compile_rel(f);
        assert!(c.diagnostics.is_empty(), "{f}:\n{}", rendered(&c));
    }
}

#[test]
fn formatting_keeps_the_ast_is_idempotent_and_canonical_files_are_formatted() {
    for f in canonical_files() {
        let text = std::fs::read_to_string(blkc_tests::repo().join(&f)).unwrap_or_default();
        let (_, parsed) = blkc::load::load_text(&f, &text);
        let Ok(ast) = parsed else { panic!("{f} does not parse") };
        let once = format(&ast, &text);
        let (_, reparsed) = blkc::load::load_text(&f, &once);
        assert_eq!(reparsed.as_ref().ok(), Some(&ast), "{f}: formatting changed the AST");
        let twice = format(reparsed.as_ref().unwrap_or(&ast), &once);
        assert_eq!(once, twice, "{f}: formatting is not idempotent");
        assert_eq!(once, text, "{f} is not in canonical format (run `blkc fmt {f}`)");
    }
}

#[test]
fn formatting_round_trips_messy_input_with_comments() {
    let messy = "# header\nuse   \"a.blk\"\nblock b{# open\n param g=1/sqrt( depth )   trainable\n\n\n  h=x+g*attn( rmsnorm(x) ,eps=1e-6)# trailing\n # own line\n out = h+ (h - mlp(h))*2\n layer first{h=x}\n}\nmodel{block=b\ndepth=2}\n";
    let (_, parsed) = blkc::load::load_text("m.blk", messy);
    let Ok(ast) = parsed else { panic!("messy input does not parse") };
    let once = format(&ast, messy);
    let (_, again) = blkc::load::load_text("m.blk", &once);
    assert_eq!(again.as_ref().ok(), Some(&ast));
    assert_eq!(format(again.as_ref().unwrap_or(&ast), &once), once);
    for comment in ["# header", "# open", "# trailing", "# own line"] {
        assert!(once.contains(comment), "lost {comment}:\n{once}");
    }
    assert!(once.contains("out = h + (h - mlp(h)) * 2"), "{once}");
    assert!(once.contains("    layer first { h = x }"), "{once}");
}

#[test]
fn canonical_blocks_are_short_and_cite_the_paper() {
    for f in blk_files("blocks") {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let code = text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).count();
        assert!(code <= 15, "{}: {code} non-comment lines", rel(&f));
        let header = text.lines().next().unwrap_or_default();
        assert!(header.starts_with('#'), "{}: no header comment", rel(&f));
        // A citation: a paper's year (He & Hofmann 2023, Gemma Team 2024…)
        // or the theory it follows.
        let year = text.split(|c: char| !c.is_ascii_digit()).any(|w| w.len() == 4 && w.starts_with("20"));
        assert!(year || text.contains("theory.md"), "{}: no citation", rel(&f));
    }
}

/// The graph of layer `l` of the model in `path`.
fn layer(p: &Program, l: u64) -> &Graph {
    let m = p.model.as_ref().expect("a model");
    p.blocks[m.block].graph_at(l, m.depth)
}

fn attention(g: &Graph) -> Vec<&blkc::graph::AttentionSpec> {
    g.nodes
        .iter()
        .filter_map(|n| if let Op::Attention { spec, .. } = &n.op { Some(spec.as_ref()) } else { None })
        .collect()
}

fn norms(g: &Graph) -> usize {
    g.nodes.iter().filter(|n| matches!(n.op, Op::Norm { .. })).count()
}

fn param(g: &Graph, name: &str) -> (f64, bool) {
    let p = g.params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no param {name}"));
    (p.init.as_const().unwrap_or(f64::NAN), p.trainable)
}

fn is_shaped(a: &blkc::graph::AttentionSpec) -> bool {
    let terms: Vec<MatrixTerm> = a.matrix.iter().map(|(_, t)| *t).collect();
    a.query == Init::Zeros
        && terms == [MatrixTerm::Identity, MatrixTerm::Softmax, MatrixTerm::Centre]
        && a.params.iter().all(|p| p.trainable && p.per_head && p.init == Scalar::Const(1.0))
}

#[test]
fn codeparrot_models_match_the_paper_preset_table() {
    let std = Init::Normal { std: Scalar::Const(0.02) };
    for name in ["preln", "postln", "parallel", "sas", "sas-p", "sas-p-nonorm", "vskipinit", "skipless-naive"] {
        let p = program(&format!("examples/codeparrot/{name}.blk"));
        let m = p.model.as_ref().expect("model");
        assert_eq!((m.depth, m.width, m.heads, m.context, m.vocab), (18, 768, 12, 128, 50_000), "{name}");
        assert!(m.tied_embeddings && m.final_norm.is_some(), "{name}");
        let (first, mid) = (layer(&p, 0), layer(&p, 5));
        let a = attention(mid)[0];
        match name {
            "preln" | "postln" | "parallel" | "skipless-naive" => {
                assert_eq!(a.query, std, "{name}");
                assert_eq!(a.value, Linear::Dense { init: std.clone(), bias: false }, "{name}");
                assert_eq!(a.matrix, vec![(Scalar::Const(1.0), MatrixTerm::Softmax)], "{name}");
            }
            _ => assert!(is_shaped(a), "{name}: attention is not shaped"),
        }
        match name {
            "sas" | "sas-p" | "sas-p-nonorm" => {
                assert_eq!((&a.value, &a.proj), (&Linear::Identity, &Linear::Identity), "{name}");
                let v0 = &attention(first)[0].value;
                assert!(
                    matches!(v0, Linear::Reparam { skip: Scalar::Const(s), resid: Scalar::Const(r), init: Init::Identity, trainable: true } if *s == 1.0 && *r == 1.0),
                    "{name}: first-layer value {v0:?}"
                );
                assert_eq!(param(mid, "beta_ff"), (0.1, true), "{name}");
                assert_eq!(param(mid, "beta_sa"), (1.0, true), "{name}");
            }
            "vskipinit" => {
                let orth = Linear::Dense { init: Init::Orthogonal { gain: Scalar::Const(1.0) }, bias: false };
                assert_eq!((&a.value, &a.proj), (&orth, &orth));
                assert_eq!(attention(first)[0].value, orth, "the call's value wins over the first-layer override");
                assert_eq!(param(mid, "beta_ff"), (0.1, true));
            }
            _ => {}
        }
        let expected_norms = match name {
            "parallel" | "sas-p" => 1,
            "sas-p-nonorm" => 0,
            _ => 2,
        };
        assert_eq!(norms(mid), expected_norms, "{name}: norms per block");
    }
    let nonorm = program("examples/codeparrot/sas-p-nonorm.blk");
    assert_eq!(norms(layer(&nonorm, 0)), 1, "block 0 keeps its LayerNorm, as in the reference code");
}

/// The reference code's counts (its modules' parameters, frozen ones
/// included; docs/language.md) include frozen zero biases
/// that blkc does not create; both must agree within 0.2 %.
#[test]
fn codeparrot_parameter_counts_land_on_the_paper() {
    for (name, reference) in [
        ("preln", 166.74e6),
        ("parallel", 166.74e6),
        ("sas", 146.07e6),
        ("sas-p", 146.07e6),
        ("sas-p-nonorm", 146.05e6),
    ] {
        let p = program(&format!("examples/codeparrot/{name}.blk"));
        let m = p.model.as_ref().expect("model");
        let total = count(m, &p.blocks[m.block]).total as f64;
        let off = (total - reference).abs() / reference;
        assert!(off < 0.002, "{name}: {total} vs {reference} ({:.3} %)", off * 100.0);
    }
    let pre = program("examples/codeparrot/preln.blk");
    let m = pre.model.as_ref().expect("model");
    assert_eq!(count(m, &pre.blocks[m.block]).total, 166_645_248, "Pre-LN, counted by hand in docs/language.md");
}

#[test]
fn small_examples_are_the_small_cpu_model() {
    for f in blk_files("examples/small").iter().filter(|f| !f.ends_with("train.blk")) {
        let p = program(&rel(f));
        let m = p.model.as_ref().expect("model");
        assert_eq!((m.depth, m.width, m.heads, m.context, m.vocab), (6, 256, 4, 128, 4096), "{}", rel(f));
        let t = p.train.as_ref().expect("train settings");
        assert!(t.get("steps").is_some() && t.get("data").is_some(), "{}", rel(f));
    }
}

#[test]
fn a_file_overrides_the_train_settings_it_uses() {
    let p = program("examples/codeparrot/vskipinit.blk");
    let t = p.train.expect("train");
    assert_eq!(t.get("lr"), Some(&blkc::graph::TrainValue::Number(3e-4)));
    assert_eq!(t.get("batch"), Some(&blkc::graph::TrainValue::Number(128.0)));
}

#[test]
fn graphs_of_the_canonical_blocks_match_their_snapshots() {
    use blkc::graph::render::{render, Format};
    for f in blk_files("blocks").iter().filter(|f| !f.ends_with("shaped.blk")) {
        let p = program(&rel(f));
        let name = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        // The file's own block (`gemma3.blk` also reads `gemma2.blk`'s).
        let b = p.block(&name.replace('-', "_")).unwrap_or(&p.blocks[0]);
        let text = format!(
            "{}\n--- layer 0 ---\n{}",
            render(&b.base, &b.name, Format::Mermaid),
            render(b.graph_at(0, 6), &b.name, Format::Mermaid)
        );
        insta::with_settings!({ snapshot_path => "snapshots/graph", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, text);
        });
    }
}

#[test]
fn readme_example_checks_clean() {
    let readme = std::fs::read_to_string(blkc_tests::repo().join("README.md")).unwrap_or_default();
    let block: String =
        readme.split("```blk").nth(1).and_then(|s| s.split("```").next()).unwrap_or_default().to_string();
    assert!(block.contains("block"), "README has no ```blk example");
    let c = blkc::compile_str("README.md.blk", &block);
    assert!(c.diagnostics.is_empty() && c.program.is_some(), "{}", rendered(&c));
}

/// Every `docs/theory.md §N` cited in the repository's code and docs names
/// a section that exists, and nothing cites the theory or the paper
/// outside the repository.
#[test]
fn every_theory_citation_resolves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let theory = std::fs::read_to_string(root.join("docs/theory.md")).expect("docs/theory.md");
    let sections: Vec<String> = theory
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            l.trim_start_matches('#').split_whitespace().next().map(|n| n.trim_end_matches('.').to_string())
        })
        .collect();
    let mut cited = 0;
    for dir in ["compiler/src", "runtime/src", "runtime/tests", "tests", "docs", "blocks", "examples"] {
        for path in walk(&root.join(dir)).into_iter().filter(|p| !p.ends_with("tests/canonical.rs")) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let text = text.replace("\n///", " ").replace("\n//!", " ").replace("\n//", " ").replace("\n#", " ");
            for (i, _) in text.match_indices("theory.md") {
                let before = &text[..i];
                assert!(before.ends_with("docs/"), "{}: a theory citation outside docs/theory.md", path.display());
                let after = text[i + "theory.md".len()..].trim_start();
                let Some(rest) = after.strip_prefix('§') else { continue };
                let section: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
                let section = section.trim_end_matches('.');
                assert!(
                    sections.iter().any(|s| s == section),
                    "{}: docs/theory.md §{section} does not exist",
                    path.display()
                );
                cited += 1;
            }
            assert!(!text.contains("paper.md"), "{}: cites paper.md, which is not in the repository", path.display());
        }
    }
    assert!(cited >= 20, "only {cited} citations found");
}

/// The `.rs`, `.md` and `.blk` files below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs" || e == "md" || e == "blk") {
            out.push(path);
        }
    }
    out
}

/// `blocks/llama.blk` in `examples/small/llama.blk` (6 blocks, width 256, 4
/// heads of 64, 2 key/value heads, vocab 4096, untied head), counted by
/// hand: the compiler's count (and the built model's, runtime/tests) agree.
#[test]
fn the_llama_file_is_short_and_has_the_hand_counted_parameters() {
    let text = std::fs::read_to_string(blkc_tests::repo().join("blocks/llama.blk")).unwrap_or_default();
    assert!(text.lines().count() <= 20, "blocks/llama.blk has {} lines", text.lines().count());
    let p = program("examples/small/llama.blk");
    let m = p.model.as_ref().expect("a model");
    let (d, kv, vocab) = (256u128, 2 * 64u128, 4096u128);
    // SwiGLU hidden: ⌊256 · 8/3⌋ = 682, rounded up to a multiple of 256.
    let hidden = 768u128;
    let attention = d * d + d * kv + d * kv + d * d; // Q, K, V, out; no biases
    let mlp = 3 * d * hidden; // gate, up, down
    let norms = 2 * d; // two RMSNorm scales
    let per_layer = attention + mlp + norms;
    let hand = vocab * d + 6 * per_layer + d + vocab * d; // embedding, blocks, final RMSNorm, untied head
    assert_eq!(hand, 6_819_072);
    assert_eq!(blkc::graph::params::count(m, &p.blocks[m.block]).total, hand);
}
