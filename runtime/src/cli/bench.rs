//! `blkc bench FILE…`: parameters, FLOPs per token, and measured training
//! step, forward, tokens/s and peak memory of each model, interleaved, with
//! speed ratios against the first file. A bare block is measured in the
//! small CPU model of examples/small/.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use blkc::span::FileId;

use super::{compile_reported, Device, Format, PrecisionArg, BROKEN, OK, REJECTED};
use crate::bench::{self, Plan, Record, Subject};
use crate::kernels::precision::Precision;
use crate::train::memory;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// .blk files: models, or bare blocks (measured in the small model).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// The weight products: `bf16` (fp32 weights, optimiser, norms,
    /// softmax, loss), `fp32`, or `auto` (bf16 on CUDA, fp32 on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub precision: PrecisionArg,
    /// Timed rounds (one step of every model per round).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed rounds first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `human` (a table) or `json` (one object, docs/json.md).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Give a model setting, a param or a section's setting another value
    /// in every file, e.g. `--set depth=12` or `--set local.window=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where a training step's time goes, by GPU kernel (`--device cuda`
    /// or `wgpu`, one model): every launch is timed on the device and waits
    /// for the one before, so the step times printed with it are slower
    /// than without.
    #[arg(long)]
    pub profile: bool,
    /// Run even when the memory estimate exceeds what is free.
    #[arg(long)]
    pub no_memory_check: bool,
}

pub fn run(args: &Args) -> u8 {
    if args.batch == 0 || args.steps == 0 {
        errln!("error: --{} must be at least 1", if args.batch == 0 { "batch" } else { "steps" });
        return BROKEN;
    }
    let mut subjects = Vec::new();
    for f in &args.files {
        let Some(c) = compile_reported(f, &args.set) else { return BROKEN };
        let Some(p) = c.program else { return BROKEN };
        let models = p.analysed_models(FileId(0));
        if models.is_empty() {
            errln!("error[E5001]: `{}` defines no block or model to benchmark", f.display());
            return BROKEN;
        }
        for (m, bare) in models {
            subjects.push(Subject { file: f.display().to_string(), program: p.clone(), model: m, bare });
        }
    }
    // The threads first: the memory estimate counts the scratch each holds
    // (and asking their number starts the pool).
    if let Some(n) = args.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global() {
            errln!("error: cannot set {n} threads: {e}");
            return REJECTED;
        }
    }
    let estimates = estimates(&subjects, args.batch as u64, args.device, args.precision.on(args.device));
    if !args.no_memory_check {
        if let Err(e) = fits(&estimates, args.batch, args.device) {
            errln!("error: {e} (an estimate; --no-memory-check runs anyway)");
            return REJECTED;
        }
    }
    let precision = match args.precision.on(args.device).on_device(args.device.name()) {
        Ok(p) => p,
        Err(e) => {
            errln!("error: {e}");
            return REJECTED;
        }
    };
    let profile_log = std::env::temp_dir().join(format!("blkc-profile-{}.log", std::process::id()));
    if args.profile {
        if args.device == Device::Cpu {
            errln!("error: --profile times GPU kernels: give --device cuda or --device wgpu");
            return REJECTED;
        }
        if subjects.len() != 1 {
            errln!("error: --profile measures one model at a time; {} were given", subjects.len());
            return REJECTED;
        }
        if let Err(e) = crate::profile::enable(&profile_log) {
            errln!("error: {e}");
            return REJECTED;
        }
    }
    let plan = Plan { batch: args.batch, warmup: args.warmup, steps: args.steps, precision, steps_only: args.profile };
    let show = args.format == Format::Human && std::io::stderr().is_terminal();
    let mut progress = |r: usize, n: usize| {
        if show {
            err!("\r\x1b[2Kround {r}/{n}");
            let _ = std::io::stderr().flush();
        }
    };
    let (mut records, device) = match args.device {
        Device::Cpu => on::<crate::backend::Cpu>(&subjects, plan, &mut progress),
        Device::Cuda => match crate::backend::cuda().and_then(|_| cuda(&subjects, plan, &mut progress)) {
            Ok(x) => x,
            Err(e) => {
                errln!("error: cannot benchmark on CUDA: {e}");
                return super::train::NO_DEVICE;
            }
        },
        Device::Wgpu => match crate::backend::wgpu().and_then(|_| wgpu(&subjects, plan, &mut progress)) {
            Ok(x) => x,
            Err(e) => {
                errln!("error: cannot benchmark on wgpu: {e}");
                return super::train::NO_DEVICE;
            }
        },
    };
    if show {
        errln!();
    }
    for (r, e) in records.iter_mut().zip(&estimates) {
        r.estimate_mib = Some(e.step() as f64 / f64::from(1u32 << 20));
    }
    let profile = if args.profile {
        let read = crate::profile::read(&profile_log, plan.warmup.max(1) + plan.steps.max(1), plan.steps.max(1));
        let _ = std::fs::remove_file(&profile_log);
        match read {
            Ok(rows) if !rows.is_empty() => Some(rows),
            Ok(_) => {
                errln!("error: the profile logged no kernel launch");
                return REJECTED;
            }
            Err(e) => {
                errln!("error: {e}");
                return REJECTED;
            }
        }
    } else {
        None
    };
    let fused = !matches!(args.device, Device::Cpu) && crate::backend::fusion();
    match args.format {
        Format::Json => {
            let out = serde_json::json!({
                "schema_version": super::JSON_VERSION,
                "command": "bench",
                "device": device,
                "precision": plan.precision.name(),
                "attention": crate::kernels::attention::Route::current().name(),
                "fusion": fused,
                "batch": plan.batch,
                "steps": plan.steps,
                "warmup": plan.warmup,
                "records": records,
                "profile": profile,
            });
            outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Human => {
            let device = if fused { format!("{device} under burn's operation fusion") } else { device };
            out!("{}", table(&records, &device, plan, args.threads));
            if let Some(rows) = &profile {
                outln!(
                    "\nGPU kernels of a training step (mean of the {} timed steps, after the warm-up; the step times \
                     above are slowed by the profile):",
                    plan.steps.max(1)
                );
                out!("{}", crate::profile::table(rows, 0.95));
            }
        }
    }
    OK
}

/// Refuses to benchmark models whose `estimates` (`blkc train`'s, at
/// `batch`) exceed the memory `device` has free: every model is built at
/// once, with its gradients and optimiser state, and steps one at a time.
/// Passes where the free memory is unknown (wgpu, or a CUDA device that
/// cannot be reached: the benchmark then says why).
fn fits(estimates: &[memory::Estimate], batch: usize, device: Device) -> Result<(), String> {
    let (have, what) = match device {
        Device::Cpu => (memory::available(), "this machine".to_string()),
        Device::Cuda => match crate::backend::cuda() {
            Ok(gpu) => (Some(u128::from(gpu.free)), format!("the GPU ({})", gpu.name)),
            Err(_) => (None, String::new()),
        },
        Device::Wgpu => (None, String::new()),
    };
    let Some(have) = have else { return Ok(()) };
    let rows = batch as u64;
    let parameters: u128 = estimates.iter().map(|e| e.parameters).sum();
    let step = estimates.iter().map(|e| e.activations + e.logits).max().unwrap_or(0);
    let need = memory::BASE + parameters + step;
    if need <= have {
        return Ok(());
    }
    let per_row = (step / u128::from(rows.max(1))).max(1);
    let room = have.saturating_sub(memory::BASE + parameters) / per_row;
    let models = if estimates.len() == 1 { "the model".to_string() } else { format!("{} models", estimates.len()) };
    let hint = if room >= 1 {
        format!("--batch {room} or less fits")
    } else if memory::BASE + parameters > have {
        format!(
            "benchmark fewer or smaller models: their weights and optimiser state alone need {}",
            memory::gib(parameters)
        )
    } else {
        format!("even a batch of one needs {} for its step", memory::gib(per_row))
    };
    Err(format!(
        "benchmarking {models} at batch {batch} needs about {} of memory but {what} has {} free: parameters, \
         gradients and optimiser state {}, one step's activations and logits {}, and {} for the process; {hint}",
        memory::gib(need),
        memory::gib(have),
        memory::gib(parameters),
        memory::gib(step),
        memory::gib(memory::BASE)
    ))
}

/// `train`'s memory estimate of each of `subjects` at micro-batches of
/// `rows` on `device`.
fn estimates(subjects: &[Subject], rows: u64, device: Device, precision: Precision) -> Vec<memory::Estimate> {
    let kept = |s: &Subject| memory::Kept::on(device.name(), precision, s.model.context);
    subjects.iter().map(|s| memory::estimate(&s.program, &s.model, rows, kept(s))).collect()
}

/// The records of `subjects` on backend `B`'s default device, and its name.
fn on<B: crate::kernels::Kernels>(
    subjects: &[Subject],
    plan: Plan,
    progress: &mut dyn FnMut(usize, usize),
) -> (Vec<Record>, String) {
    let device = Default::default();
    (bench::run::<burn::backend::Autodiff<B>>(subjects, plan, &device, progress), bench::device_name::<B>(&device))
}

#[cfg(feature = "cuda")]
fn cuda(
    subjects: &[Subject],
    plan: Plan,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Record>, String), String> {
    Ok(crate::backend::fused_or_not!(Cuda, |B| on::<B>(subjects, plan, progress)))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &[Subject], _: Plan, _: &mut dyn FnMut(usize, usize)) -> Result<(Vec<Record>, String), String> {
    crate::backend::cuda().map(|_| (Vec::new(), String::new()))
}

#[cfg(feature = "wgpu")]
fn wgpu(
    subjects: &[Subject],
    plan: Plan,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<Record>, String), String> {
    Ok(crate::backend::fused_or_not!(Wgpu, |B| on::<B>(subjects, plan, progress)))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: &[Subject], _: Plan, _: &mut dyn FnMut(usize, usize)) -> Result<(Vec<Record>, String), String> {
    crate::backend::wgpu().map(|_| (Vec::new(), String::new()))
}

/// The terminal table.
pub fn table(records: &[Record], device: &str, plan: Plan, threads: Option<usize>) -> String {
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or("all".into(), |n| n.to_string()),
        |n| n.to_string(),
    );
    let mut out = format!(
        "{device}, {threads} thread(s), {} products, batch {}, {} timed rounds after {} warm-up (median; spread min–max)\n\n",
        plan.precision.name(),
        plan.batch,
        plan.steps,
        plan.warmup
    );
    let memory = if records.iter().any(|r| r.memory == "device") { "dev MiB" } else { "step MiB" };
    let name = |r: &Record| if r.bare { format!("{} (small)", r.file) } else { r.file.clone() };
    // The first column as wide as the longest name (the rest stay aligned).
    let wide = records.iter().map(|r| name(r).chars().count()).max().unwrap_or(0).max(34);
    out.push_str(&format!(
        "{:<wide$} {:>11} {:>9} {:>19} {:>10} {:>9} {:>8} {:>5} {:>9} {:>7}\n",
        "file", "params", "MFLOP/tok", "step ms", "fwd ms", "tok/s", "GFLOP/s", "MFU", memory, "speed"
    ));
    for r in records {
        out.push_str(&format!(
            "{:<wide$} {:>11} {:>9.1} {:>8.1} ({:>4.0}–{:<4.0}) {:>10} {:>9.0} {:>8.1} {:>5} {:>9} {:>6.3}×\n",
            name(r),
            r.params,
            r.flops_per_token as f64 / 1e6,
            r.step_ms,
            r.step_ms_min,
            r.step_ms_max,
            if r.forward_ms.is_finite() { format!("{:.1}", r.forward_ms) } else { "–".into() },
            r.tokens_per_s,
            r.gflops,
            r.mfu.map_or("–".into(), |m| format!("{:.0}%", m * 100.0)),
            r.peak_mib.map_or("–".into(), |m| format!("{m:.0}")),
            r.speed_vs_first
        ));
    }
    if let Some(p) = records.first().and_then(|r| r.mfu.map(|m| r.gflops / m)) {
        out.push_str(&format!(
            "\nMFU: training FLOPs (3 × forward) per second over this device's rate for a large {} product, \
             measured now: {p:.0} GFLOP/s\n",
            plan.precision.name()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_stays_aligned_whatever_the_names() {
        let record = |file: &str, bare: bool| Record {
            file: file.into(),
            model: "m".into(),
            block: "b".into(),
            bare,
            params: 5_806_592,
            flops_per_token: 12_300_000,
            batch: 2,
            context: 128,
            step_ms: 102.1,
            step_ms_min: 101.0,
            step_ms_max: 103.0,
            forward_ms: 28.4,
            tokens_per_s: 2508.0,
            gflops: 92.7,
            peak_mib: Some(72.0),
            memory: "host",
            estimate_mib: Some(90.0),
            resident_mib: None,
            mfu: Some(0.56),
            speed_vs_first: 1.0,
        };
        let records = [record("/a/rather/long/path/to/blocks/skipless-naive.blk", true), record("b.blk", false)];
        let plan = Plan {
            batch: 2,
            warmup: 0,
            steps: 1,
            precision: crate::kernels::precision::Precision::Fp32,
            steps_only: false,
        };
        let text = table(&records, "flex", plan, Some(2));
        let lines: Vec<&str> = text.lines().skip(2).take(3).collect();
        // Every line's `params` column ends at the same place.
        let ends: Vec<usize> = lines
            .iter()
            .map(|l| {
                let token = if l.starts_with("file") { "params" } else { "5806592" };
                let at = l.find(token).unwrap_or_else(|| panic!("{l}"));
                l[..at].chars().count() + token.len()
            })
            .collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(lines[1].starts_with("/a/rather/long/path/to/blocks/skipless-naive.blk (small) "), "{text}");
    }
}
