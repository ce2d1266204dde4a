//! Subcommands of `blkc`, one file each, and what they share: argument
//! types, compiling a file from disk, and exit codes.

pub mod bench;
pub mod check;
pub mod compare;
pub mod eval;
pub mod export;
pub mod fill;
pub mod fmt;
pub mod graph;
pub mod lsp;
pub mod params;
pub mod sample;
pub mod tokenize;
pub mod train;

use std::path::{Path, PathBuf};

use blkc::{Compilation, FsLoader};
use clap::{Parser, Subcommand};

use crate::report::{self, DiagFormat};

/// Exit status: success.
pub const OK: u8 = 0;
/// Exit status: the input compiles but is rejected (or, for `fmt --check`,
/// would be reformatted).
pub const REJECTED: u8 = 1;
/// Exit status: the input does not compile.
pub const BROKEN: u8 = 2;

/// Version of the JSON that `params`, `bench` and `eval` print (docs/json.md);
/// bumped on any change that is not a pure addition. `check` has its own
/// (`blkc::signal::report::SCHEMA_VERSION`).
pub const JSON_VERSION: u32 = 1;

/// blkc: transformer blocks as text, checked for rank collapse before
/// training, lowered to burn and trained.
#[derive(Debug, Parser)]
#[command(
    name = "blkc",
    version,
    about = "blkc: a compiler for transformer blocks written as text. It checks a .blk file, predicts from \
             signal propagation whether the block stacked deep keeps its tokens apart at init (and rejects it if \
             not), and trains it on CPU or CUDA",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check .blk files: syntax, names, types, shapes and limits, then the
    /// signal check (does the stacked block keep tokens apart at init?).
    /// Exit 0 when clean, 1 when rejected, 2 when a file does not compile.
    Check(check::Args),
    /// Rewrite .blk files in the canonical layout (comments kept).
    Fmt(fmt::Args),
    /// Print a block's graph as Graphviz DOT or Mermaid.
    Graph(graph::Args),
    /// Count the parameters of a model, per component.
    Params(params::Args),
    /// Train a model: metrics, plots and checkpoints in a run directory.
    Train(train::Args),
    /// Validation loss of a trained checkpoint.
    Eval(eval::Args),
    /// Continue a prompt with a trained causal model.
    Sample(sample::Args),
    /// Fill the `<mask>`s of a text with a trained bidirectional model.
    Fill(fill::Args),
    /// Write a run's weights as safetensors for other tools.
    Export(export::Args),
    /// Write a text corpus as token files (train.bin, val.bin), split and
    /// packed as `train` would: a corpus of any size, in bounded memory
    /// (`--tokenizer bpe --vocab N` trains the BPE first, beside them).
    Tokenize(tokenize::Args),
    /// Time training steps of several models side by side.
    Bench(bench::Args),
    /// Train block variants side by side (same data, same batches per
    /// seed) and tabulate how they did; run again to finish or extend.
    Compare(compare::Args),
    /// The language server for editors, over stdio (diagnostics, hover
    /// with the signal verdict, definitions, formatting, completion).
    Lsp(lsp::Args),
}

/// Output of `params` and `bench`: a table for people or JSON for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
    /// burn's WebGPU backend (Vulkan, Metal, DX12): fp32 only.
    Wgpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Wgpu => "wgpu",
        }
    }
}

/// The precision of the weight products, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Auto,
    Fp32,
    Tf32,
    Bf16,
}

impl PrecisionArg {
    pub fn name(self) -> &'static str {
        match self {
            PrecisionArg::Auto => "auto",
            PrecisionArg::Fp32 => "fp32",
            PrecisionArg::Tf32 => "tf32",
            PrecisionArg::Bf16 => "bf16",
        }
    }

    /// The precision on `device`.
    pub fn on(self, device: Device) -> crate::kernels::precision::Precision {
        crate::kernels::precision::Precision::resolve(self.name(), device.name())
    }
}

/// A command that runs on any backend (`eval`, `sample`, `fill`).
pub trait Generic {
    fn run<B: crate::kernels::Kernels>(&self, device: &B::Device) -> Result<(), String>;
}

/// Runs `cmd` on `device` — the CPU, or CUDA where this build has it and it
/// runs here — and prints its error: the exit status.
pub fn dispatch(device: Device, what: &str, cmd: &impl Generic) -> u8 {
    let result = match device {
        Device::Cpu => cmd.run::<crate::backend::Cpu>(&Default::default()),
        Device::Cuda => {
            if let Err(e) = crate::backend::cuda() {
                errln!("error: cannot {what} on CUDA: {e}");
                return train::NO_DEVICE;
            }
            on_cuda(cmd)
        }
        Device::Wgpu => {
            if let Err(e) = crate::backend::wgpu() {
                errln!("error: cannot {what} on wgpu: {e}");
                return train::NO_DEVICE;
            }
            on_wgpu(cmd)
        }
    };
    match result {
        Ok(()) => OK,
        Err(e) => {
            errln!("error: {e}");
            REJECTED
        }
    }
}

#[cfg(feature = "cuda")]
fn on_cuda(cmd: &impl Generic) -> Result<(), String> {
    crate::backend::fused_or_not!(Cuda, |B| cmd.run::<B>(&Default::default()))
}

#[cfg(not(feature = "cuda"))]
fn on_cuda(_: &impl Generic) -> Result<(), String> {
    crate::backend::cuda().map(|_| ())
}

#[cfg(feature = "wgpu")]
fn on_wgpu(cmd: &impl Generic) -> Result<(), String> {
    crate::backend::fused_or_not!(Wgpu, |B| cmd.run::<B>(&Default::default()))
}

#[cfg(not(feature = "wgpu"))]
fn on_wgpu(_: &impl Generic) -> Result<(), String> {
    crate::backend::wgpu().map(|_| ())
}

/// The name standard input has in diagnostics (`-` on the command line).
pub const STDIN: &str = "<stdin>";

/// Whether `path` is `-`, standard input.
pub fn is_stdin(path: &Path) -> bool {
    path == Path::new("-")
}

/// `path` as diagnostics name it: [`STDIN`] for `-`.
pub fn shown(path: &Path) -> &Path {
    if is_stdin(path) {
        Path::new(STDIN)
    } else {
        path
    }
}

/// Standard input as the root file (its `use`s read from disk, relative to
/// the working directory).
#[derive(Debug)]
struct Stdin(String);

impl blkc::Loader for Stdin {
    fn load(&self, path: &Path) -> Result<String, String> {
        if path == Path::new(STDIN) {
            return Ok(self.0.clone());
        }
        blkc::Loader::load(&FsLoader, path)
    }
}

/// Standard input as text, up to the compiler's file limit.
pub fn read_stdin() -> Result<String, String> {
    let mut bytes = Vec::new();
    let limit = blkc::source::MAX_FILE_BYTES as u64;
    std::io::Read::read_to_end(&mut std::io::Read::take(std::io::stdin().lock(), limit + 1), &mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("it is larger than the {} KiB limit", limit / 1024));
    }
    String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8 text".into())
}

/// Compiles `path` from disk (`-`: standard input, named [`STDIN`]) with
/// the `--set` pairs `sets` (model settings and params). On an unreadable
/// root file, prints why and returns `None`.
pub fn compile(path: &Path, sets: &[String], format: DiagFormat) -> Option<Compilation> {
    let compiled = if is_stdin(path) {
        read_stdin().and_then(|text| blkc::compile_with(Path::new(STDIN), &Stdin(text), sets))
    } else {
        blkc::compile_with(path, &FsLoader, sets)
    };
    match compiled {
        Ok(c) => Some(c),
        Err(why) => {
            unreadable(path, &why, format);
            None
        }
    }
}

/// Reports a file that cannot be read at all.
pub fn unreadable(path: &Path, why: &str, format: DiagFormat) {
    match format {
        DiagFormat::Human => errln!("error[E2012]: cannot read `{}`: {why}", path.display()),
        DiagFormat::Json => {
            // The shape of every `check --format json` line; a file that
            // cannot be read has no position (`null`), not line 0.
            let file = path.display().to_string();
            let diagnostic = serde_json::json!({"code": "E2012", "severity": "error",
                "message": format!("cannot read `{file}`: {why}"), "file": file, "line": null, "column": null,
                "end_line": null, "end_column": null, "label": "", "help": "check the path"});
            outln!(
                "{}",
                serde_json::json!({"schema_version": blkc::signal::report::SCHEMA_VERSION, "file": file,
                    "verdict": "error", "layers": [], "diagnostics": [diagnostic]})
            );
        }
        DiagFormat::Github => outln!("::error file={},title=E2012::cannot read file: {why}", path.display()),
    }
}

/// Compiles (with `sets`) and prints diagnostics; `None` when the file
/// does not compile.
pub fn compile_reported(path: &Path, sets: &[String]) -> Option<Compilation> {
    let c = compile(path, sets, DiagFormat::Human)?;
    report::print(&c.diagnostics, &c.sources, DiagFormat::Human);
    c.program.is_some().then_some(c)
}

/// `--set KEY=VALUE` pairs split into training settings (the runtime's)
/// and the rest (model settings and params, the compiler's).
pub fn split_sets(all: &[String]) -> (Vec<String>, Vec<String>) {
    all.iter().cloned().partition(|p| !blkc::set::is_program_key(set_key(p)))
}

/// The key of a `KEY=VALUE` pair (the whole text without `=`).
pub fn set_key(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k).trim()
}

/// A list of paths from the command line.
pub type Files = Vec<PathBuf>;

/// Most files one folder argument of `check` or `fmt` stands for.
const FOLDER_FILES: usize = 100_000;

/// The FILE arguments of `check` and `fmt` as files: a folder stands for
/// the `.blk` files under it (hidden folders, `target` and `node_modules`
/// left out, links not followed), in path order, as `blkc check blocks/`
/// is meant. A folder without any, or too large to search whole, stays
/// as itself with the reason, to be reported as a file that cannot be read.
pub fn blk_arguments(paths: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    let mut out = Vec::new();
    for path in paths {
        if !path.is_dir() {
            out.push((path.clone(), None));
            continue;
        }
        let found = blkc::source::blk_files(path, FOLDER_FILES);
        if !found.complete {
            let why = format!(
                "it is a folder too large to search whole ({FOLDER_FILES} files or {} entries at most): name a \
                 smaller one",
                blkc::source::MAX_ENTRIES
            );
            out.push((path.clone(), Some(why)));
        } else if found.files.is_empty() {
            out.push((path.clone(), Some("it is a folder without .blk files".into())));
        } else {
            out.extend(found.files.into_iter().map(|f| (f, None)));
        }
    }
    out
}
