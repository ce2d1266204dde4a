//! `blkc export RUN`: a run's weights for other tools, as safetensors with
//! the stable tensor names of docs/lowering.md and, in the file's header,
//! what is needed to rebuild the model (the `.blk` sources, the resolved
//! model, the step); `--format pytorch` adds a `model.py` that rebuilds the
//! model in plain PyTorch and loads them (`crate::export`).

use std::path::PathBuf;

use super::{OK, REJECTED};
use crate::train;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// The directory to write to (default: `RUN/export/`).
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
            println!("{}", path.display());
            OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            REJECTED
        }
    }
}

fn export(args: &Args) -> Result<PathBuf, String> {
    let device = Default::default();
    let run = train::open::open::<crate::backend::Cpu>(&args.checkpoint, &device)?;
    if let Some(note) = &run.note {
        eprintln!("warning: {note}");
    }
    let dir = args.out.clone().unwrap_or_else(|| run.dir.root.join("export"));
    std::fs::create_dir_all(&dir).map_err(|e| crate::durable::describe("create", &dir, &e))?;
    let out = dir.join("model.safetensors");
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
