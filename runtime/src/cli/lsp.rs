//! `blkc lsp`: the language server, over stdin and stdout (the editor
//! starts it; see editors/vscode). The server itself is the `blkc-lsp`
//! crate, which builds without burn.

use super::{BROKEN, OK};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Accepted for clients that pass it (stdio is the only transport).
    #[arg(long)]
    pub stdio: bool,
}

pub fn run(_: &Args) -> u8 {
    match blkc_lsp::run_stdio() {
        Ok(()) => OK,
        Err(why) => {
            errln!("error: blkc lsp: {why}");
            BROKEN
        }
    }
}
