//! `blkc compare FILE…`: block variants trained side by side — every file
//! (a bare block in the small model) times every seed, on the same data and
//! tokenizer and, for a seed, the same batches in the same order — each an
//! ordinary run directory under `--out`, then one table of how they did.
//! Run again, it finishes the unfinished runs and skips the finished ones.

use std::path::{Path, PathBuf};

use blkc::signal::report::{reports, Request};
use blkc::signal::verdict::Status;
use blkc::span::FileId;
use serde::Serialize;

use super::train::{bare_model, fits, on_cpu, on_cuda, on_wgpu};
use super::{split_sets, Device, BROKEN, OK, REJECTED};
use crate::train::comparison;
use crate::train::plot::{self, Curves};
use crate::train::rundir::{Need, RunDir};
use crate::train::settings::{self, Flags, Settings};
use crate::train::{open, signals, Failure, Job, Resume};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// .blk files: models, or a bare block each (trained in the small model).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Steps each variant trains.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seeds per variant (0, 1, …): seed k gives every variant the same
    /// batches in the same order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// Training text, for every variant (see `blkc train --data`).
    #[arg(long)]
    pub data: Option<String>,
    /// Override a `train` setting of every variant, e.g. `--set lr=3e-4`
    /// (or a model setting, a param or `SECTION.KEY`, as `train --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Train every file once per value of a `train` setting, a model
    /// setting, a param or a section's setting, e.g. `--sweep lr=1e-3,3e-4`
    /// or `--sweep local.window=16,64` (several: every combination).
    #[arg(long, value_name = "KEY=V1,V2,…")]
    pub sweep: Vec<String>,
    /// Where the runs and the summary go.
    #[arg(long, default_value = "runs/compare")]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Train each run on N devices in data parallel (see `blkc train --help`).
    #[arg(long, value_name = "N")]
    pub devices: Option<u64>,
    /// The weight products (see `blkc train --help`).
    #[arg(long, value_enum)]
    pub precision: Option<super::PrecisionArg>,
    /// Train the variants the signal check rejects too (marked in the table).
    #[arg(long)]
    pub no_check: bool,
    /// Stop each run once N steps are done, with a checkpoint, as if
    /// interrupted (the next `compare` continues it).
    #[arg(long, value_name = "N")]
    pub stop_at: Option<u64>,
    /// Train even when the memory estimate exceeds what is free.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print nothing but errors and the table.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One variant: a file's model (with one value of each sweep).
#[derive(Clone)]
struct Variant {
    file: PathBuf,
    program: blkc::Program,
    sources: blkc::SourceMap,
    rejected: bool,
    /// The signal check's final mean token cosine (the worst input's).
    cosine: f64,
    /// The training settings among the `--set` pairs of this variant (the
    /// command's, then its sweep's), compiled.
    extra: Option<blkc::graph::Train>,
    /// The model settings and params among them (compiled into `program`).
    sets: Vec<String>,
    /// The variant's file, as its name starts (`tiny`, `tiny-2`).
    stem: String,
    /// Its value of each sweep.
    swept: Combo,
}

impl Variant {
    /// Its name (its run directory's): the file's, then `.KEY=VALUE` for
    /// each sweep.
    fn name(&self) -> String {
        let suffix: String = self.swept.iter().map(|(k, v)| format!(".{k}={v}")).collect();
        format!("{}{suffix}", self.stem)
    }
}

/// How one variant did, over its seeds.
#[derive(Debug, Serialize)]
pub struct Row {
    pub variant: String,
    pub file: String,
    pub rejected: bool,
    /// The signal check's final mean token cosine at init.
    pub cosine: f64,
    pub params: u64,
    pub flops_per_token: u64,
    pub seeds: usize,
    /// Final training loss: mean, min, max over the seeds.
    pub loss: [f64; 3],
    /// Final validation loss: mean, min, max.
    pub eval_loss: [f64; 3],
    /// The mean final validation loss in bits per byte of the validation
    /// text (comparable across tokenizers); none for token files.
    pub eval_bits_per_byte: Option<f64>,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

pub fn run(args: &Args) -> u8 {
    let variants = match variants(args) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Some(v) = variants.iter().find(|v| v.rejected && !args.no_check) {
        errln!(
            "error: the signal check rejects `{}`; compare it anyway with --no-check (it is marked in the table)",
            v.file.display()
        );
        return REJECTED;
    }
    if let Some(note) = unshared_text(args, &variants) {
        errln!("{note}");
    }
    signals::install();
    if let Err(code) = train_all(args, &variants) {
        return code;
    }
    summarise(args, &variants)
}

/// A note where the variants do not all read one text through one
/// tokenizer: their batches differ, and their losses, per token of
/// different tokenizers, do not compare.
fn unshared_text(args: &Args, variants: &[Variant]) -> Option<String> {
    let flags = Flags { data: args.data.clone(), ..Flags::default() };
    let text = |v: &Variant| {
        let file_train = v.program.train.as_ref().map(|t| (t, &v.sources));
        let s = Settings::of_run(file_train, v.extra.as_ref(), &flags).ok()?;
        let vocab = v.program.model.as_ref()?.vocab;
        Some(format!("`{}` through `{}` of {vocab} tokens", s.data, s.tokenizer))
    };
    let texts: Vec<(String, String)> = variants.iter().filter_map(|v| Some((v.name(), text(v)?))).collect();
    let first = texts.first()?;
    let other = texts.iter().find(|t| t.1 != first.1)?;
    Some(format!(
        "note: the variants do not share their text: {} reads {}, {} reads {}; their batches differ, and losses per \
         token of different tokenizers do not compare (bits per byte, in the table, do); to compare the blocks, \
         give every variant the same `--data`, `--set tokenizer=…` and `--set vocab=…`",
        first.0, first.1, other.0, other.1
    ))
}

/// After a run that failed.
const AGAIN: &str = "the runs that finished are kept: run the same command again once this is fixed";

/// Trains every variant with every seed that has not trained yet, in
/// order; an interruption ends the command (exit status of the signal).
fn train_all(args: &Args, variants: &[Variant]) -> Result<(), u8> {
    let total = variants.len() as u64 * args.seeds;
    let mut done = 0;
    // Runs trained by this command and their time: the estimate of the rest.
    let (began, mut trained) = (std::time::Instant::now(), 0u32);
    for v in variants {
        for seed in 0..args.seeds {
            done += 1;
            let out = run_dir(&args.out, v, seed);
            if !args.quiet {
                let left = match trained {
                    0 => String::new(),
                    n => {
                        let per = began.elapsed().as_secs_f64() / f64::from(n);
                        format!(", about {:.0} s left", per * (total - done + 1) as f64)
                    }
                };
                errln!("compare: {} seed {seed} ({done}/{total}{left}) in {}", v.name(), out.display());
            }
            let Some(job) = job(args, v, seed, &out)? else { continue };
            fits(&job, args.no_memory_check)?;
            trained += 1;
            let result = match job.settings.device.as_str() {
                "cuda" => on_cuda(&job),
                "wgpu" => on_wgpu(&job),
                _ => on_cpu(&job),
            };
            match result {
                Ok(s) if s.interrupted => {
                    errln!("stopped; run the same command again to finish the comparison");
                    return Err(s.signal.map_or(OK, signals::exit_status));
                }
                Ok(_) => {}
                Err(Failure::Message(m)) => {
                    errln!("error: {} seed {seed}: {m}", v.name());
                    errln!("{AGAIN}");
                    return Err(REJECTED);
                }
                Err(Failure::Located(d, sources)) => {
                    crate::report::print(&[*d], &sources, crate::report::DiagFormat::Human);
                    errln!("error: {} seed {seed} did not train (in {})", v.name(), out.display());
                    errln!("{AGAIN}");
                    return Err(REJECTED);
                }
            }
        }
    }
    Ok(())
}

/// The table and the plot of every variant's runs, printed and written
/// into `--out`.
fn summarise(args: &Args, variants: &[Variant]) -> u8 {
    // Each run's metrics, read once for the table and the plot.
    let curves: Vec<comparison::Variant> = variants
        .iter()
        .map(|v| comparison::Variant {
            name: v.name(),
            rejected: v.rejected,
            seeds: (0..args.seeds).map(|k| Curves::read(&RunDir::new(&run_dir(&args.out, v, k)).metrics())).collect(),
        })
        .collect();
    let rows: Vec<Row> =
        variants.iter().zip(&curves).map(|(v, c)| row(v, &RunDir::new(&run_dir(&args.out, v, 0)), &c.seeds)).collect();
    if let Err(e) = comparison::draw(&curves, "blkc compare", &args.out) {
        errln!("plot: {e}");
    }
    for (key, points) in swept(variants, &curves) {
        if let Err(e) = comparison::draw_sweep(&key, &points, &args.out) {
            errln!("plot: {e}");
        }
    }
    let table = markdown(&rows);
    out!("{table}");
    let json = serde_json::json!({ "schema_version": super::JSON_VERSION, "variants": rows });
    let written = crate::durable::write_atomic(&args.out.join("summary.md"), table.as_bytes())
        .and_then(|_| crate::durable::write_atomic(&args.out.join("summary.json"), json.to_string().as_bytes()));
    if let Err(e) = written {
        errln!("error: {e}");
        return REJECTED;
    }
    OK
}

/// The files' models (a bare block in the small model), named by file
/// stem, and whether the signal check rejects each.
fn variants(args: &Args) -> Result<Vec<Variant>, u8> {
    let combos = sweeps(&args.sweep, &args.set).map_err(|e| {
        errln!("error: {e}");
        BROKEN
    })?;
    let mut out: Vec<Variant> = Vec::new();
    let mut stems: Vec<String> = Vec::new();
    let mut said: Vec<(blkc::Code, blkc::span::Span, String)> = Vec::new();
    for file in &args.files {
        let stem = file.file_stem().map_or_else(|| "variant".into(), |s| s.to_string_lossy().to_string());
        let mut name = stem.clone();
        let mut k = 2;
        while stems.contains(&name) {
            name = format!("{stem}-{k}");
            k += 1;
        }
        stems.push(name.clone());
        for (k, combo) in combos.iter().enumerate() {
            let mut set = args.set.clone();
            set.extend(combo.iter().map(|(key, value)| format!("{key}={value}")));
            let (train_pairs, sets) = split_sets(&set);
            let extra = settings::overrides(&train_pairs).map_err(|e| {
                err!("{e}");
                BROKEN
            })?;
            // Each diagnostic once, however many combinations share it.
            let c = super::compile(file, &sets, crate::report::DiagFormat::Human).ok_or(BROKEN)?;
            let new: Vec<blkc::Diagnostic> = c
                .diagnostics
                .iter()
                .filter(|d| !said.contains(&(d.code, d.span, d.message.clone())))
                .cloned()
                .collect();
            crate::report::print(&new, &c.sources, crate::report::DiagFormat::Human);
            said.extend(new.into_iter().map(|d| (d.code, d.span, d.message)));
            let Some(mut program) = c.program else { return Err(BROKEN) };
            if program.model.is_none() {
                program.model = bare_model(&program, file, k == 0);
            }
            if program.model.is_none() {
                errln!("error: `{}` has no model and several blocks; give one model or block per file", file.display());
                return Err(BROKEN);
            }
            let reps = reports(&program, FileId(0), &Request::default());
            let rejected = reps.iter().any(|r| r.verdict == Status::Reject);
            let cosine = reps.first().and_then(|r| r.layers.last()).map_or(f64::NAN, |l| l.cosine);
            out.push(Variant {
                file: file.clone(),
                program,
                sources: c.sources,
                rejected,
                cosine,
                extra,
                sets,
                stem: name.clone(),
                swept: combo.clone(),
            });
        }
    }
    Ok(out)
}

/// A variant's value of each sweep, `(key, value)`, in the order swept.
type Combo = Vec<(String, String)>;

/// Every combination of the sweeps' values (one empty combination
/// without sweeps); refused: a sweep that is not `KEY=V1,V2,…`, a value
/// given twice, a key swept twice or also `set`.
fn sweeps(specs: &[String], set: &[String]) -> Result<Vec<Combo>, String> {
    let mut combos = vec![Vec::new()];
    let mut keys: Vec<&str> = Vec::new();
    for spec in specs {
        let Some((key, values)) = spec.split_once('=').filter(|(k, v)| !k.trim().is_empty() && !v.is_empty()) else {
            return Err(format!("`--sweep {spec}`: write KEY=V1,V2,…, e.g. `--sweep lr=1e-3,3e-4`"));
        };
        let key = key.trim();
        if keys.contains(&key) {
            return Err(format!("`{key}` is swept twice: give all its values in one `--sweep {key}=…`"));
        }
        if set.iter().any(|p| super::set_key(p) == key) {
            return Err(format!("`{key}` is both set (`--set`) and swept (`--sweep`): keep one"));
        }
        keys.push(key);
        let values: Vec<&str> = values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
        if let Some(v) = values.iter().enumerate().find_map(|(i, v)| values[..i].contains(v).then_some(v)) {
            return Err(format!("`--sweep {spec}` gives {v} twice (the two variants would be one run)"));
        }
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((key.to_string(), v.to_string()));
                    c
                })
            })
            .collect();
    }
    Ok(combos)
}

/// The job of variant `v` with `seed` in `out`: fresh, resumed, or `None`
/// when it has already trained its steps.
fn job(args: &Args, v: &Variant, seed: u64, out: &Path) -> Result<Option<Job>, u8> {
    let flags = Flags {
        data: args.data.clone(),
        steps: args.steps,
        device: args.device.map(|d| d.name().to_string()),
        seed: Some(seed),
        precision: args.precision.map(|p| p.name().to_string()),
        devices: args.devices,
    };
    let fail = |e: String| {
        errln!("error: {}: {e}", v.name());
        REJECTED
    };
    let extra = v.extra.as_ref();
    let run = RunDir::new(out);
    let fresh = !run.info_path().exists();
    let (program, sources, file, settings, resume) = if fresh {
        let file_train = v.program.train.as_ref().map(|t| (t, &v.sources));
        // The compiler's diagnostics, rendered: the input is broken.
        let s = Settings::of_run(file_train, extra, &flags).map_err(|e| {
            err!("variant `{}`: {e}", v.name());
            BROKEN
        })?;
        (v.program.clone(), v.sources.clone(), v.file.display().to_string(), s, None)
    } else {
        let info = open::read_info(&run).map_err(fail)?;
        let s = info.settings.clone().overridden(extra, &flags).map_err(fail)?;
        if run.latest(Need::Weights).is_some_and(|c| c.state.step >= s.steps) {
            return Ok(None);
        }
        let (program, sources) = open::compile_saved(&run).map_err(fail)?;
        let file = info.file.clone();
        (program, sources, file, s, Some(Resume { checkpoint: None, before: info, reschedule: false }))
    };
    Ok(Some(Job {
        program,
        sources,
        sets: v.sets.clone(),
        file,
        settings,
        out: out.into(),
        init_from: resume.as_ref().and_then(|r| r.before.init_from.clone()),
        resume,
        stop_at: args.stop_at,
        quiet: args.quiet,
    }))
}

/// Each sweep whose values are all numbers, with its points: per variant,
/// its value, its line (its file and the other sweeps' values) and its
/// seeds' final validation losses.
fn swept(variants: &[Variant], curves: &[comparison::Variant]) -> Vec<(String, Vec<comparison::Swept>)> {
    let keys: Vec<String> =
        variants.first().map(|v| v.swept.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    keys.into_iter()
        .filter_map(|key| {
            let points = variants
                .iter()
                .zip(curves)
                .map(|(v, c)| {
                    let x = v.swept.iter().find(|(k, _)| *k == key)?.1.parse::<f64>().ok()?;
                    let others: String =
                        v.swept.iter().filter(|(k, _)| *k != key).map(|(k, value)| format!(".{k}={value}")).collect();
                    let losses = c.seeds.iter().map(|s| s.eval.last().map_or(f64::NAN, |p| p.1)).collect();
                    Some(comparison::Swept { line: format!("{}{others}", v.stem), x, losses })
                })
                .collect::<Option<Vec<_>>>()?;
            Some((key, points))
        })
        .collect()
}

/// The run directory of variant `v` with `seed`.
fn run_dir(out: &Path, v: &Variant, seed: u64) -> PathBuf {
    out.join(v.name()).join(format!("seed-{seed}"))
}

/// Variant `v`'s row from its first run's `run.json` and every seed's
/// metrics.
fn row(v: &Variant, first: &RunDir, seeds: &[Curves]) -> Row {
    let info = first.read_info().ok();
    let params = info.as_ref().map_or(0, |info| info.params);
    let last = |s: &plot::Series| s.last().map_or(f64::NAN, |p| p.1);
    let mean = |s: &plot::Series| s.iter().map(|p| p.1).sum::<f64>() / s.len().max(1) as f64;
    let finals: Vec<(f64, f64, f64, f64)> =
        seeds.iter().map(|c| (last(&c.train), last(&c.eval), mean(&c.tokens_per_s), last(&c.elapsed))).collect();
    let stats = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        let xs: Vec<f64> = finals.iter().map(f).collect();
        let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        [mean, xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)]
    };
    let flops = v
        .program
        .model
        .as_ref()
        .map_or(0, |m| blkc::graph::params::flops_per_token(m, &v.program.blocks[m.block], m.context));
    let eval_loss = stats(|x| x.1);
    Row {
        eval_bits_per_byte: info.and_then(|i| i.bits_per_byte(eval_loss[0])).filter(|b| b.is_finite()),
        variant: v.name(),
        file: v.file.display().to_string(),
        rejected: v.rejected,
        cosine: v.cosine,
        params,
        flops_per_token: flops as u64,
        seeds: finals.len(),
        loss: stats(|x| x.0),
        eval_loss,
        tokens_per_s: stats(|x| x.2)[0],
        seconds: stats(|x| x.3)[0],
    }
}

/// The table, in Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut t = String::from(
        "| variant | check (final cosine) | parameters | MFLOP/token | seeds | train loss | validation loss | validation bits/byte | tokens/s | seconds |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let spread = |x: [f64; 3]| format!("{:.4} ({:.4}–{:.4})", x[0], x[1], x[2]);
    for r in rows {
        t.push_str(&format!(
            "| {} | {} ({:.3}) | {} | {:.1} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
            r.variant,
            if r.rejected { "rejected" } else { "passes" },
            r.cosine,
            r.params,
            r.flops_per_token as f64 / 1e6,
            r.seeds,
            spread(r.loss),
            spread(r.eval_loss),
            r.eval_bits_per_byte.map_or_else(|| "—".into(), |b| format!("{b:.4}")),
            r.tokens_per_s,
            r.seconds
        ));
    }
    t
}
