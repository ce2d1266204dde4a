//! The `blkc` command as a user runs it: help, a clean and a failing
//! `check` (exit codes, rendered and machine-readable diagnostics), `fmt`,
//! `graph` and `params`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn blkc(args: &[&str]) -> Output {
    blkc_in(&repo(), args)
}

fn blkc_in(dir: &Path, args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_blkc")).args(args).current_dir(dir).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run blkc: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn canonical() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["blocks", "examples/codeparrot", "examples/small"] {
        let mut v: Vec<String> = std::fs::read_dir(repo().join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
            .filter(|f| f.ends_with(".blk"))
            .collect();
        v.sort();
        files.extend(v);
    }
    files
}

#[test]
fn help_lists_the_subcommands() {
    let o = blkc(&["--help"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    for cmd in ["check", "fmt", "graph", "params"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    let o = blkc(&["check", "--help"]);
    assert!(text(&o.stdout).contains("--format"));
}

#[test]
fn check_rejects_only_the_collapsing_block_among_the_canonical_files() {
    let files = canonical();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let o = blkc(&args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("checked {} files: 3 errors, 0 warnings — rejected", files.len())), "{err}");
    // Exactly the naive skipless block and its two models are rejected
    // (theory.md §3.2: it fails from depth 6 on).
    assert_eq!(err.matches("E3001").count(), 3, "{err}");
    assert!(err.contains("blocks/skipless-naive.blk:5:11"), "{err}");
    let out = text(&o.stdout);
    assert_eq!(out.matches("verdict: reject").count(), 3, "{out}");
    assert!(out.contains("verdict: pass; passes at every depth up to 256"), "{out}");
    let o = blkc(&["check", "--syntax-only", "blocks/skipless-naive.blk"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_failing_check_exits_2_with_a_rendered_diagnostic() {
    let o = blkc(&["check", "tests/ui/check/unknown_name.blk"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("E2001"), "{err}");
    assert!(err.contains("unknown name `nrom`"), "{err}");
    assert!(err.contains("did you mean `norm`?"), "{err}");
    assert!(err.contains("unknown_name.blk:4:"), "{err}");
    assert!(err.contains("does not compile"), "{err}");
}

#[test]
fn check_speaks_json_and_github_annotations() {
    let o = blkc(&["check", "--format", "json", "tests/ui/check/wrong_arity.blk"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["verdict"], "error");
    let records = v["diagnostics"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 3, "{v}");
    assert!(records.iter().all(|r| r["code"] == "E2006" && r["severity"] == "error" && r["line"].as_u64() > Some(0)));

    let o = blkc(&["check", "--format", "json", "--depth", "72", "--emit-kernel", "examples/codeparrot/sas-p.blk"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["verdict"], "pass");
    let layers = v["layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layers.len(), 72);
    assert_eq!(layers[0]["layer"], 1);
    for key in ["cosine", "effective_rank", "scale"] {
        assert!(layers[71][key].is_f64(), "{key}: {}", layers[71]);
    }
    let kernel = v["kernel"].as_array().cloned().unwrap_or_default();
    assert_eq!(kernel.len(), 128);
    assert_eq!(kernel[0].as_array().map(Vec::len), Some(128));

    let o = blkc(&["check", "--format", "github", "tests/ui/check/unused.blk"]);
    assert_eq!(o.status.code(), Some(0), "warnings alone pass");
    let out = text(&o.stdout);
    assert!(
        !out.is_empty() && out.lines().all(|l| l.starts_with("::warning file=tests/ui/check/unused.blk,line=")),
        "{out}"
    );
    let o = blkc(&["check", "--format", "github", "blocks/skipless-naive.blk"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).starts_with("::error file=blocks/skipless-naive.blk,line=5,col=11"), "{}", text(&o.stdout));
    let o = blkc(&["check", "--deny-warnings", "--syntax-only", "tests/ui/check/unused.blk"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn check_options_change_the_analysis() {
    let o = blkc(&["check", "--format", "json", "--depth", "72", "examples/codeparrot/postln.blk"]);
    assert_eq!(o.status.code(), Some(1), "Post-LN is rejected at depth 72");
    let o = blkc(&["check", "--format", "json", "--input", "distinct", "--context", "32", "examples/small/preln.blk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["context"], 32);
    assert_eq!(v["inputs"].as_array().map(Vec::len), Some(1));
    let o = blkc(&["check", "--input", "data=blocks/preln.blk", "blocks/preln.blk"]);
    assert_eq!(o.status.code(), Some(2), "a file shorter than the window is a clear error");
    assert!(text(&o.stderr).contains("fewer than"));
    let o = blkc(&["check", "--input", "data=docs", "--format", "json", "blocks/sas.blk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["input"], "data=docs", "{v}");
    let o = blkc(&["check", "--depth", "100000", "blocks/sas.blk"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreadable_files_exit_2() {
    let o = blkc(&["check", "no/such.blk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot read `no/such.blk`: no such file"));
    let o = blkc(&["check", "blocks"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("it is a directory"));
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let o = blkc(&["graph", "blocks/parallel.blk"]);
    assert!(o.status.success());
    let dot = text(&o.stdout);
    assert!(dot.starts_with("digraph \"parallel\" {") && dot.trim_end().ends_with('}'), "{dot}");
    assert!(dot.contains("rmsnorm") && dot.contains("style=bold"), "{dot}");
    // The shared norm feeds both branches: one norm node, two edges out of it.
    let norm = dot
        .lines()
        .find(|l| l.contains("label=\"n = rmsnorm"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    assert_eq!(dot.matches(&format!("  {norm} -> ")).count(), 2, "{dot}");
    let o = blkc(&["graph", "--format", "mermaid", "examples/codeparrot/sas.blk", "--layer", "0"]);
    let mm = text(&o.stdout);
    assert!(mm.starts_with("flowchart TB") && mm.contains("reparam"), "{mm}");
}

#[test]
fn params_reports_the_paper_counts() {
    let o = blkc(&["params", "--format", "json", "examples/codeparrot/sas-p.blk"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let total = v["total"].as_u64().unwrap_or(0) as f64;
    assert!((total - 146.07e6).abs() / 146.07e6 < 0.002, "{v}");
    let o = blkc(&["params", "blocks/preln.blk"]);
    let out = text(&o.stdout);
    assert!(out.contains("bare block, in the small model") && out.contains("total"), "{out}");
}

#[test]
fn params_of_a_file_without_block_is_e5001() {
    let o = blkc(&["params", "blocks/shaped.blk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("E5001"));
}

#[test]
fn fmt_rewrites_and_check_mode_reports() {
    let dir = std::env::temp_dir().join(format!("blkc-fmt-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("messy.blk");
    let _ = std::fs::write(&file, "block b{ # keep me\nh=x+attn(rmsnorm(x))\nout=h}\n");
    let path = file.to_string_lossy().to_string();
    let o = blkc(&["fmt", "--check", &path]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stdout).contains("would reformat"));
    let o = blkc(&["fmt", &path]);
    assert!(o.status.success());
    let formatted = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(formatted, "block b {  # keep me\n    h   = x + attn(rmsnorm(x))\n    out = h\n}\n");
    assert_eq!(blkc(&["fmt", "--check", &path]).status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
    let mut args = vec!["fmt", "--check"];
    let files = canonical();
    args.extend(files.iter().map(String::as_str));
    assert_eq!(blkc(&args).status.code(), Some(0), "canonical files are formatted");
}

/// The command of examples/ci/blkc-check.yml, on this repository's blocks:
/// it fails because of the naive skipless block, with its annotation.
#[test]
fn the_ci_example_rejects_the_collapsing_block() {
    let blocks: Vec<String> = canonical().into_iter().filter(|f| f.starts_with("blocks/")).collect();
    let mut args = vec!["check", "--format", "github"];
    args.extend(blocks.iter().map(String::as_str));
    let o = blkc(&args);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("::error")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].starts_with("::error file=blocks/skipless-naive.blk,line=5,col=11")
            && errors[0].contains("title=E3001"),
        "{out}"
    );
    let workflow = std::fs::read_to_string(repo().join("examples/ci/blkc-check.yml")).unwrap_or_default();
    assert!(workflow.contains("blkc check --format github"), "the workflow runs the command tested here");
}

/// `use` paths are relative to the file that holds them, wherever blkc
/// runs from: the file's own directory, with `./`, or three levels deep.
#[test]
fn use_paths_hold_from_any_working_directory() {
    let small = repo().join("examples/small");
    for file in ["sas-p.blk", "./sas-p.blk"] {
        for cmd in ["check", "params", "graph"] {
            let o = blkc_in(&small, &[cmd, file]);
            assert!(o.status.code() != Some(2), "{cmd} {file} from examples/small:\n{}", text(&o.stderr));
        }
    }
    let root = std::env::temp_dir().join(format!("blkc-deep-{}", std::process::id()));
    let deep = root.join("deep/a/b");
    let _ = std::fs::create_dir_all(&deep);
    let _ = std::fs::create_dir_all(root.join("blocks"));
    let _ = std::fs::copy(repo().join("blocks/preln.blk"), root.join("blocks/preln.blk"));
    let model =
        "use \"../../../blocks/preln.blk\"\n\nmodel m {\n    block = preln\n    depth = 2\n    width = 64\n    \
                 heads = 2\n    context = 16\n    vocab = 258\n}\n";
    let _ = std::fs::write(deep.join("m.blk"), model);
    for (dir, file) in [(&deep, "m.blk"), (&root, "deep/a/b/m.blk"), (&root.join("deep"), "a/b/m.blk")] {
        let o = blkc_in(dir, &["check", file]);
        assert_eq!(o.status.code(), Some(0), "check {file} from {}:\n{}", dir.display(), text(&o.stderr));
    }
    let _ = std::fs::remove_dir_all(&root);
}
