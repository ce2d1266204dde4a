//! Fused CPU kernels and the process set-up that the hot loop depends on.
//!
//! The only module of the workspace where `unsafe` is allowed: the FFI call
//! that tunes the allocator, and the raw-pointer calls into `gemm`. Each use
//! carries its SAFETY argument.

#![allow(unsafe_code)]

pub mod alloc;
