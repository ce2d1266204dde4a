//! `blkc params FILE`: parameters per component and in total, from the
//! graph alone (nothing is allocated).

use std::path::PathBuf;

use blkc::graph::params::count;
use blkc::span::FileId;

use super::{compile_reported, Format, BROKEN, OK};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .blk file with a model (a bare block is counted in the small CPU
    /// model of examples/small/).
    pub file: PathBuf,
    /// `human` (a table) or `json` (one object, docs/json.md).
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Give a model setting, a param or a section's setting another value,
    /// e.g. `--set width=512` or `--set swiglu.width=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: &Args) -> u8 {
    let Some(c) = compile_reported(&args.file, &args.set) else { return BROKEN };
    let Some(p) = c.program else { return BROKEN };
    // The model, or the root file's first block in the small model.
    let (model, bare) = match (&p.model, p.analysed_models(FileId(0)).first()) {
        (Some(m), _) => (m.clone(), false),
        (None, Some((m, _))) => (m.clone(), true),
        (None, None) => {
            errln!("error[E5001]: `{}` defines no block or model to count", args.file.display());
            return BROKEN;
        }
    };
    let block = &p.blocks[model.block];
    let n = count(&model, block);
    match args.format {
        Format::Json => {
            let components: serde_json::Map<String, serde_json::Value> =
                n.components().iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
            let out = serde_json::json!({
                "schema_version": super::JSON_VERSION,
                "command": "params",
                "file": args.file.display().to_string(),
                "block": block.name,
                "bare_block_in_small_model": bare,
                "depth": model.depth, "width": model.width, "heads": model.heads, "vocab": model.vocab,
                "components": components,
                "total": n.total,
            });
            outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Human => {
            let title = if bare { " (bare block, in the small model)" } else { "" };
            outln!(
                "{}: block `{}`, depth {}, width {}, heads {}, vocab {}{title}",
                args.file.display(),
                block.name,
                model.depth,
                model.width,
                model.heads,
                model.vocab
            );
            for (k, v) in n.components() {
                if v > 0 {
                    outln!("  {k:<22}{v:>14}");
                }
            }
            outln!("  {:<22}{:>14}  ({:.2}M)", "total", n.total, n.total as f64 / 1e6);
        }
    }
    OK
}
