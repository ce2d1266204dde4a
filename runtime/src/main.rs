//! The `blkc` command: parses arguments and dispatches to one file per
//! subcommand in `cli/`.

#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use blkc_runtime::cli::{self, Cli, Command};
use blkc_runtime::errln;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: blkc_runtime::alloc::Counting = blkc_runtime::alloc::Counting;

fn main() -> ExitCode {
    blkc_runtime::alloc::keep_freed_memory();
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let glob = e.kind() == clap::error::ErrorKind::UnknownArgument
                && std::env::args().any(|a| a == "--data" || a.starts_with("--data="));
            let _ = e.print();
            if glob {
                errln!("hint: quote a --data glob (`--data 'corpus/*.txt'`): unquoted, the shell expands it into several paths");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // How the GPU backends run attentions (`kernels/attention/route.rs`):
    // a knob for timing the two routes side by side.
    if let Ok(route) = std::env::var("BLKC_ATTENTION") {
        match blkc_runtime::kernels::attention::Route::parse(route.trim()) {
            Ok(r) => r.set_default(),
            Err(e) => {
                errln!("error: BLKC_ATTENTION: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // Whether a build with burn's operation fusion runs under it
    // (`backend::fusion`): a knob for timing the two side by side.
    if let Ok(value) = std::env::var("BLKC_FUSION") {
        if let Err(e) = blkc_runtime::backend::set_fusion(value.trim()) {
            errln!("error: BLKC_FUSION: {e}");
            return ExitCode::from(2);
        }
    }
    let code = match args.command {
        Command::Check(a) => cli::check::run(&a),
        Command::Fmt(a) => cli::fmt::run(&a),
        Command::Graph(a) => cli::graph::run(&a),
        Command::Params(a) => cli::params::run(&a),
        Command::Train(a) => cli::train::run(&a),
        Command::Eval(a) => cli::eval::run(&a),
        Command::Sample(a) => cli::sample::run(&a),
        Command::Fill(a) => cli::fill::run(&a),
        Command::Export(a) => cli::export::run(&a),
        Command::Tokenize(a) => cli::tokenize::run(&a),
        Command::Bench(a) => cli::bench::run(&a),
        Command::Compare(a) => cli::compare::run(&a),
        Command::Lsp(a) => cli::lsp::run(&a),
    };
    // Standard output lost to a full disk fails the command (`output.rs`).
    ExitCode::from(blkc_runtime::output::finish(code))
}
