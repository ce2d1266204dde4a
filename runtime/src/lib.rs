//! The blkc runtime: the `blkc` command line and, behind it, everything
//! that needs burn (lowering, training, measurement).
//!
//! The compiler front end is the `blkc` crate (`blkc-compiler`); this crate
//! is the only one that depends on burn.

// Printing goes through `out!`/`outln!`/`err!`/`errln!` (`output.rs`),
// which never panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod output;

pub mod alloc;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod decode;
pub mod durable;
pub mod export;
pub mod kernels;
pub mod layers;
pub mod measure;
pub mod model;
pub mod profile;
pub mod report;
pub mod rng;
pub mod train;
