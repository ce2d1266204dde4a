//! `blkc export RUN`: a run's weights for other tools, as safetensors with
//! the stable tensor names of docs/lowering.md and, in the file's header,
//! what is needed to rebuild the model (the `.blk` sources, the resolved
//! model, the step).

use std::path::PathBuf;

use super::{OK, REJECTED};
use crate::train;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// Where to write (default: `RUN/export/model.safetensors`).
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    let out = args.out.clone().unwrap_or_else(|| run.dir.root.join("export").join("model.safetensors"));
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| crate::durable::describe("create", d, &e))?;
    }
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
    Ok(out)
}
