//! `blkc train FILE`: trains the file's model on CPU (default) or CUDA,
//! writing metrics, plots and checkpoints to a run directory;
//! `--resume DIR` continues a run.

use std::path::{Path, PathBuf};

use blkc::signal::report::{reports, Request};
use blkc::signal::verdict::Status;
use blkc::span::FileId;

use super::{compile_reported, split_sets, Device, PrecisionArg, BROKEN, OK, REJECTED};
use crate::report::{self, DiagFormat};
use crate::train::rundir::RunDir;
use crate::train::settings::{self, Settings};
use crate::train::{self, memory, open, signals, Failure, Job, Resume};

/// Exit status when the device asked for cannot run (no CUDA driver, no
/// GPU, a build without CUDA).
pub const NO_DEVICE: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .blk file with a model (and usually a `train` section).
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Where to run (overrides the file's `device`).
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Train on N devices in data parallel (overrides the file's
    /// `devices`): CUDA GPUs 0 to N−1, each with a copy of the model and
    /// 1/N of every batch; on the CPU (and wgpu's default adapter), N
    /// copies share the one device.
    #[arg(long, value_name = "N")]
    pub devices: Option<u64>,
    /// The weight products (overrides the file's `precision`): `bf16`
    /// keeps fp32 weights, optimiser, norms, softmax and loss; `auto` is
    /// bf16 on CUDA, fp32 on the CPU.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Training text: `python-stdlib`, a directory, a file or a glob (quoted).
    #[arg(long)]
    pub data: Option<String>,
    /// Steps to train (the total, also when resuming).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run directory (default `runs/<model name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its newest complete checkpoint (or
    /// from the checkpoint directory given).
    /// FILE may be given too when it is the run's own source.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Start from the weights of a run's newest complete checkpoint (or
    /// of the checkpoint directory given) instead of an initialisation:
    /// continued training or fine-tuning, on this file's model (every
    /// weight's name and shape must match) with its settings, a fresh
    /// optimiser and schedule, and the checkpoint's tokenizer.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// When resuming: accept settings that change the learning-rate
    /// schedule (`--steps`, `lr`, `warmup`, `schedule`); the rate then
    /// follows the new schedule from the next step on.
    #[arg(long, requires = "resume")]
    pub reschedule: bool,
    /// Override a `train` setting (`--set lr=3e-4 --set batch=32`), a
    /// model setting (`--set depth=12`; a bare block gets the small model
    /// to set), a param (`--set beta_ff=0.2`) or a named attention or MLP
    /// section's setting (`--set local.window=64`), checked like the file's.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Stop once N steps are done, with a checkpoint, as if interrupted.
    #[arg(long, value_name = "N")]
    pub stop_at: Option<u64>,
    /// Train even when the signal check predicts collapse at init.
    #[arg(long)]
    pub no_check: bool,
    /// Train even when the memory estimate exceeds what is free.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> u8 {
    let (train_pairs, sets) = split_sets(&args.set);
    if args.resume.is_some() && !sets.is_empty() {
        return fail(&format!(
            "`--set {}` changes the model, and a resume continues the run's own model: train it into another \
             directory with --out",
            sets[0]
        ));
    }
    let extra = match settings::overrides(&train_pairs) {
        Ok(t) => t,
        Err(e) => {
            err!("{e}");
            return BROKEN;
        }
    };
    let job = match &args.resume {
        Some(path) => resumed(args, path, extra.as_ref()),
        None => fresh(args, extra.as_ref(), sets),
    };
    let job = match job {
        Ok(j) => j,
        Err(code) => return code,
    };
    if let Err(code) = fits(&job, args.no_memory_check) {
        return code;
    }
    signals::install();
    let result = match job.settings.device.as_str() {
        "cuda" => on_cuda(&job),
        "wgpu" => on_wgpu(&job),
        _ => on_cpu(&job),
    };
    match result {
        Ok(s) => {
            if !job.quiet {
                let eval = s.eval_loss.map(|e| format!(", validation loss {e:.4}")).unwrap_or_default();
                errln!(
                    "{} at step {}: loss {:.4}{eval}; {:.0} tokens/s, data pipeline {:.2} % of step time{}",
                    if s.interrupted { "stopped" } else { "done" },
                    s.steps,
                    s.loss,
                    s.tokens_per_s,
                    s.data_share * 100.0,
                    s.checkpoint.map(|c| format!("; checkpoint {}", c.display())).unwrap_or_default()
                );
            }
            s.signal.map_or(OK, signals::exit_status)
        }
        Err(Failure::Message(m)) => fail(&m),
        Err(Failure::Located(d, sources)) => {
            report::print(&[*d], &sources, DiagFormat::Human);
            REJECTED
        }
    }
}

/// The flags that name a setting.
fn flags(args: &Args) -> settings::Flags {
    settings::Flags {
        data: args.data.clone(),
        steps: args.steps,
        device: args.device.map(|d| d.name().to_string()),
        seed: None,
        precision: args.precision.map(|p| p.name().to_string()),
        devices: args.devices,
    }
}

/// The job of a new run of `args.file`.
fn fresh(args: &Args, extra: Option<&blkc::graph::Train>, sets: Vec<String>) -> Result<Job, u8> {
    let Some(file) = &args.file else { return Err(fail("give a .blk file to train, or --resume DIR")) };
    let c = compile_reported(file, &sets).ok_or(BROKEN)?;
    let Some(mut program) = c.program else { return Err(BROKEN) };
    if program.model.is_none() {
        program.model = bare_model(&program, file, true);
    }
    let Ok(model) = train::model_of(&program) else {
        errln!(
            "error[E5001]: `{}` defines no model to train, and more than one block; write a `model` section (see \
             examples/small/sas-p.blk)",
            file.display()
        );
        return Err(BROKEN);
    };
    if !args.no_check && !signal_check(&program, &c.sources, args.quiet) {
        return Err(REJECTED);
    }
    let file_train = program.train.as_ref().map(|t| (t, &c.sources));
    let s = Settings::of_run(file_train, extra, &flags(args)).map_err(|e| {
        err!("{e}");
        BROKEN
    })?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(train::model_name(model)));
    let init_from = match &args.init_from {
        Some(path) => Some(open::init_from(path).map_err(|e| fail(&format!("--init-from: {e}")))?),
        None => None,
    };
    Ok(Job {
        program,
        sources: c.sources,
        sets,
        file: file.display().to_string(),
        settings: s,
        out,
        resume: None,
        init_from,
        stop_at: args.stop_at,
        quiet: args.quiet,
    })
}

/// The small CPU model around the one block a file without a `model`
/// defines (`small_<block>`), as `blkc bench` measures it; `None` when it
/// defines several. `say`: a note says so.
pub(super) fn bare_model(p: &blkc::Program, file: &Path, say: bool) -> Option<blkc::graph::Model> {
    let own: Vec<&blkc::graph::BlockIr> = p.blocks.iter().filter(|b| b.span.file == FileId(0)).collect();
    let [block] = own.as_slice() else { return None };
    let model = train::small_model(p, &block.name, &format!("small_{}", block.name))?;
    if say {
        errln!("note: `{}` has no model: training block `{}` in the small model (6 × 256)", file.display(), block.name);
    }
    Some(model)
}

/// The job that continues the run at `path` (a run directory or one of
/// its checkpoints).
fn resumed(args: &Args, path: &Path, extra: Option<&blkc::graph::Train>) -> Result<Job, u8> {
    let (dir, checkpoint) = open::split(path);
    let run = RunDir::new(&dir);
    let info = open::read_info(&run).map_err(|e| fail(&e))?;
    let (program, sources) = open::compile_saved(&run).map_err(|e| fail(&e))?;
    if let Some(file) = &args.file {
        same_source(file, &sources, &dir)?;
    }
    let s = info.settings.clone().overridden(extra, &flags(args)).map_err(|e| {
        err!("{e}");
        BROKEN
    })?;
    Ok(Job {
        program,
        sources,
        sets: Vec::new(),
        file: info.file.clone(),
        settings: s,
        out: dir,
        init_from: info.init_from.clone(),
        resume: Some(Resume { checkpoint, before: info, reschedule: args.reschedule }),
        stop_at: args.stop_at,
        quiet: args.quiet,
    })
}

/// `blkc train FILE --resume DIR`: accepted when FILE (and every file it
/// uses) reads as the run's saved source; refused, saying so, when not —
/// a resume trains the model the run started with.
fn same_source(file: &Path, saved: &blkc::SourceMap, dir: &Path) -> Result<(), u8> {
    let given = compile_reported(file, &[]).ok_or(BROKEN)?;
    let texts = |m: &blkc::SourceMap| train::source_files(m).into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    if texts(&given.sources) == texts(saved) {
        return Ok(());
    }
    Err(fail(&format!(
        "`{}` differs from the source `{}` was trained from (its sources.json); a resume continues the run's own \
         model: resume without the file, or train the changed file into another directory with --out",
        file.display(),
        dir.display()
    )))
}

/// Checks that the device can run and that the run fits in its memory,
/// before anything is created on disk.
pub(super) fn fits(job: &Job, no_memory_check: bool) -> Result<(), u8> {
    let Ok(model) = train::model_of(&job.program) else { return Err(BROKEN) };
    let rows = job.settings.micro();
    if let Err(e) = job.settings.products().on_device(&job.settings.device) {
        errln!("error: {e}");
        return Err(REJECTED);
    }
    if let Err(e) = job.settings.accumulation() {
        errln!("error: {e}");
        return Err(REJECTED);
    }
    let devices = job.settings.devices;
    if devices > 1 && job.settings.device != "cpu" && crate::backend::fusion() {
        // Measured on wgpu (runtime/tests/device.rs): two copies' losses
        // part from one copy's at the second step (8.35 against 8.34,
        // up to 53 from run to run), with or without blkc's kernels, and
        // with the sums on the host (bench/NOTES.md).
        errln!("error: {}", train::parallel::not_under_fusion(devices));
        return Err(NO_DEVICE);
    }
    let data = if no_memory_check {
        0
    } else {
        corpus_fits(&job.settings.data, job.settings.tokenizer == "bytes", model.context, "trains").map_err(|e| {
            errln!("error: {e}");
            REJECTED
        })?
    };
    let host = memory::available();
    let kept = memory::Kept::on(&job.settings.device, job.settings.products(), model.context);
    let estimate = memory::estimate(&job.program, model, rows, kept);
    let (have, what) = if job.settings.device == "cuda" {
        let gpu = crate::backend::cuda().map_err(|e| {
            errln!("error: cannot train on CUDA: {e}");
            NO_DEVICE
        })?;
        if gpu.count < devices as usize {
            errln!(
                "error: cannot train on {devices} GPUs: this machine has {} (CUDA_VISIBLE_DEVICES may hide some); use \
                 --devices {}",
                gpu.count,
                gpu.count
            );
            return Err(NO_DEVICE);
        }
        let which = if devices > 1 { "each GPU".to_string() } else { format!("the GPU ({})", gpu.name) };
        (Some(u128::from(gpu.free)), which)
    } else if job.settings.device == "wgpu" {
        // WebGPU does not say how much memory its adapter has.
        crate::backend::wgpu().map_err(|e| {
            errln!("error: cannot train on wgpu: {e}");
            NO_DEVICE
        })?;
        (None, String::new())
    } else if data > 0 {
        // The model shares the host with the corpus.
        (
            host.map(|h| h.saturating_sub(data)),
            format!("this machine (besides the {} the data takes)", memory::gib(data)),
        )
    } else {
        (host, "this machine".to_string())
    };
    // Every copy of the model on the CPU shares its memory (and wgpu's,
    // whose copies share its one adapter); each GPU holds one.
    let copies = if job.settings.device == "cuda" { 1 } else { devices };
    if no_memory_check {
        return Ok(());
    }
    let Some(have) = have else { return Ok(()) };
    // With fewer devices, each takes a larger share of the batch.
    let per_copy = |d: u64| {
        let s = crate::train::settings::Settings { devices: d, ..job.settings.clone() };
        s.accumulation().ok()?;
        let e = memory::estimate(&job.program, model, s.micro(), kept);
        Some(e.parameters + e.activations + e.logits)
    };
    memory::check(&estimate, have, &what, rows, model, copies, &per_copy).map_err(|e| {
        errln!("error: {e} (an estimate; --no-memory-check trains anyway)");
        REJECTED
    })
}

/// The memory reading the corpus `data` will hold (`data::footprint`: a
/// text corpus whole, token files the order of their windows), refused
/// where this machine has not that much free; `what` is what
/// `--no-memory-check` does anyway. A corpus that cannot be read passes
/// here, to be reported where it is read.
pub(super) fn corpus_fits(data: &str, bytes_tokenizer: bool, context: u64, what: &str) -> Result<u128, String> {
    let Ok((need, text)) = train::data::footprint(data, bytes_tokenizer, context) else { return Ok(0) };
    let Some(host) = memory::available().filter(|&h| memory::BASE + need > h) else { return Ok(need) };
    let (held, way) = if text {
        (
            "a text corpus is held whole, as text and as token ids",
            "pre-tokenise it (`blkc tokenize DATA --tokenizer T --out DIR`: token files are read from disk as \
             training goes; docs/training.md), or use a part of it",
        )
    } else {
        ("the order of a token corpus's windows is held whole, 4 bytes a window", "use a part of it")
    };
    Err(format!(
        "reading `{data}` needs about {} of memory but this machine has {} free: {held} (an estimate; \
         --no-memory-check {what} anyway); {way} (a smaller directory, or a glob: `--data 'corpus/part-0*'`)",
        memory::gib(memory::BASE + need),
        memory::gib(host)
    ))
}

/// The signal check of `blkc check` on the model to train: prints its
/// findings; false when it rejects the model.
fn signal_check(program: &blkc::Program, sources: &blkc::SourceMap, quiet: bool) -> bool {
    let reports = reports(program, FileId(0), &Request::default());
    let mut ok = true;
    for r in &reports {
        let rejected = r.verdict == Status::Reject;
        ok &= !rejected;
        if rejected || !quiet {
            report::print(&r.diagnostics, sources, DiagFormat::Human);
        }
    }
    if !ok {
        errln!("error: the signal check predicts that this model collapses at init; fix the block, or train anyway with --no-check");
    }
    ok
}

fn fail(msg: &str) -> u8 {
    errln!("error: {msg}");
    REJECTED
}

/// The CPU: the one device, shared by every copy of the model in data
/// parallel (which checks a multi-device run before it goes to GPUs).
pub(super) fn on_cpu(job: &Job) -> Result<train::Summary, Failure> {
    train::train::<burn::backend::Autodiff<crate::backend::Cpu>>(job, &shared(job))
}

/// The default device once for each copy of the model the run asks for.
fn shared<D: Default + Clone>(job: &Job) -> Vec<D> {
    vec![D::default(); job.settings.devices.max(1) as usize]
}

/// CUDA GPUs 0 to `devices` − 1.
#[cfg(feature = "cuda")]
pub(super) fn on_cuda(job: &Job) -> Result<train::Summary, Failure> {
    let devices: Vec<_> =
        (0..job.settings.devices.max(1) as usize).map(|index| burn::backend::cuda::CudaDevice { index }).collect();
    crate::backend::fused_or_not!(Cuda, |B| train::train::<burn::backend::Autodiff<B>>(job, &devices))
}

#[cfg(not(feature = "cuda"))]
pub(super) fn on_cuda(_job: &Job) -> Result<train::Summary, Failure> {
    Err(Failure::Message(crate::backend::cuda().err().unwrap_or_default()))
}

#[cfg(feature = "wgpu")]
pub(super) fn on_wgpu(job: &Job) -> Result<train::Summary, Failure> {
    // The default adapter, shared by every copy (as the CPU is).
    crate::backend::fused_or_not!(Wgpu, |B| train::train::<burn::backend::Autodiff<B>>(job, &shared(job)))
}

#[cfg(not(feature = "wgpu"))]
pub(super) fn on_wgpu(_job: &Job) -> Result<train::Summary, Failure> {
    Err(Failure::Message(crate::backend::wgpu().err().unwrap_or_default()))
}
