//! The runtime's integration tests as one test binary, each file a module:
//! burn's generic code is compiled and linked once, not once per file.
//! `runtime/tests/device.rs` stays apart (it needs the `wgpu` or `cuda` feature).

mod checkpoint;
mod cli;
mod compare;
mod decode;
mod lowering;
mod lsp;
mod measure;
mod optim;
mod output;
mod precision;
mod safety;
mod tokenize;
mod train;
