//! The precision of the weight products: `fp32` (every multiply-add in
//! fp32, also on a GPU with tensor cores), `tf32` (f32 tensors, the
//! products on tensor cores in TF32 where the device has it — PyTorch's
//! `allow_tf32`), or `bf16` operands with everything else in fp32 — the weights the optimiser keeps and updates,
//! its moments, the residual stream, norms and their statistics, the
//! softmax, the loss — as `torch.autocast(dtype=torch.bfloat16)` runs a
//! linear layer: its input, weight and bias cast to bf16, the product
//! accumulated in fp32 by the backend and rounded to bf16, then (here)
//! widened back to fp32 for what follows. Checkpoints hold the fp32
//! weights, so a run resumes exactly in either precision.
//!
//! Like autocast, the precision is a scope of the current thread, set around
//! a forward pass ([`scope`]): the graph the forward builds keeps its casts,
//! so its backward (a cast's gradient is cast back) needs no scope, and
//! threads that run other models meanwhile (the tests) are not affected.

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};

/// The precision of the dense family's products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// `fp32`, `tf32` or `bf16`; `auto` is bf16 on CUDA (where tensor cores
    /// run it several times faster than fp32) and fp32 elsewhere (the CPU
    /// kernels are fp32, and have no faster bf16 product). `tf32` is fp32
    /// where the device has no TF32 (the CPU, WebGPU).
    pub fn resolve(setting: &str, device: &str) -> Self {
        match (setting, device) {
            ("bf16", _) | ("auto", "cuda") => Precision::Bf16,
            ("tf32", _) => Precision::Tf32,
            _ => Precision::Fp32,
        }
    }

    /// `self`, where `device` runs it: WebGPU (`wgpu`) has no bf16 matrix
    /// product, so bf16 there is an error that says what to do.
    pub fn on_device(self, device: &str) -> Result<Self, String> {
        match (self, device) {
            (Precision::Bf16, "wgpu") => Err("bf16 products need CUDA or the CPU: WebGPU has no bf16 matrix \
                                              product; use --precision fp32 (or auto)"
                .into()),
            _ => Ok(self),
        }
    }
}

thread_local! {
    static PRODUCTS: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// Puts the previous precision back when dropped (also when what ran in
/// the scope panicked).
struct Restore(Precision);

impl Drop for Restore {
    fn drop(&mut self) {
        PRODUCTS.with(|p| p.set(self.0));
    }
}

/// Runs `f` with the products of this thread in precision `p`.
pub fn scope<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(PRODUCTS.with(|c| c.replace(p)));
    f()
}

/// The precision of this thread's products now.
pub fn current() -> Precision {
    PRODUCTS.with(Cell::get)
}

/// Whether this thread's products are in bf16 now.
pub(crate) fn bf16() -> bool {
    current() == Precision::Bf16
}

/// `x` as a product's operand in bf16 (`x` when it is not fp32).
pub(crate) fn narrow<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F32 => x.cast(FloatDType::BF16),
        _ => x,
    }
}

/// A product's bf16 output widened back to fp32.
pub(crate) fn widen<B: Backend, const D: usize>(y: Tensor<B, D>) -> Tensor<B, D> {
    match y.dtype() {
        DType::BF16 => y.cast(FloatDType::F32),
        _ => y,
    }
}

#[cfg(test)]
mod tests {
    use super::{current, scope, Precision};

    #[test]
    fn a_scope_sets_this_threads_precision_and_puts_it_back() {
        assert_eq!(current(), Precision::Fp32);
        let inner = scope(Precision::Bf16, || {
            let other = std::thread::spawn(current).join().unwrap_or(Precision::Bf16);
            (current(), other)
        });
        assert_eq!(inner, (Precision::Bf16, Precision::Fp32), "in the scope; another thread");
        assert_eq!(current(), Precision::Fp32);
        let _ = std::panic::catch_unwind(|| scope(Precision::Bf16, || panic!("inside")));
        assert_eq!(current(), Precision::Fp32, "restored after a panic");
        assert_eq!(Precision::resolve("auto", "cuda"), Precision::Bf16);
        assert_eq!(Precision::resolve("auto", "cpu"), Precision::Fp32);
        assert_eq!(Precision::resolve("fp32", "cuda"), Precision::Fp32);
        assert_eq!(Precision::resolve("auto", "wgpu"), Precision::Fp32);
        assert_eq!(Precision::resolve("tf32", "cuda"), Precision::Tf32);
        assert_eq!(Precision::Tf32.on_device("wgpu"), Ok(Precision::Tf32));
        assert!(Precision::Bf16.on_device("wgpu").is_err_and(|e| e.contains("--precision fp32")));
        assert_eq!(Precision::Bf16.on_device("cuda"), Ok(Precision::Bf16));
    }
}
