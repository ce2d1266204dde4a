//! `blkc export RUN`: a run's weights for other tools, as safetensors with
//! the stable tensor names of docs/lowering.md and, in the file's header,
//! what is needed to rebuild the model (the `.blk` sources, the resolved
//! model, the step); `--format pytorch` adds a `model.py` that rebuilds the
//! model in plain PyTorch and loads them (`crate::export`).

use std::path::{Path, PathBuf};

use super::{OK, REJECTED};
use crate::train;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// The directory to write to (default: `RUN/export/`), or the file
    /// when it ends in `.safetensors` (`--format safetensors`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `safetensors` (the weights) or `pytorch` (the weights and a
    /// `model.py` that loads them into a PyTorch module).
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Safetensors,
    Pytorch,
}

pub fn run(args: &Args) -> u8 {
    match export(args) {
        Ok(path) => {
            outln!("{}", path.display());
            OK
        }
        Err(e) => {
            errln!("error: {e}");
            REJECTED
        }
    }
}

/// The directory and the weights' file: `--out` is the directory, or the
/// file itself when it is named `….safetensors` (a user who names the file
/// gets that file, not a directory of that name). The PyTorch export is a
/// directory: its `model.py` loads `model.safetensors` beside it.
fn destination(args: &Args, run: &Path) -> Result<(PathBuf, PathBuf), String> {
    let Some(out) = &args.out else {
        let dir = run.join("export");
        return Ok((dir.clone(), dir.join("model.safetensors")));
    };
    let named = out.extension().is_some_and(|x| x.eq_ignore_ascii_case("safetensors")) && !out.is_dir();
    match (named, args.format) {
        (false, _) => Ok((out.clone(), out.join("model.safetensors"))),
        (true, ExportFormat::Safetensors) => {
            let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Ok((dir.to_path_buf(), out.clone()))
        }
        (true, ExportFormat::Pytorch) => Err(format!(
            "--format pytorch writes a directory (`model.py` loads `model.safetensors` beside it): give --out a \
             directory, not `{}`",
            out.display()
        )),
    }
}

fn export(args: &Args) -> Result<PathBuf, String> {
    let device = Default::default();
    let run = train::open::open::<crate::backend::Cpu>(&args.checkpoint, &device)?;
    if let Some(note) = &run.note {
        errln!("warning: {note}");
    }
    let (dir, out) = destination(args, &run.dir.root)?;
    std::fs::create_dir_all(&dir).map_err(|e| crate::durable::describe("create", &dir, &e))?;
    let sources = std::fs::read_to_string(run.dir.sources()).unwrap_or_default();
    let info = serde_json::to_string(&run.info.resolved_model).unwrap_or_default();
    let metadata = [
        ("blkc_version", env!("CARGO_PKG_VERSION").to_string()),
        ("blkc_model", run.info.model.clone()),
        ("blkc_block", run.info.block.clone()),
        ("blkc_step", run.state.step.to_string()),
        ("blkc_resolved_model", info),
        ("blkc_source", sources),
    ];
    let bytes = crate::checkpoint::encode_with(&run.model, &metadata)?;
    crate::durable::write_atomic(&out, &bytes)?;
    if args.format == ExportFormat::Pytorch {
        let py = dir.join("model.py");
        crate::durable::write_atomic(&py, crate::export::model_py(&run.program, &run.ir).as_bytes())?;
        return Ok(py);
    }
    Ok(out)
}
