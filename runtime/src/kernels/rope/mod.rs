//! Rotary positions (RoPE): the first `r` entries of each head of queries
//! and keys, in pairs `(p, p + r/2)` (GPT-NeoX's and Llama's layout),
//! turned by an angle per token and pair; the rest pass. The angles come
//! as tables `cos`, `sin` of `[tokens, r/2]`. The backward is the same
//! turn by the opposite angles (`sin` negated), so one kernel does both.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;

use super::tensor::{primitive, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// The rotary family.
pub trait RopeOps: Backend {
    /// `x: [batch, heads, tokens, d]` with entries `p` and `p + r/2` of
    /// each head turned by the angle of (token, `p`) for `p < r/2`, where
    /// `cos`, `sin` are `[tokens, r/2]` (`r ≤ d`); entries from `r` on
    /// pass unchanged.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::rope::<Self>(x, cos, sin)
    }
}

/// Rotary positions on `x: [batch, heads, tokens, d]` (see
/// [`RopeOps::rope`]).
pub fn rope<B: RopeOps>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
    tensor(B::rope(primitive(x), primitive(cos), primitive(sin)))
}
