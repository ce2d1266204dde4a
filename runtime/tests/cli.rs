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

/// A copy of a ui case without its `# blkc: expect` line (so that `check`
/// fails on it as on any broken file), under the same file name.
fn unexpected(rel: &str) -> String {
    let src = std::fs::read_to_string(repo().join(rel)).unwrap_or_default();
    let kept: String = src.lines().filter(|l| !l.starts_with("# blkc: expect")).map(|l| format!("{l}\n")).collect();
    let dir = std::env::temp_dir().join(format!("blkc-unexpected-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let name = Path::new(rel).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let _ = std::fs::write(dir.join(&name), kept);
    dir.join(name).display().to_string()
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
    assert!(out.starts_with("blkc: a compiler for transformer blocks"), "the tagline says what blkc is:\n{out}");
    assert!(out.contains("signal check"), "{out}");
    // An unquoted glob, expanded by the shell into several paths, gets a hint.
    let o = blkc(&["train", "blocks/sas-p.blk", "--data", "a.txt", "b.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("quote a --data glob"), "{}", text(&o.stderr));
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
    // Exactly the naive skipless block and its two models are rejected
    // (docs/theory.md §3.2: it fails from depth 6 on), as their
    // `# blkc: expect E3001` lines say: so the whole set passes.
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("checked {} files: 0 errors, 0 warnings (3 as expected) — ok", files.len())),
        "{err}"
    );
    assert_eq!(err.matches("E3001 as expected").count(), 3, "{err}");
    assert!(err.contains("blocks/skipless-naive.blk:5:11: E3001 as expected"), "{err}");
    let out = text(&o.stdout);
    assert_eq!(out.matches("verdict: reject").count(), 3, "{out}");
    assert!(out.contains("verdict: pass; keeps tokens apart at init at every depth up to 256"), "{out}");
    let o = blkc(&["check", "--syntax-only", "blocks/skipless-naive.blk"]);
    assert_eq!(o.status.code(), Some(0), "without the analysis its expected codes are not held against the file");
}

/// A folder argument stands for the `.blk` files under it (as `ruff check
/// src/` does), hidden and build folders left out; a folder without any is
/// an error, not a silent pass.
#[test]
fn a_folder_stands_for_its_blk_files() {
    let blocks = canonical().iter().filter(|f| f.starts_with("blocks/")).count();
    let o = blkc(&["check", "--syntax-only", "blocks"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("checked {blocks} files: 0 errors")), "{}", text(&o.stderr));
    let o = blkc(&["fmt", "--check", "blocks", "examples"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));

    let dir = std::env::temp_dir().join(format!("blkc-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(dir.join("deep/er"));
    let _ = std::fs::create_dir_all(dir.join(".hidden"));
    let _ = std::fs::create_dir_all(dir.join("empty"));
    let _ = std::fs::write(dir.join("deep/er/bad.blk"), "block b { out = x + attn(y) }\n");
    let _ = std::fs::write(dir.join(".hidden/worse.blk"), "block {\n");
    let o = blkc_in(&dir, &["check", "--syntax-only", "."]);
    assert_eq!(o.status.code(), Some(2), "the file in a subfolder is found");
    let err = text(&o.stderr);
    assert!(err.contains("deep/er/bad.blk") && !err.contains("worse.blk"), "{err}");
    assert!(err.contains("checked 1 file: 1 error"), "{err}");
    for cmd in [&["check", "empty"][..], &["fmt", "empty"]] {
        let o = blkc_in(&dir, cmd);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
        assert!(
            text(&o.stderr).contains("cannot read `empty`: it is a folder without .blk files"),
            "{}",
            text(&o.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check -` reads the file from standard input (a pipe, an editor's
/// buffer), its `use`s relative to the working directory; named `<stdin>`
/// in what it prints. Given twice, or with `--fix`, it is refused.
#[test]
fn check_dash_reads_standard_input() {
    use std::io::Write;
    let piped = |dir: &Path, args: &[&str], input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blkc"))
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
    };
    let sas = std::fs::read_to_string(repo().join("blocks/sas.blk")).unwrap_or_default();
    let o = piped(&repo().join("blocks"), &["check", "-"], &sas);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("<stdin>") && text(&o.stdout).contains("verdict: pass"), "{}", text(&o.stdout));
    let o = piped(&repo(), &["check", "-"], "block b {\n    out = x + atn(x)\n}\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("<stdin>:2:"), "{}", text(&o.stderr));
    for args in [&["check", "-", "-"][..], &["check", "--fix", "-"]] {
        let o = piped(&repo(), args, &sas);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}

/// A file that stops failing the way it says fails `check`; a file with
/// an unknown code in its expectation does not compile.
#[test]
fn expectations_that_are_not_met_fail_the_check() {
    let dir = std::env::temp_dir().join(format!("blkc-expect-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let preln = std::fs::read_to_string(repo().join("blocks/preln.blk")).unwrap_or_default();
    let _ = std::fs::write(dir.join("fine.blk"), format!("{preln}\n# blkc: expect E3001\n"));
    let _ = std::fs::write(dir.join("typo.blk"), format!("{preln}\n# blkc: expect E3999\n"));
    let fine = dir.join("fine.blk").display().to_string();
    let o = blkc(&["check", &fine]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("expects E3001, which was not reported"), "{}", text(&o.stderr));
    let o = blkc(&["check", "--format", "json", &fine]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!((v["as_expected"].as_bool(), v["unmet"][0].as_str()), (Some(false), Some("E3001")), "{v}");
    let o = blkc(&["check", "--format", "github", &fine]);
    assert!(
        text(&o.stdout).contains("::error file=") && text(&o.stdout).contains("title=expected E3001"),
        "{}",
        text(&o.stdout)
    );
    let o = blkc(&["check", &dir.join("typo.blk").display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("`E3999` is not a diagnostic code"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_check_exits_2_with_a_rendered_diagnostic() {
    let o = blkc(&["check", &unexpected("tests/ui/check/unknown_name.blk")]);
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
    let o = blkc(&["check", "--format", "json", &unexpected("tests/ui/check/wrong_arity.blk")]);
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

    let unused = unexpected("tests/ui/check/unused.blk");
    let o = blkc(&["check", "--format", "github", &unused]);
    assert_eq!(o.status.code(), Some(0), "warnings alone pass");
    let out = text(&o.stdout);
    assert!(!out.is_empty() && out.lines().all(|l| l.starts_with(&format!("::warning file={unused},line="))), "{out}");
    let o = blkc(&["check", "--format", "github", "tests/ui/signal/naive_collapse.blk"]);
    assert_eq!(o.status.code(), Some(0), "the collapse it expects");
    assert!(
        text(&o.stdout).starts_with("::notice file=tests/ui/signal/naive_collapse.blk,line="),
        "{}",
        text(&o.stdout)
    );
    let o = blkc(&["check", "--deny-warnings", "--syntax-only", &unused]);
    assert_eq!(o.status.code(), Some(1));
    let o = blkc(&["check", "--deny-warnings", "--syntax-only", "tests/ui/check/unused.blk"]);
    assert_eq!(o.status.code(), Some(0), "expected warnings do not count");
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
    let o = blkc(&["check", "--input", "data=no/such/corpus", "blocks/preln.blk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("data=no/such/corpus: no such file or directory"), "{}", text(&o.stderr));
    let o = blkc(&["check", "--input", "data=docs", "--format", "json", "blocks/sas.blk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["input"], "data=docs", "{v}");
    let o = blkc(&["check", "--depth", "100000", "blocks/sas.blk"]);
    assert_eq!(o.status.code(), Some(2));
    // Out of range is said, never quietly clamped.
    for (flag, value, says) in [
        ("--samples", "0", "--samples 0 is out of range (1 to 4096)"),
        ("--samples", "100000000", "--samples 100000000 is out of range (1 to 4096)"),
    ] {
        let o = blkc(&["check", flag, value, "blocks/llama.blk"]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(text(&o.stderr).contains(says), "{}", text(&o.stderr));
    }
    let o = blkc(&["check", "--measure", "--models", "0", "blocks/sas.blk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--models 0 is out of range (1 to 16)"), "{}", text(&o.stderr));
}

#[test]
fn check_fix_writes_the_smallest_passing_change() {
    // The naive block without its `# blkc: expect`: rejected.
    let path = unexpected("tests/ui/signal/naive_collapse.blk");
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(blkc(&["check", &path]).status.code(), Some(1), "rejected as it is");
    let o = blkc(&["check", "--fix", "--diff", &path]);
    assert_eq!(o.status.code(), Some(1), "--diff leaves it rejected");
    let err = text(&o.stderr);
    assert!(err.contains("-    h   = attn(rmsnorm(x))") && err.contains("+    h   = x + attn(rmsnorm(x))"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), before, "--diff writes nothing");
    // As JSON: the block's record says what would change.
    let o = blkc(&["check", "--fix", "--diff", "--format", "json", &path]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["verdict"], "reject", "{v}");
    assert_eq!(v["fix"]["found"], true, "{v}");
    assert_eq!(v["fix"]["written"], false);
    assert_eq!(v["fix"]["changes"][0], "add a skip from `x` around `attn(…)` in `h`");
    // In CI: a notice on the line the fix changes.
    let o = blkc(&["check", "--fix", "--diff", "--format", "github", &path]);
    let out = text(&o.stdout);
    assert!(out.contains(",line=3,title=blkc check --fix::`naive` passes with: add a skip from `x`"), "{out}");
    let o = blkc(&["check", "--fix", &path]);
    assert_eq!(o.status.code(), Some(0), "fixed, it passes: {}", text(&o.stderr));
    let after = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(after.contains("h   = x + attn(rmsnorm(x))"), "{after}");
    let o = blkc(&["check", "--fix", &path]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("nothing to fix"), "a second --fix changes nothing");
    assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), after);
    assert!(after.starts_with("# E3001: attention without a skip"), "comments are kept: {after}");
    // A file that expects its rejection is left alone, and still passes.
    let kept = repo().join("tests/ui/signal/naive_collapse.blk");
    let original = std::fs::read_to_string(&kept).unwrap_or_default();
    let o = blkc(&["check", "--fix", "--diff", "tests/ui/signal/naive_collapse.blk"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("expects its rejection"));
    assert_eq!(std::fs::read_to_string(&kept).unwrap_or_default(), original);
    // A file with errors is not changed; the check says why.
    let broken = unexpected("tests/ui/parse/hyphen_in_name.blk");
    let before = std::fs::read_to_string(&broken).unwrap_or_default();
    let o = blkc(&["check", "--fix", &broken]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("left as it is"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(&broken).unwrap_or_default(), before);
}

/// A model whose block comes from another file: the fix is made in that
/// file, as the model analyses the block (Post-LN passes bare, not at depth
/// 72 and width 768); a file that expects its rejection is left alone.
#[test]
fn check_fix_changes_the_file_that_defines_the_block() {
    let dir = std::env::temp_dir().join(format!("blkc-fix-used-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let lib = "block postln {\n    h   = rmsnorm(x + attn(x))\n    out = rmsnorm(h + mlp(h))\n}\n";
    let model = "use \"lib.blk\"\n\nmodel {\n    block = postln\n    depth = 72\n    width = 768\n    heads = 12\n    vocab = 1000\n}\n";
    let _ = std::fs::write(dir.join("lib.blk"), lib);
    let _ = std::fs::write(dir.join("m.blk"), model);
    let o = blkc_in(&dir, &["check", "--fix", "m.blk"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("(defined in lib.blk, used by m.blk)") && err.contains("fix: wrote lib.blk"), "{err}");
    let fixed = std::fs::read_to_string(dir.join("lib.blk")).unwrap_or_default();
    assert!(fixed.contains("param beta_") && fixed.contains("1 / sqrt(depth)"), "{fixed}");
    assert_eq!(std::fs::read_to_string(dir.join("m.blk")).unwrap_or_default(), model, "the model file is unchanged");
    // The library says it expects the rejection: nothing is written.
    let expecting = format!("{lib}# blkc: expect E3001\n");
    let _ = std::fs::write(dir.join("lib.blk"), &expecting);
    let o = blkc_in(&dir, &["check", "--fix", "m.blk"]);
    assert!(text(&o.stderr).contains("which expects its rejection"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(dir.join("lib.blk")).unwrap_or_default(), expecting);
}

#[test]
fn unreadable_files_exit_2() {
    let o = blkc(&["check", "no/such.blk"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot read `no/such.blk`: no such file"));
    // `check` and `fmt` take a folder for its files; one-file commands not.
    let o = blkc(&["graph", "blocks"]);
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
    let o = blkc(&["graph", "examples/small/mistral.blk"]);
    assert!(text(&o.stdout).contains("A = softmax over a window of 32"), "{}", text(&o.stdout));
    let o = blkc(&["graph", "--format", "mermaid", "examples/codeparrot/sas.blk", "--layer", "0"]);
    let mm = text(&o.stdout);
    assert!(mm.starts_with("flowchart TB") && mm.contains("reparam"), "{mm}");
    // A layer past the model's last, or a block that is not there, is said.
    let o = blkc(&["graph", "examples/codeparrot/sas.blk", "--layer", "18"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("its layers are 0 to 17"), "{}", text(&o.stderr));
    let o = blkc(&["graph", "blocks/sas.blk", "--layer", "6"]);
    assert!(text(&o.stderr).contains("the small model a bare block is drawn in"), "{}", text(&o.stderr));
    let o = blkc(&["graph", "blocks/sas.blk", "--block", "sass"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no block `sass` in `blocks/sas.blk`: it has `sas`"), "{}", text(&o.stderr));
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
fn set_gives_model_settings_and_params_to_check_and_params() {
    let total = |args: &[&str]| -> u64 {
        let o = blkc(args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["total"].as_u64().unwrap_or_else(|| panic!("no total in {v}"))
    };
    let six = total(&["params", "blocks/preln.blk", "--format", "json"]);
    let twelve = total(&["params", "blocks/preln.blk", "--format", "json", "--set", "depth=12"]);
    let embedding = 4096 * 256 + 128 * 256 + 2 * 256;
    assert_eq!(twelve - embedding, 2 * (six - embedding), "twice the blocks, the same embeddings");
    // The naive block passes at depth 4 and collapses by 12 (in the small model).
    let o = blkc(&["check", "blocks/skipless-naive.blk", "--set", "depth=4"]);
    assert!(text(&o.stderr).contains("expects E3001, which was not reported"), "{}", text(&o.stderr));
    let o = blkc(&["check", "blocks/sas-p.blk", "--set", "beta_ff=nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("<command line>"), "{}", text(&o.stderr));
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

/// `fmt` saves as an editor does: through a symbolic link (the link stays
/// a link), keeping the file's mode; it refuses a read-only file and a
/// named pipe (which it would have read empty and replaced by a file).
#[cfg(unix)]
#[test]
fn fmt_in_place_keeps_links_and_modes_and_refuses_what_it_would_break() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("blkc-fmt-keeps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(dir.join("real"));
    let messy = "block b{\nout=x+attn(rmsnorm(x))}\n";
    let tidy = "block b {\n    out = x + attn(rmsnorm(x))\n}\n";
    let file = dir.join("real/b.blk");
    let _ = std::fs::write(&file, messy);
    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640));
    let link = dir.join("b.blk");
    let _ = std::os::unix::fs::symlink("real/b.blk", &link);
    let o = blkc(&["fmt", &link.to_string_lossy()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let meta = std::fs::symlink_metadata(&link).unwrap_or_else(|e| panic!("{e}"));
    assert!(meta.file_type().is_symlink(), "the link was replaced by a file");
    assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), tidy, "the file the link names is formatted");
    let mode = std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o640, "the mode is kept");

    let _ = std::fs::write(&file, messy);
    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444));
    let o = blkc(&["fmt", &file.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("it is read-only"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap_or_default(), messy, "a read-only file is left as it is");

    let fifo = dir.join("pipe.blk");
    let made = Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    assert!(made, "mkfifo");
    let o = blkc(&["fmt", &fifo.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not a regular file"), "{}", text(&o.stderr));
    let kind = std::fs::symlink_metadata(&fifo).map(|m| m.file_type().is_fifo());
    assert!(kind.unwrap_or(false), "the pipe is still a pipe");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fmt_dash_formats_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_blkc"))
        .args(["fmt", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(b"block b{ # keep me\nh=x+attn(rmsnorm(x))\nout=h}\n");
    }
    let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "block b {  # keep me\n    h   = x + attn(rmsnorm(x))\n    out = h\n}\n");
}

/// The command of examples/ci/blkc-check.yml, on every `.blk` file of this
/// repository (the negative examples among them): it passes, because each
/// file fails only the way its `# blkc: expect` line says; the expected
/// diagnostics are notices, not errors.
#[test]
fn the_ci_example_passes_on_this_repository() {
    let listed = Command::new("git").args(["ls-files", "*.blk"]).current_dir(repo()).output();
    let listed = listed.map(|o| text(&o.stdout)).unwrap_or_default();
    let files: Vec<&str> = listed.lines().collect();
    assert!(files.len() > 80, "git ls-files found {} .blk files", files.len());
    let mut args = vec!["check", "--fix", "--diff", "--format", "github"];
    args.extend(files.iter().copied());
    let o = blkc(&args);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    assert!(!out.lines().any(|l| l.starts_with("::error")), "{out}");
    let notice = out.lines().find(|l| l.starts_with("::notice file=blocks/skipless-naive.blk,line=5,col=11"));
    assert!(notice.is_some_and(|l| l.contains("title=E3001")), "{out}");
    let workflow = std::fs::read_to_string(repo().join("examples/ci/blkc-check.yml")).unwrap_or_default();
    assert!(workflow.contains("blkc check --fix --diff --format github"), "the workflow runs the command tested here");
}

/// Every command's JSON carries its schema version; a file that cannot be
/// read, or has no block, still gets the shape of a `check` line.
#[test]
fn json_has_one_versioned_shape_per_command() {
    let o = blkc(&["check", "--format", "json", "no/such.blk"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!((v["schema_version"].as_u64(), v["verdict"].as_str()), (Some(1), Some("error")), "{v}");
    assert_eq!(v["diagnostics"][0]["code"], "E2012");
    assert!(v["diagnostics"][0]["line"].is_null(), "no position, not line 0: {v}");
    let o = blkc(&["check", "--format", "json", "blocks/shaped.blk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["verdict"], "skipped", "a file with no block is skipped, not passed: {v}");
    let o = blkc(&["params", "--format", "json", "blocks/preln.blk"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!((v["schema_version"].as_u64(), v["command"].as_str()), (Some(1), Some("params")), "{v}");
}

/// `BLKC_ATTENTION` takes `auto`, `rows` or `products`; anything else is a
/// usage error (exit 2) that names the variable and the choices, before
/// any command runs.
#[test]
fn the_attention_route_is_checked() {
    let run = |value: &str| {
        Command::new(env!("CARGO_BIN_EXE_blkc"))
            .args(["check", "blocks/sas-p.blk"])
            .current_dir(repo())
            .env("BLKC_ATTENTION", value)
            .output()
            .unwrap_or_else(|e| panic!("cannot run blkc: {e}"))
    };
    let o = run("fastest");
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("BLKC_ATTENTION") && err.contains("auto, rows or products"), "{err}");
    assert!(text(&o.stdout).is_empty(), "nothing ran");
    for ok in ["auto", "rows", "products"] {
        assert_eq!(run(ok).status.code(), Some(0), "BLKC_ATTENTION={ok}");
    }
}

/// `BLKC_FUSION` takes `on` or `off`; `on` in a build without burn's
/// operation fusion, or any other value, is a usage error (exit 2) that
/// says why, before any command runs. The bench's JSON says whether
/// fusion ran (never on the CPU).
#[test]
fn fusion_is_checked() {
    let run = |value: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_blkc"))
            .args(args)
            .current_dir(repo())
            .env("BLKC_FUSION", value)
            .output()
            .unwrap_or_else(|e| panic!("cannot run blkc: {e}"))
    };
    let check = ["check", "blocks/sas-p.blk"];
    let o = run("yes", &check);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("BLKC_FUSION") && err.contains("`yes`: expected on or off"), "{err}");
    assert!(text(&o.stdout).is_empty(), "nothing ran");
    let o = run("on", &check);
    if cfg!(feature = "fusion") {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    } else {
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o.stderr).contains("built without burn's operation fusion"), "{}", text(&o.stderr));
    }
    let bench = ["bench", "examples/small/sas-p.blk", "--set", "depth=1", "--set", "width=32", "--steps", "1"];
    let o = run("off", &[&bench[..], &["--warmup", "0", "--batch", "1", "--format", "json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["fusion"], false, "{v}");
}
