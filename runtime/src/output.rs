//! Printing that never panics.
//!
//! `println!` and `eprintln!` panic when their stream cannot be written: a
//! pipe whose reader has left (`blkc graph m.blk | head -1`), a terminal
//! that went away, a full disk behind `> file`. A panic there prints a
//! backtrace for what is no error of the user's, and in `blkc train` it
//! would end the run between two checkpoints. So blkc prints through
//! `out!`/`outln!` (standard output) and `err!`/`errln!` (standard error),
//! and clippy's `print_stdout` and `print_stderr` keep the others out:
//!
//! - A line that cannot be written is dropped and the command goes on: a
//!   training run keeps training (its metrics and checkpoints are files),
//!   a check still decides its exit status.
//! - Standard output that was lost for a reason other than a reader that
//!   left (a full disk, an I/O error) turns a success into a failure at the
//!   end ([`finish`]): `blkc graph m.blk > /full/disk/g.dot` must not exit 0
//!   with half a file. A closed pipe is not a failure, as for other Unix
//!   tools: the reader took what it wanted.
//! - Commands that would go on writing for long (`blkc sample`) stop at
//!   the first write that fails.

use std::io::{self, Write};
use std::sync::Mutex;

/// The first error writing standard output: its kind and its text.
static LOST: Mutex<Option<(io::ErrorKind, String)>> = Mutex::new(None);

fn record(e: &io::Error) {
    let mut lost = LOST.lock().unwrap_or_else(|p| p.into_inner());
    if lost.is_none() {
        *lost = Some((e.kind(), e.to_string()));
    }
}

/// Standard output that remembers its first error (for [`finish`]).
#[derive(Debug, Clone, Copy)]
pub struct Out;

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().write(buf).inspect_err(record)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush().inspect_err(record)
    }

    /// One line whole, as `println!` writes it (other threads wait).
    fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> io::Result<()> {
        io::stdout().lock().write_fmt(args).inspect_err(record)
    }
}

/// The exit status of a command that would exit with `code`: standard
/// output flushed, and a success that lost its output to anything but a
/// reader that left made a failure (1), with the reason on standard error.
pub fn finish(code: u8) -> u8 {
    let _ = Out.flush();
    let lost = LOST.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match lost {
        Some((kind, reason)) if kind != io::ErrorKind::BrokenPipe && code == 0 => {
            let _ = writeln!(io::stderr(), "error: could not write the output: {reason}");
            1
        }
        _ => code,
    }
}

/// `print!` that never panics (see the module's text).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!($crate::output::Out, $($arg)*);
    }};
}

/// `println!` that never panics (see the module's text).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!($crate::output::Out, $($arg)*);
    }};
}

/// `eprint!` that never panics: a line standard error cannot take is
/// dropped.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

/// `eprintln!` that never panics: a line standard error cannot take is
/// dropped.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}
