//! The fixer's tests: each kind of change, combined changes, budgets,
//! used files, and the text helpers.

use std::path::Path;

use super::{apply, changes, diff, fix, Edit, Outcome};
use crate::signal::report::Request;
use crate::signal::verdict::Status;
use crate::MemLoader;

/// The outcomes of fixing `text` as `m.blk`.
fn fixed(text: &str) -> Result<Vec<Outcome>, String> {
    fix(Path::new("m.blk"), &MemLoader::default().with("m.blk", text), &[], &Request::default(), LONG)
}

/// The single outcome's fix: its changes and text.
fn only(text: &str) -> (Vec<String>, String, Status) {
    let mut out = fixed(text).expect("compiles");
    assert_eq!(out.len(), 1, "one rejected block");
    match out.remove(0) {
        Outcome::Fixed { fix, .. } => (fix.changes, fix.text, fix.status),
        Outcome::NotFound { why, .. } => panic!("no fix found: {why}"),
    }
}

/// Whether `text` passes `blkc check`'s analysis.
fn passes(text: &str) -> bool {
    fixed(text).expect("compiles").is_empty()
}

/// Time enough for any search of these tests.
const LONG: std::time::Duration = std::time::Duration::from_secs(600);

const MODEL: &str = "model {\n    block = b\n    depth = 12\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";

#[test]
fn attention_without_a_skip_gets_one() {
    let text = format!("# attention with no skip\nblock b {{\n    h   = attn(rmsnorm(x))  # mixes\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
    assert!(!passes(&text), "the test's block is rejected");
    let (changes, after, status) = only(&text);
    assert_eq!(changes, ["add a skip from `x` around `attn(…)` in `h`"]);
    assert!(after.contains("h   = x + attn(rmsnorm(x))  # mixes"), "{after}");
    assert!(after.starts_with("# attention with no skip\n"), "comments are kept: {after}");
    assert_ne!(status, Status::Reject);
    assert!(passes(&after));
}

#[test]
fn a_skip_gain_that_explodes_is_dropped() {
    let text = "block b {\n    out = 2 * x + mlp(x)\n}\n\nmodel {\n    block = b\n    depth = 18\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
    assert!(!passes(text));
    let (changes, after, _) = only(text);
    assert_eq!(changes, ["drop the skip gain 2 on `x` in `out`"]);
    assert!(after.contains("out = x + mlp(x)"), "{after}");
}

#[test]
fn a_skip_gain_param_is_initialised_to_one() {
    let text = "block b {\n    param a = 0.5 trainable\n    out = a * x + 0.1 * attn(x)\n}\n\nmodel {\n    block = b\n    depth = 12\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
    assert!(!passes(text));
    let (changes, after, _) = only(text);
    assert_eq!(changes, ["initialise the skip gain `a` to 1"]);
    assert!(after.contains("param a = 1 trainable"), "{after}");
}

#[test]
fn a_branch_that_starts_at_zero_gets_its_default_init() {
    let text = format!("mlp dead {{\n    down = zeros\n    up = fan_in\n}}\n\nblock b {{\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h), dead)\n}}\n\n{MODEL}");
    assert!(!passes(&text));
    let (changes, after, _) = only(&text);
    assert_eq!(changes, ["`down = zeros` in `mlp dead` makes its output zero: use the default init"]);
    assert!(after.contains("mlp dead {\n    up = fan_in\n}"), "the line is gone, no blank left: {after}");
}

#[test]
fn an_mlp_chain_gets_a_skip_and_what_else_it_needs() {
    let text = "block b {\n    out = mlp(rmsnorm(x))\n}\n\nmodel {\n    block = b\n    depth = 72\n    width = 256\n    heads = 4\n    vocab = 1000\n}\n";
    assert!(!passes(text));
    let (changes, after, _) = only(text);
    assert!(changes[0].starts_with("add a skip from `x`"), "{changes:?}");
    assert!(passes(&after), "{after}");
}

/// A block that needs several changes gets them; the same changes made
/// in another order are offered once.
#[test]
fn several_changes_combine_and_orders_are_one_fix() {
    let text = "block naive {\n    h   = attn(x)\n    out = h + mlp(h)\n}\n\nmodel {\n    block = naive\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
    assert!(!passes(text));
    let mut out = fixed(text).expect("compiles");
    let Some(Outcome::Fixed { fix, others, .. }) = out.pop() else { panic!("not fixed") };
    assert!(fix.changes.len() >= 2, "{:?}", fix.changes);
    assert!(passes(&fix.text), "{}", fix.text);
    let mut sets: Vec<Vec<String>> = std::iter::once(&fix)
        .chain(&others)
        .map(|f| {
            let mut c = f.changes.clone();
            c.sort();
            c
        })
        .collect();
    let n = sets.len();
    sets.sort();
    sets.dedup();
    assert_eq!(sets.len(), n, "no set of changes offered twice");
}

#[test]
fn a_formatted_file_stays_formatted() {
    let text = format!("block b {{\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
    let (_, after, _) = only(&text);
    let file = crate::syntax::parse(crate::span::FileId(0), &after).expect("parses");
    assert_eq!(crate::syntax::format::format(&file, &after), after);
}

#[test]
fn passing_files_are_left_alone_and_broken_ones_refused() {
    let text = format!("block b {{\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
    assert!(fixed(&text).expect("compiles").is_empty());
    let err = fixed("block b {\n    out = x + mlp(y)\n}\n").expect_err("an unknown name");
    assert!(err.contains("errors"), "{err}");
}

/// A shaped attention whose queries are not zero is offered them (its
/// softmax is then the centre, and with β = γ the attention is the
/// identity at init), in place or as a new line.
#[test]
fn a_shaped_attention_is_offered_zero_queries() {
    let section = |query: &str| {
        format!("attention s {{\n{query}    value  = identity\n    matrix = alpha * I + beta * softmax - gamma * centre\n    param alpha = 1 trainable per_head\n    param beta  = 1 trainable per_head\n    param gamma = 1 trainable per_head\n}}\n\nblock b {{\n    out = attn(rmsnorm(x), s)\n}}\n")
    };
    for (query, expect) in [("    query  = fan_in(4)\n", "    query  = zeros\n"), ("", "    query = zeros\n    value")]
    {
        let text = section(query);
        let file = crate::syntax::parse(crate::span::FileId(0), &text).expect("parses");
        let all = changes(&file, &text, "b");
        let zero = all.iter().find(|c| c.what.starts_with("zero queries in `attention s`")).expect("offered");
        let after = apply(&text, &zero.edits);
        assert!(after.contains(expect), "{after}");
        assert!(crate::compile_str("m.blk", &after).program.is_some(), "the change compiles: {after}");
    }
    // Zero already: nothing to offer.
    let text = section("    query  = zeros\n");
    let file = crate::syntax::parse(crate::span::FileId(0), &text).expect("parses");
    assert!(!changes(&file, &text, "b").iter().any(|c| c.what.starts_with("zero queries")));
}

#[test]
fn every_rejected_bare_block_is_fixed_in_turn() {
    let text = "block one {\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}\n\nblock two {\n    out = 8 * x + mlp(x)\n}\n\nblock fine {\n    h   = x + attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}\n";
    let out = fixed(text).expect("compiles");
    let blocks: Vec<&str> = out
        .iter()
        .map(|o| match o {
            Outcome::Fixed { block, .. } => block.as_str(),
            Outcome::NotFound { block, why, .. } => panic!("`{block}` not fixed: {why}"),
        })
        .collect();
    assert_eq!(blocks, ["one", "two"]);
    let Some(Outcome::Fixed { fix, .. }) = out.last() else { unreachable!() };
    assert!(fix.text.contains("h   = x + attn(rmsnorm(x))") && fix.text.contains("out = x + mlp(x)"), "{}", fix.text);
    assert!(passes(&fix.text), "the last fix's text has both changes");
}

/// A block from a `use`d file is fixed in that file, as the model that
/// uses it analyses it (Post-LN passes in the small bare model, not at
/// depth 72 and width 768).
#[test]
fn a_block_from_another_file_is_fixed_in_its_file() {
    let lib = "block postln {\n    h   = rmsnorm(x + attn(x))\n    out = rmsnorm(h + mlp(h))\n}\n";
    let model = "use \"lib.blk\"\n\nmodel {\n    block = postln\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
    let loader = MemLoader::default().with("lib.blk", lib).with("m.blk", model);
    assert!(fixed(lib).expect("compiles").is_empty(), "the bare block passes");
    let out = fix(Path::new("m.blk"), &loader, &[], &Request::default(), LONG).expect("compiles");
    let [Outcome::Fixed { block, fix, .. }] = &out[..] else { panic!("{out:?}") };
    assert_eq!((block.as_str(), fix.file.as_path()), ("postln", Path::new("lib.blk")));
    assert!(fix.text.starts_with("block postln {\n    param beta_"), "{}", fix.text);
    let after = MemLoader::default().with("lib.blk", &fix.text).with("m.blk", model);
    let again = fix_with(&after);
    assert!(again.is_empty(), "the model passes with the fixed file: {again:?}");
}

fn fix_with(loader: &MemLoader) -> Vec<Outcome> {
    fix(Path::new("m.blk"), loader, &[], &Request::default(), LONG).expect("compiles")
}

#[test]
fn a_block_on_one_line_gets_its_new_gain_on_that_line() {
    let text = "block b { h = rmsnorm(x + attn(x)) out = rmsnorm(h + mlp(h)) }\nmodel {\n    block = b\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
    assert!(!passes(text));
    let (changes, after, _) = only(text);
    assert!(changes[0].starts_with("down-weight"), "{changes:?}");
    assert!(after.starts_with("block b { param beta_"), "{after}");
    assert!(passes(&after));
}

#[test]
fn the_search_stops_at_its_budget() {
    let text = format!("block b {{\n    h   = attn(rmsnorm(x))\n    out = h + mlp(rmsnorm(h))\n}}\n\n{MODEL}");
    let loader = MemLoader::default().with("m.blk", &text);
    let out = fix(Path::new("m.blk"), &loader, &[], &Request::default(), std::time::Duration::ZERO).expect("compiles");
    match &out[..] {
        [Outcome::NotFound { why, tried, .. }] => {
            assert!(why.contains("time allowed"), "{why}");
            assert_eq!(*tried, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn edits_apply_in_order_and_diffs_show_the_changed_lines() {
    let text = "a\nb\nc\nd\ne\n";
    let edits = [Edit { start: 2, end: 3, text: "B".into() }, Edit::insert(6, "x\n")];
    let after = apply(text, &edits);
    assert_eq!(after, "a\nB\nc\nx\nd\ne\n");
    let d = diff(text, &after, 0);
    let shown: Vec<String> =
        d.iter().map(|o| o.as_ref().map_or("…".into(), |(_, _, m, t)| format!("{m}{t}"))).collect();
    assert_eq!(shown, ["-b", "+B", "…", "+x"]);
    assert!(diff(text, text, 1).is_empty());
}
