//! `blkc graph FILE`: a block's graph as Graphviz DOT or Mermaid.

use std::path::PathBuf;

use blkc::graph::render::{render, Format};

use super::{compile_reported, BROKEN, OK};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .blk file with a block or a model.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
    /// The block to draw (default: the model's block, else the file's first).
    #[arg(long)]
    pub block: Option<String>,
    /// Draw the graph of this layer (0-based), with its overrides applied.
    #[arg(long, default_value_t = 1)]
    pub layer: u64,
}

pub fn run(args: &Args) -> u8 {
    let Some(c) = compile_reported(&args.file, &[]) else { return BROKEN };
    let Some(p) = c.program else { return BROKEN };
    let block = match &args.block {
        Some(name) => p.block(name),
        None => p.model.as_ref().map(|m| &p.blocks[m.block]).or(p.blocks.first()),
    };
    let Some(block) = block else {
        match &args.block {
            Some(name) => {
                let names: Vec<String> = p.blocks.iter().map(|b| format!("`{}`", b.name)).collect();
                let has =
                    if names.is_empty() { "it has none".to_string() } else { format!("it has {}", names.join(", ")) };
                errln!("error: no block `{name}` in `{}`: {has}", args.file.display());
            }
            None => errln!("error[E5001]: `{}` defines no block to draw", args.file.display()),
        }
        return BROKEN;
    };
    // A bare block is drawn in a stack of the small model's depth.
    let depth = p.model.as_ref().map_or(blkc::graph::Model::small(0).depth, |m| m.depth);
    if args.layer >= depth {
        let of = match p.model.as_ref().map(|m| m.name.as_deref()) {
            Some(Some(name)) => format!("model `{name}`"),
            Some(None) => "the model".to_string(),
            None => "the small model a bare block is drawn in".to_string(),
        };
        errln!("error: --layer {} is past the last layer of {of}: its layers are 0 to {}", args.layer, depth - 1);
        return BROKEN;
    }
    let format = match args.format {
        GraphFormat::Dot => Format::Dot,
        GraphFormat::Mermaid => Format::Mermaid,
    };
    out!("{}", render(block.graph_at(args.layer, depth), &block.name, format));
    OK
}
