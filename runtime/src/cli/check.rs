//! `blkc check FILE…`: compile each file and report every problem.

use std::path::PathBuf;

use super::{compile, BROKEN, OK, REJECTED};
use crate::report::{self, plural, DiagFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .blk files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// How to print diagnostics: human (stderr), json (one record per
    /// line on stdout) or github (workflow annotations).
    #[arg(long, value_enum, default_value = "human")]
    pub format: DiagFormat,
    /// Treat warnings as rejection (exit 1).
    #[arg(long)]
    pub deny_warnings: bool,
}

pub fn run(args: &Args) -> u8 {
    let mut status = OK;
    let (mut errors, mut warnings) = (0, 0);
    for path in &args.files {
        let Some(c) = compile(path, args.format) else {
            status = status.max(BROKEN);
            errors += 1;
            continue;
        };
        report::print(&c.diagnostics, &c.sources, args.format);
        let (e, w) = report::counts(&c.diagnostics);
        errors += e;
        warnings += w;
        if e > 0 {
            status = status.max(BROKEN);
        } else if w > 0 && args.deny_warnings {
            status = status.max(REJECTED);
        }
    }
    if args.format == DiagFormat::Human {
        let verdict = match status {
            OK => "ok",
            REJECTED => "rejected",
            _ => "does not compile",
        };
        eprintln!(
            "checked {}: {}, {} — {verdict}",
            plural(args.files.len(), "file"),
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    status
}
