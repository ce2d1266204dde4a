//! `blkc fmt [--check] FILE…`: rewrite files in the canonical layout.

use std::path::{Path, PathBuf};

use blkc::source::{FsLoader, Loader};
use blkc::syntax::format::format;

use super::{unreadable, BROKEN, OK, REJECTED};
use crate::report::{self, DiagFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .blk files to format in place.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Change nothing; list the files that are not formatted and exit 1 if
    /// there are any.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &Args) -> u8 {
    args.files.iter().map(|p| one(p, args.check)).max().unwrap_or(OK)
}

fn one(path: &Path, check: bool) -> u8 {
    let text = match FsLoader.load(path) {
        Ok(t) => t,
        Err(why) => {
            unreadable(path, &why, DiagFormat::Human);
            return BROKEN;
        }
    };
    let (sources, parsed) = blkc::load::load_text(&path.display().to_string(), &text);
    let file = match parsed {
        Ok(f) => f,
        Err(diags) => {
            report::print(&diags, &sources, DiagFormat::Human);
            return BROKEN;
        }
    };
    let formatted = format(&file, &text);
    // The formatter must keep the meaning: re-parse and compare before
    // touching the file.
    let (_, again) = blkc::load::load_text("formatted", &formatted);
    if again.as_ref().ok() != Some(&file) {
        eprintln!(
            "error: formatting `{}` would change its meaning; this is a bug in blkc, the file was left as it is",
            path.display()
        );
        return BROKEN;
    }
    if formatted == text {
        return OK;
    }
    if check {
        println!("would reformat {}", path.display());
        return REJECTED;
    }
    match write_atomic(path, &formatted) {
        Ok(()) => {
            println!("formatted {}", path.display());
            OK
        }
        Err(e) => {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            BROKEN
        }
    }
}

/// Writes through a temporary file in the same directory and a rename, so
/// an interrupted write never leaves a half-written file.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.blkc-tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
