//! `blkc train FILE`: trains the file's model on CPU (default) or CUDA,
//! writing metrics, plots and checkpoints to a run directory;
//! `--resume DIR` continues a run.

use std::path::PathBuf;

use blkc::signal::report::{reports, Request};
use blkc::signal::verdict::Status;
use blkc::span::FileId;

use super::{compile_reported, Device, BROKEN, OK, REJECTED};
use crate::report::{self, DiagFormat};
use crate::train::rundir::RunDir;
use crate::train::settings::{self, Settings};
use crate::train::{self, Failure, Job};

/// Exit status of a run stopped by Ctrl-C (after its checkpoint).
const INTERRUPTED: u8 = 130;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .blk file with a model (and usually a `train` section).
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Where to run (overrides the file's `device`).
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// Training text: `python-stdlib`, a directory, a file or a glob.
    #[arg(long)]
    pub data: Option<String>,
    /// Steps to train (the total, also when resuming).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run directory (default `runs/<model name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its newest checkpoint.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["file", "out"])]
    pub resume: Option<PathBuf>,
    /// Override any `train` setting, e.g. `--set lr=3e-4 --set batch=32`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Stop once N steps are done, with a checkpoint, as if interrupted.
    #[arg(long, value_name = "N")]
    pub stop_at: Option<u64>,
    /// Train even when the signal check predicts collapse at init.
    #[arg(long)]
    pub no_check: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: &Args) -> u8 {
    let mut overrides = args.set.clone();
    if let Some(d) = &args.data {
        overrides.push(format!("data={d}"));
    }
    if let Some(n) = args.steps {
        overrides.push(format!("steps={n}"));
    }
    if let Some(d) = args.device {
        overrides.push(format!("device={}", d.name()));
    }
    let extra = match settings::overrides(&overrides) {
        Ok(t) => t,
        Err(e) => {
            eprint!("{e}");
            return BROKEN;
        }
    };
    let job = if let Some(dir) = &args.resume {
        let run = RunDir::new(dir);
        let info = match run.read_info() {
            Ok(i) => i,
            Err(e) => return fail(&e),
        };
        let (program, sources) = match train::compile_saved(&run) {
            Ok(x) => x,
            Err(e) => return fail(&e),
        };
        let mut s = info.settings.clone();
        if let Some(t) = &extra {
            s.apply(t);
        }
        Job {
            program,
            sources,
            file: info.file,
            settings: s,
            out: dir.clone(),
            resume: true,
            stop_at: args.stop_at,
            quiet: args.quiet,
        }
    } else {
        let Some(file) = &args.file else { return fail("give a .blk file to train, or --resume DIR") };
        let Some(c) = compile_reported(file) else { return BROKEN };
        let Some(program) = c.program else { return BROKEN };
        let Ok(model) = train::model_of(&program) else {
            eprintln!(
                "error[E5001]: `{}` defines no model to train; write a `model` section (see examples/small/sas-p.blk)",
                file.display()
            );
            return BROKEN;
        };
        if !args.no_check && !signal_check(&program, &c.sources, args.quiet) {
            return REJECTED;
        }
        let mut s = Settings::default();
        if let Some(t) = &program.train {
            s.apply(t);
        }
        if let Some(t) = &extra {
            s.apply(t);
        }
        let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(train::model_name(model)));
        Job {
            program,
            sources: c.sources,
            file: file.display().to_string(),
            settings: s,
            out,
            resume: false,
            stop_at: args.stop_at,
            quiet: args.quiet,
        }
    };
    train::handle_interrupts();
    let result = match job.settings.device.as_str() {
        "cuda" => on_cuda(&job),
        _ => train::train::<burn::backend::Autodiff<crate::backend::Cpu>>(&job, &Default::default()),
    };
    match result {
        Ok(s) => {
            if !job.quiet {
                let eval = s.eval_loss.map(|e| format!(", validation loss {e:.4}")).unwrap_or_default();
                eprintln!(
                    "{} at step {}: loss {:.4}{eval}; {:.0} tokens/s, data pipeline {:.2} % of step time{}",
                    if s.interrupted { "stopped" } else { "done" },
                    s.steps,
                    s.loss,
                    s.tokens_per_s,
                    s.data_share * 100.0,
                    s.checkpoint.map(|c| format!("; checkpoint {}", c.display())).unwrap_or_default()
                );
            }
            if s.interrupted && args.stop_at.is_none_or(|n| s.steps < n) {
                INTERRUPTED
            } else {
                OK
            }
        }
        Err(Failure::Message(m)) => fail(&m),
        Err(Failure::Located(d, sources)) => {
            report::print(&[*d], &sources, DiagFormat::Human);
            REJECTED
        }
    }
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
        eprintln!("error: the signal check predicts that this model collapses at init; fix the block, or train anyway with --no-check");
    }
    ok
}

fn fail(msg: &str) -> u8 {
    eprintln!("error: {msg}");
    REJECTED
}

#[cfg(feature = "cuda")]
fn on_cuda(job: &Job) -> Result<train::Summary, Failure> {
    train::train::<burn::backend::Autodiff<crate::backend::Cuda>>(job, &Default::default())
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_job: &Job) -> Result<train::Summary, Failure> {
    Err(Failure::Message(
        "this blkc was built without CUDA; rebuild with `cargo build --release -p blkc-runtime --features cuda`".into(),
    ))
}
