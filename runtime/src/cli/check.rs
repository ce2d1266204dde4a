//! `blkc check FILE…`: compile each file, report every problem, then
//! predict signal propagation at init and reject blocks that collapse.

use std::path::{Path, PathBuf};

use blkc::signal::report::{reports, table, Report, Request};
use blkc::signal::verdict::Status;
use blkc::signal::{AttentionMode, Input};
use blkc::span::FileId;
use blkc::{Compilation, Diagnostic, Loader};

use super::{compile, unreadable, BROKEN, OK, REJECTED};
use crate::backend::Cpu;
use crate::measure::{Comparison, Setup};
use crate::report::{self, plural, DiagFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attention {
    /// Zero-query approximation while σ_Q·σ_K ≤ 1, Monte Carlo above.
    Auto,
    /// softmax = the mask's centre matrix (exact for zero queries).
    Zero,
    /// Monte Carlo over random queries and keys.
    Mc,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .blk files to check; a folder checks every .blk file under it,
    /// `-` standard input (its `use`s relative to the working directory).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// human (diagnostics on stderr, report on stdout), json (one object
    /// per analysed block, see docs/check.md) or github (annotations).
    #[arg(long, value_enum, default_value = "human")]
    pub format: DiagFormat,
    /// Treat warnings as rejection (exit 1).
    #[arg(long)]
    pub deny_warnings: bool,
    /// Only syntax and semantics; no signal analysis.
    #[arg(long)]
    pub syntax_only: bool,
    /// Analyse this many stacked blocks instead of the model's depth.
    #[arg(long)]
    pub depth: Option<u64>,
    /// Tokens T of the analysis (default: the model's context, at most 128).
    #[arg(long)]
    pub context: Option<usize>,
    /// Input kernel: `distinct`, `rho=R` or `data=PATH` (byte tokens of a
    /// text file); repeat for several (default: distinct and rho=0.2).
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// How random-query attention is evaluated.
    #[arg(long, value_enum, default_value = "auto")]
    pub attention: Attention,
    /// Monte Carlo draws per attention layer.
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Include the final T×T kernel in the JSON report.
    #[arg(long)]
    pub emit_kernel: bool,
    /// Also build the lowered model at init (CPU), feed it random token
    /// sequences and compare measured and predicted statistics per layer
    /// (exit 1 when they disagree beyond the stated tolerance).
    #[arg(long)]
    pub measure: bool,
    /// Width of the measured model (default: the model's).
    #[arg(long)]
    pub width: Option<u64>,
    /// Random token sequences of the measurement.
    #[arg(long, default_value_t = 8)]
    pub sequences: usize,
    /// Independently initialised models the measurement averages over.
    #[arg(long, default_value_t = 3)]
    pub models: usize,
    /// Seed of the measured models' weights and tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Change a file whose block is rejected as little as makes it pass
    /// (a skip, a gain, shaped attention, …: every candidate checked by
    /// this analysis), write it back, then check it. Formatting and
    /// comments are kept.
    #[arg(long, conflicts_with = "syntax_only")]
    pub fix: bool,
    /// With `--fix`: print the change as a diff, leave the file as it is.
    #[arg(long, requires = "fix")]
    pub diff: bool,
    /// Give a model setting, a param or a named section's setting another
    /// value, e.g. `--set depth=72`, `--set beta_ff=0.2` or `--set
    /// local.window=64` (a bare block gets the small model to set).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: &Args) -> u8 {
    let mut status = OK;
    let mut total = Tally::default();
    let files = super::blk_arguments(&args.files);
    if args.files.iter().filter(|p| super::is_stdin(p)).count() > 1 {
        errln!("error: `-` (standard input) is given more than once; it can be read once");
        return BROKEN;
    }
    if args.fix && args.files.iter().any(|p| super::is_stdin(p)) {
        errln!("error: --fix writes the fixed file back; it cannot fix standard input (give the file)");
        return BROKEN;
    }
    for (path, problem) in &files {
        if let Some(why) = problem {
            unreadable(path, why, args.format);
            status = BROKEN;
            total.errors += 1;
            continue;
        }
        let (s, t) = one(path, args);
        status = status.max(s);
        total.errors += t.errors;
        total.warnings += t.warnings;
        total.expected += t.expected;
    }
    if args.format == DiagFormat::Human {
        let verdict = match status {
            OK => "ok",
            REJECTED => "rejected",
            _ => "does not compile",
        };
        let expected = if total.expected > 0 { format!(" ({} as expected)", total.expected) } else { String::new() };
        errln!(
            "checked {}: {}, {}{expected} — {verdict}",
            plural(files.len(), "file"),
            plural(total.errors, "error"),
            plural(total.warnings, "warning")
        );
    }
    status
}

/// What one file contributed to the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    errors: usize,
    warnings: usize,
    /// Diagnostics the file said to expect (`# blkc: expect CODE`).
    expected: usize,
}

/// Checks one file: its exit status and tally.
fn one(path: &Path, args: &Args) -> (u8, Tally) {
    let broken = (BROKEN, Tally { errors: 1, ..Tally::default() });
    let fixes = if args.fix {
        match fix(path, args) {
            Ok(f) => f,
            Err(why) => {
                errln!("error: {why}");
                return broken;
            }
        }
    } else {
        Vec::new()
    };
    let Some(c) = compile(path, &args.set, args.format) else { return broken };
    let path = super::shown(path);
    let expected = match blkc::expect::expectations(&c.sources.get(FileId(0)).text) {
        // Without the analysis, its codes cannot be reported, nor expected.
        Ok(e) if args.syntax_only => e.into_iter().filter(|(c, _)| !c.as_str()[1..].starts_with('3')).collect(),
        Ok(e) => e,
        Err((word, line)) => {
            errln!(
                "error: {}:{line}: `# blkc: expect {word}`: `{word}` is not a diagnostic code of blkc",
                path.display()
            );
            return broken;
        }
    };
    let mut reps = Vec::new();
    if let (Some(p), false) = (&c.program, args.syntax_only) {
        match request(args, path) {
            Ok(req) => reps = reports(p, FileId(0), &req),
            Err(why) => {
                errln!("error: {why}");
                return broken;
            }
        }
    }
    let measured: Vec<Comparison> = match (&c.program, args.measure) {
        (Some(p), true) => match measure_setup(args) {
            Ok(setup) => p
                .analysed_models(FileId(0))
                .iter()
                .map(|(m, _)| crate::measure::compare::<Cpu>(p, m, setup.clone(), &Default::default()))
                .collect(),
            Err(why) => {
                errln!("error: {why}");
                return broken;
            }
        },
        _ => Vec::new(),
    };
    let mut diags: Vec<Diagnostic> = c.diagnostics.clone();
    diags.extend(reps.iter().flat_map(|r| r.diagnostics.iter().cloned()));
    diags.sort_by(|a, b| a.span.position_cmp(&b.span));
    let outcome = blkc::expect::compare(&expected, &diags);
    let (unexpected, as_said): (Vec<Diagnostic>, Vec<Diagnostic>) =
        diags.into_iter().partition(|d| !blkc::expect::is_expected(&expected, d));
    let (e, w) = report::counts(&unexpected);
    let rejected = reps.iter().any(|r| {
        r.verdict == Status::Reject
            && r.diagnostics.iter().any(|d| d.is_error() && !blkc::expect::is_expected(&expected, d))
    });
    let status = if !outcome.unmet.is_empty() || measured.iter().any(|m| !m.agreement) {
        REJECTED
    } else if c.program.is_none() && e > 0 {
        BROKEN
    } else if rejected || (args.deny_warnings && w > 0) {
        REJECTED
    } else {
        OK
    };
    let checked = Checked {
        path,
        c: &c,
        unexpected: &unexpected,
        as_said: &as_said,
        expected: &expected,
        outcome: &outcome,
        fixes: &fixes,
    };
    print(&checked, &reps, &measured, args);
    (status, Tally { errors: e + outcome.unmet.len(), warnings: w, expected: as_said.len() })
}

/// A checked file, for printing.
struct Checked<'a> {
    path: &'a Path,
    c: &'a Compilation,
    /// Diagnostics the file does not expect.
    unexpected: &'a [Diagnostic],
    /// Diagnostics it does (`# blkc: expect CODE`).
    as_said: &'a [Diagnostic],
    expected: &'a [(blkc::Code, usize)],
    outcome: &'a blkc::expect::Outcome,
    /// What `--fix` did, per block it tried (JSON's `fix`).
    fixes: &'a [(String, serde_json::Value)],
}

fn measure_setup(args: &Args) -> Result<Setup, String> {
    if let Some(w) = args.width.filter(|w| *w < 8 || *w > 4096) {
        return Err(format!("--width {w} is out of range for a measurement (8 to 4096)"));
    }
    if args.sequences == 0 || args.sequences > 256 {
        return Err(format!("--sequences {} is out of range (1 to 256)", args.sequences));
    }
    if args.models == 0 || args.models > 16 {
        return Err(format!("--models {} is out of range (1 to 16)", args.models));
    }
    // With `--input data=PATH`, the measurement feeds those byte tokens.
    let data = match args.inputs.iter().find_map(|i| i.strip_prefix("data=")) {
        Some(path) => Some(byte_windows(Path::new(path), args.context.unwrap_or(blkc::signal::DEFAULT_CONTEXT))?),
        None => None,
    };
    Ok(Setup {
        data,
        width: args.width,
        depth: args.depth,
        context: args.context.unwrap_or(blkc::signal::DEFAULT_CONTEXT),
        sequences: args.sequences,
        models: args.models,
        seed: args.seed,
    })
}

fn print(k: &Checked, reps: &[Report], measured: &[Comparison], args: &Args) {
    let (path, c) = (k.path, k.c);
    let line_of = |code: blkc::Code| k.expected.iter().find(|(e, _)| *e == code).map_or(0, |(_, l)| *l);
    match args.format {
        DiagFormat::Human => {
            report::print(k.unexpected, &c.sources, args.format);
            for d in k.as_said {
                let r = report::record(d, &c.sources);
                errln!("note: {}:{}:{}: {} as expected: {}", r.file, r.line, r.column, r.code, r.message);
            }
            for code in &k.outcome.unmet {
                errln!(
                    "error: {}:{}: the file expects {}, which was not reported (remove the `# blkc: expect` line if it no longer applies)",
                    path.display(),
                    line_of(*code),
                    code.as_str()
                );
            }
            if reps.is_empty() && c.program.is_some() && !args.syntax_only {
                outln!("{}: no block or model to analyse (skipped)", path.display());
            }
            for (i, r) in reps.iter().enumerate() {
                outln!("{}: {}", path.display(), table(r));
                if let Some(m) = measured.get(i) {
                    outln!("{}", crate::measure::table(m));
                }
            }
        }
        DiagFormat::Github => {
            report::print(k.unexpected, &c.sources, args.format);
            for d in k.as_said {
                outln!(
                    "{}",
                    report::github(d, &c.sources).replacen("::error", "::notice", 1).replacen(
                        "::warning",
                        "::notice",
                        1
                    )
                );
            }
            for code in &k.outcome.unmet {
                outln!(
                    "::error file={},line={},title=expected {}::the file expects {}, which was not reported",
                    path.display(),
                    line_of(*code),
                    code.as_str(),
                    code.as_str()
                );
            }
        }
        DiagFormat::Json => json(k, reps, measured, args.syntax_only),
    }
}

/// The JSON lines of a file (docs/check.md): one per analysed block, or
/// one for the file when nothing is analysed.
fn json(k: &Checked, reps: &[Report], measured: &[Comparison], syntax_only: bool) {
    let c = k.c;
    let mut records: Vec<serde_json::Value> = Vec::new();
    for (d, expected) in k.unexpected.iter().map(|d| (d, false)).chain(k.as_said.iter().map(|d| (d, true))) {
        let mut r = serde_json::to_value(report::record(d, &c.sources)).unwrap_or_default();
        r["expected"] = expected.into();
        records.push(r);
    }
    records.sort_by_key(|r| (r["line"].as_u64(), r["column"].as_u64()));
    let codes = |v: &[blkc::Code]| v.iter().map(|c| c.as_str()).collect::<Vec<_>>();
    let expected: Vec<blkc::Code> = k.expected.iter().map(|(c, _)| *c).collect();
    let file = k.path.display().to_string();
    let common = serde_json::json!({
        "file": file,
        "diagnostics": records,
        "expected": codes(&expected),
        "unmet": codes(&k.outcome.unmet),
        "as_expected": k.outcome.as_expected(),
    });
    let merge = |v: &mut serde_json::Value| {
        if let (Some(o), Some(extra)) = (v.as_object_mut(), common.as_object()) {
            o.extend(extra.clone());
        }
    };
    if reps.is_empty() {
        // Nothing analysed: it does not compile, the analysis was not
        // asked for, or the file has no block or model.
        let verdict = match (&c.program, syntax_only) {
            (None, _) => "error",
            (Some(_), true) => "pass",
            (Some(_), false) => "skipped",
        };
        let mut v = serde_json::json!({"schema_version": blkc::signal::report::SCHEMA_VERSION, "verdict": verdict, "layers": []});
        merge(&mut v);
        outln!("{v}");
    }
    for (i, r) in reps.iter().enumerate() {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        merge(&mut v);
        if let (Some(o), Some((_, f))) = (v.as_object_mut(), k.fixes.iter().find(|(b, _)| *b == r.block)) {
            o.insert("fix".into(), f.clone());
        }
        if let (Some(o), Some(m)) = (v.as_object_mut(), measured.get(i)) {
            // The layers become the prediction for the measured input,
            // each with its measurement beside it.
            o.insert("input".into(), "measured".into());
            o.insert("layers".into(), serde_json::to_value(&m.layers).unwrap_or_default());
            o.insert("agreement".into(), m.agreement.into());
            o.insert("tolerance".into(), m.tolerance.into());
            o.insert("max_difference".into(), m.max_difference.into());
            o.insert("measured_width".into(), m.width.into());
            o.insert("measured_heads".into(), m.heads.into());
            o.insert("measured_sequences".into(), m.sequences.into());
            o.insert("measured_models".into(), m.models.into());
        }
        outln!("{v}");
    }
}

/// Most Monte Carlo draws per attention layer.
const MAX_SAMPLES: usize = 4096;

fn request(args: &Args, file: &Path) -> Result<Request, String> {
    let inputs = if args.inputs.is_empty() {
        None
    } else {
        Some(args.inputs.iter().map(|i| input(i, file)).collect::<Result<Vec<_>, _>>()?)
    };
    if let Some(d) = args.depth.filter(|d| *d == 0 || *d > blkc::check::limits::DEPTH) {
        return Err(format!("--depth {d} is out of range (1 to {})", blkc::check::limits::DEPTH));
    }
    if args.samples == 0 || args.samples > MAX_SAMPLES {
        return Err(format!("--samples {} is out of range (1 to {MAX_SAMPLES})", args.samples));
    }
    if let Some(t) = args.context.filter(|t| *t < 2 || *t > blkc::signal::MAX_CONTEXT) {
        return Err(format!("--context {t} is out of range (2 to {})", blkc::signal::MAX_CONTEXT));
    }
    Ok(Request {
        depth: args.depth,
        context: args.context,
        inputs,
        mode: Some(match args.attention {
            Attention::Auto => AttentionMode::Auto,
            Attention::Zero => AttentionMode::ZeroQuery,
            Attention::Mc => AttentionMode::MonteCarlo,
        }),
        samples: Some(args.samples),
        emit_kernel: args.emit_kernel,
    })
}

/// Parses `distinct`, `rho=R` or `data=PATH`.
fn input(spec: &str, _file: &Path) -> Result<Input, String> {
    match spec.split_once('=') {
        None if spec == "distinct" => Ok(Input::Distinct),
        Some(("rho", r)) => match r.parse::<f64>() {
            Ok(r) if (0.0..1.0).contains(&r) => Ok(Input::Rho(r)),
            _ => Err(format!("--input rho={r}: expected a correlation in [0, 1)")),
        },
        Some(("data", path)) => data_kernel(Path::new(path)),
        _ => Err(format!("--input {spec}: expected `distinct`, `rho=R` or `data=PATH`")),
    }
}

/// Byte-token windows of `t` tokens from a text file (or the text files of
/// a directory), at most 256.
fn byte_windows(path: &Path, t: usize) -> Result<Vec<Vec<u32>>, String> {
    const MAX_BYTES: usize = 1 << 22;
    let mut bytes = Vec::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("--input data={}: {e}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if !path.is_dir() && !path.is_file() {
        let what = if path.exists() { "not a regular file or a directory" } else { "no such file or directory" };
        return Err(format!("--input data={}: {what}", path.display()));
    }
    for f in files {
        if bytes.len() >= MAX_BYTES {
            break;
        }
        // Regular files only, and never more than the cap (a link to a
        // device would read forever).
        if let Ok(file) = std::fs::File::open(&f) {
            let left = (MAX_BYTES - bytes.len()) as u64;
            let _ = std::io::Read::read_to_end(&mut std::io::Read::take(file, left), &mut bytes);
        }
    }
    let windows: Vec<Vec<u32>> =
        bytes.chunks_exact(t).take(256).map(|w| w.iter().map(|b| u32::from(*b)).collect()).collect();
    if windows.is_empty() {
        return Err(format!("--input data={}: fewer than {t} bytes of text", path.display()));
    }
    Ok(windows)
}

/// The input kernel of byte-token windows of a text file (or of the text
/// files in a directory), with a learned position table.
fn data_kernel(path: &Path) -> Result<Input, String> {
    const T: usize = blkc::signal::MAX_CONTEXT;
    let windows = byte_windows(path, T)?;
    let kernel = blkc::signal::kernel::token_kernel(&windows, T, true);
    Ok(Input::Kernel { name: format!("data={}", path.display()), kernel })
}

/// How long `--fix` searches one file (a variant whose attention is
/// sampled takes seconds to check).
const FIX_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);

/// `--fix`: searches the smallest change that makes each rejected block of
/// `path` pass (in the file that defines it: `path` or one it `use`s), says
/// what it changes (a diff on stderr), and writes the changed files back
/// unless `--diff`. A file that expects its rejection (`# blkc:
/// expect E3…`) or does not compile is left as it is (the check that
/// follows reports why). Returns, per block it tried, what it found (for
/// JSON: `changes`, `written`, or `found: false` with `why`). `Err`: the
/// fixed file could not be written.
fn fix(path: &Path, args: &Args) -> Result<Vec<(String, serde_json::Value)>, String> {
    let mut records = Vec::new();
    let Ok(text) = blkc::FsLoader.load(path) else { return Ok(records) };
    if blkc::expect::expects_rejection(&text) {
        errln!("fix: {}: left as it is: it expects its rejection (`# blkc: expect`)", path.display());
        return Ok(records);
    }
    let Ok(req) = request(args, path) else { return Ok(records) };
    let outcomes = match blkc::fix::fix(path, &blkc::FsLoader, &args.set, &req, FIX_BUDGET) {
        Ok(o) => o,
        Err(why) => {
            errln!("fix: {}: left as it is: {why}", path.display());
            return Ok(records);
        }
    };
    if outcomes.is_empty() {
        errln!("fix: {}: nothing to fix (no block is rejected)", path.display());
    }
    let root = blkc::source::normalise(path);
    // Each file the fixes change: its text before, and after.
    let mut files: Vec<(std::path::PathBuf, String, String)> = Vec::new();
    for o in &outcomes {
        match o {
            blkc::fix::Outcome::Fixed { block, fix, others } => {
                let elsewhere = fix.file != root;
                let before = match files.iter().find(|(f, ..)| *f == fix.file) {
                    Some((_, _, after)) => after.clone(),
                    None if elsewhere => blkc::FsLoader.load(&fix.file).unwrap_or_default(),
                    None => text.clone(),
                };
                let shown = fix.file.display();
                if elsewhere && blkc::expect::expects_rejection(&before) {
                    let why = format!("`{block}` is defined in {shown}, which expects its rejection");
                    errln!("fix: `{block}`: left as it is: {why}");
                    records.push((block.clone(), serde_json::json!({"found": false, "why": why, "tried": 0})));
                    continue;
                }
                let n = fix.changes.len();
                let place = if elsewhere {
                    format!("defined in {shown}, used by {}", path.display())
                } else {
                    format!("in {shown}")
                };
                errln!(
                    "fix: `{block}` ({place}) passes with {}:",
                    if n == 1 { "one change".to_string() } else { format!("{n} changes") }
                );
                for c in &fix.changes {
                    errln!("  - {c}");
                }
                for other in others {
                    errln!("  (also passes: {})", other.changes.join("; "));
                }
                if elsewhere {
                    errln!("  (this changes {shown}, so every model that uses `{block}`)");
                }
                if args.format == DiagFormat::Github {
                    // An annotation on the first line the fix changes.
                    let line = blkc::fix::diff(&before, &fix.text, 0).into_iter().flatten().next().map_or(1, |l| l.0);
                    outln!(
                        "::notice file={shown},line={line},title=blkc check --fix::`{block}` passes with: {}",
                        fix.changes.join("; ")
                    );
                }
                match files.iter_mut().find(|(f, ..)| *f == fix.file) {
                    Some(entry) => entry.2 = fix.text.clone(),
                    None => files.push((fix.file.clone(), before, fix.text.clone())),
                }
                let also: Vec<&Vec<String>> = others.iter().map(|o| &o.changes).collect();
                records.push((
                    block.clone(),
                    serde_json::json!({"found": true, "changes": fix.changes, "also": also, "written": !args.diff,
                        "file": shown.to_string()}),
                ));
            }
            blkc::fix::Outcome::NotFound { block, tried, why } => {
                errln!("fix: `{block}` in {}: no fix found ({why}; {tried} variants checked)", path.display());
                records.push((block.clone(), serde_json::json!({"found": false, "why": why, "tried": tried})));
            }
        }
    }
    // Each file's text before its first fix is the file as it was.
    for (file, original, after) in &files {
        let name = file.display();
        errln!("--- {name}\n+++ {name} (fixed)");
        let mut hunk = true;
        for line in blkc::fix::diff(original, after, 1) {
            match line {
                Some((a, _, marker, t)) => {
                    if hunk {
                        errln!("@@ line {a} @@");
                        hunk = false;
                    }
                    errln!("{marker}{t}");
                }
                None => hunk = true,
            }
        }
        if args.diff {
            errln!("fix: {name} not written (--diff)");
            continue;
        }
        // As an editor saves: through a link, the file's mode kept.
        crate::durable::rewrite(file, after.as_bytes())?;
        errln!("fix: wrote {name}");
    }
    Ok(records)
}
