//! `blkc fmt [--check] FILE…`: rewrite files in the canonical layout;
//! `blkc fmt -` formats standard input to standard output (for editors).

use std::path::{Path, PathBuf};

use blkc::source::{FsLoader, Loader};
use blkc::syntax::format::format;

use super::{unreadable, BROKEN, OK, REJECTED};
use crate::report::{self, DiagFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .blk files to format in place (a folder: every .blk file under
    /// it); `-` reads standard input and writes the formatted text to
    /// standard output.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Change nothing; list the files that are not formatted and exit 1 if
    /// there are any.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &Args) -> u8 {
    let files = super::blk_arguments(&args.files);
    // `max` takes every file (none is skipped after a failure).
    let each = files.iter().map(|(path, problem)| match problem {
        Some(why) => {
            unreadable(path, why, DiagFormat::Human);
            BROKEN
        }
        None => one(path, args.check),
    });
    each.max().unwrap_or(OK)
}

fn one(path: &Path, check: bool) -> u8 {
    let stdin = super::is_stdin(path);
    // Formatting in place reads the file, then replaces it: a named pipe or
    // a device would lose what was read and become a file. Refused before
    // anything is read.
    if !stdin && !check && std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        errln!(
            "error: cannot format `{}` in place: it is not a regular file (`blkc fmt - < {0}` prints the formatted text)",
            path.display()
        );
        return BROKEN;
    }
    let loaded = if stdin { super::read_stdin() } else { FsLoader.load(path) };
    let text = match loaded {
        Ok(t) => t,
        Err(why) => {
            unreadable(path, &why, DiagFormat::Human);
            return BROKEN;
        }
    };
    let path = super::shown(path);
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
        errln!(
            "error: formatting `{}` would change its meaning; this is a bug in blkc, the file was left as it is",
            path.display()
        );
        return BROKEN;
    }
    if stdin && !check {
        out!("{formatted}");
        return OK;
    }
    if formatted == text {
        return OK;
    }
    if check {
        outln!("would reformat {}", path.display());
        return REJECTED;
    }
    match crate::durable::rewrite(path, formatted.as_bytes()) {
        Ok(()) => {
            outln!("formatted {}", path.display());
            OK
        }
        Err(e) => {
            errln!("error: {e}");
            BROKEN
        }
    }
}
