//! Dense: a layer's linear map and its products — `x · w (+ bias)`, the
//! ReLU after it, the ReLU MLP as one graph node, a gated unit's `act(g) ⊙
//! h`, a tied head's `x · wᵀ`, and the products that backward passes add
//! into gradients.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorMetadata};

use super::precision::{self, narrow, widen};
use super::tensor::{primitive, split_heads, tensor};

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;
#[cfg(feature = "flex")]
mod loops;
#[cfg(feature = "flex")]
mod product;
pub mod reference;
#[cfg(all(test, feature = "flex"))]
mod tests;

/// A projection's weight `[in, out]` and its bias `[out]`, if any.
pub type Projection<B> = (FloatTensor<B>, Option<FloatTensor<B>>);

/// What the backward of a ReLU reads to know where its input was
/// positive: the ReLU's output, or a bit per element made in the pass that
/// applied it (flex's [`DenseOps::dense_relu`]: `[rows, ceil(cols / 32)]`
/// u32 words, bit `j % 32` of word `j / 32` for column `j`), so that the
/// backward does not read the output again.
#[derive(Debug, Clone)]
pub enum ReluMask<B: Backend> {
    Output(FloatTensor<B>),
    Bits { words: IntTensor<B>, cols: usize },
}

impl<B: Backend> ReluMask<B> {
    /// The mask of a ReLU's output with its leading dimensions merged
    /// (`[rows, cols]`, as the bits are made).
    pub fn flat(self) -> Self {
        match self {
            ReluMask::Output(y) => ReluMask::Output(crate::kernels::tensor::flat::<B>(y)),
            bits => bits,
        }
    }
}

/// The activation of a gated unit (or of an MLP's hidden layer) whose
/// derivative the family computes (SwiGLU's SiLU, GeGLU's GELU in either
/// form, ReGLU's ReLU, …); another activation is composed from burn's ops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    Relu,
    LeakyRelu(f64),
    Silu,
    /// GELU, `x · Φ(x)` with Φ the normal distribution (the erf form).
    Gelu,
    GeluTanh,
    Tanh,
    Identity,
}

impl Gate {
    /// The gate of an IR activation, if the family has its derivative.
    pub fn of(a: blkc::graph::Activation) -> Option<Gate> {
        use blkc::graph::Activation as A;
        match a {
            A::Relu => Some(Gate::Relu),
            A::LeakyRelu { slope } => Some(Gate::LeakyRelu(slope)),
            A::Silu => Some(Gate::Silu),
            A::Gelu => Some(Gate::Gelu),
            A::GeluTanh => Some(Gate::GeluTanh),
            A::Tanh => Some(Gate::Tanh),
            A::Identity => Some(Gate::Identity),
            A::Erf => None,
        }
    }

    /// `(act(x), act'(x))` in f32, with the CPU's `simd::exp`, `erf` and
    /// `tanh` (operations that vectorise, where libm's are a call per
    /// entry); inlined, so that a loop over a gate known when it is
    /// compiled vectorises (the loops' `per_gate!`).
    #[cfg(feature = "flex")]
    #[inline(always)]
    pub fn at(self, x: f32) -> (f32, f32) {
        use super::cpu::simd::{erf, exp, tanh};
        match self {
            Gate::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
            Gate::LeakyRelu(s) => {
                let s = s as f32;
                if x > 0.0 {
                    (x, 1.0)
                } else {
                    (s * x, s)
                }
            }
            Gate::Silu => {
                let sig = 1.0 / (1.0 + exp(-x));
                (x * sig, sig * (1.0 + x * (1.0 - sig)))
            }
            Gate::Gelu => {
                // x · Φ(x), Φ(x) + x · φ(x): Φ(x) = (1 + erf(x / √2)) / 2,
                // φ(x) = e^(−x²/2) / √(2π).
                let phi = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                (x * phi, phi + x * exp(-0.5 * x * x) * 0.398_942_3)
            }
            Gate::GeluTanh => {
                const K: f32 = 0.797_884_6; // √(2/π)
                let th = tanh(K * (x + 0.044715 * x * x * x));
                let half = 0.5 * (1.0 + th);
                (x * half, half + 0.5 * x * (1.0 - th * th) * K * (1.0 + 3.0 * 0.044715 * x * x))
            }
            Gate::Tanh => {
                let th = tanh(x);
                (th, 1.0 - th * th)
            }
            Gate::Identity => (x, 1.0),
        }
    }
}

/// The dense family.
pub trait DenseOps: Backend {
    /// `a · b` for `a: [..., m, k]`, `b: [..., k, n]` with equal leading
    /// dimensions (no broadcasting).
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }
    /// `c + a · b`, into `c`'s memory where the backend can (a gradient
    /// accumulated by the product that adds to it).
    fn matmul_add(c: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_add(c, Self::matmul(a, b))
    }
    /// [`DenseOps::matmul`] of `[batch, heads, tokens, n]` products whose
    /// output a backend may store token-major (`[batch, tokens, heads, n]`
    /// in memory), so that merging heads back is free; the values are those
    /// of `matmul`.
    fn matmul_token_major(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::matmul(a, b)
    }
    /// [`DenseOps::matmul_token_major`] of `a: [batch, heads, tokens, k]`
    /// and `b: [batch, heads, k, n]` added to `c: [batch, tokens, heads ·
    /// n]` (seen as `[batch, heads, tokens, n]`), into `c`'s memory where
    /// the backend can.
    fn matmul_token_major_add(c: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let heads = a.shape()[1];
        Self::float_add(split_heads::<Self>(c, heads), Self::matmul_token_major(a, b))
    }
    /// The sums of the columns of `x: [rows, n]`: `[n]` (a bias's gradient).
    fn column_sums(x: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::column_sums::<Self>(x)
    }
    /// `act(x · w (+ bias))` for `x: [..., k]`, `w: [k, n]`: `[..., n]`,
    /// `act` ReLU when `relu`, else the identity (a layer's linear map, as
    /// one 2-D product over the rows of `x`).
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        relu: bool,
    ) -> FloatTensor<Self> {
        reference::dense::<Self>(x, w, bias, relu)
    }
    /// [`DenseOps::dense`] with ReLU, and the mask its backward reads
    /// ([`DenseOps::relu_grad`]): `y` itself by default; a backend may
    /// keep a smaller one made in the pass that applies the ReLU.
    fn dense_relu(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, ReluMask<Self>) {
        let y = Self::dense(x, w, bias, true);
        (y.clone(), ReluMask::Output(y))
    }
    /// A ReLU MLP `relu(x · up (+ up_bias)) · down (+ down_bias)` over the
    /// last dimension of `x` (on autodiff one node, whose backward masks
    /// the hidden gradient as the product that forms it writes it, see
    /// [`DenseOps::masked_product`]).
    fn relu_mlp(x: FloatTensor<Self>, up: Projection<Self>, down: Projection<Self>) -> FloatTensor<Self> {
        let h = Self::dense(x, up.0, up.1, true);
        Self::dense(h, down.0, down.1, false)
    }
    /// `mask ⊙ (dy · wᵀ)` for `dy: [rows, n]`, `w: [k, n]` and a ReLU's
    /// mask from [`DenseOps::dense_relu`] (`[rows, k]` values): the
    /// gradient at the input of the ReLU whose output `w` multiplied; with
    /// `sums`, also its column sums (the gradient of a bias before the
    /// ReLU).
    fn masked_product(
        dy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        mask: ReluMask<Self>,
        sums: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let g = Self::matmul(dy, Self::float_transpose(w));
        match sums {
            true => {
                let (dz, db) = Self::relu_grad_bias(mask, g);
                (dz, Some(db))
            }
            false => (Self::relu_grad(mask, g), None),
        }
    }
    /// `x · wᵀ` for `x: [..., k]`, `w: [n, k]` (a tied LM head: the
    /// embedding table is the graph's parent, not a transpose of it).
    fn dense_transposed(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::dense(x, Self::float_transpose(w), None, false)
    }
    /// The gradient at the input of a ReLU from `dy`, that at its output:
    /// `dy` where the input was positive, as `mask` says, else 0.
    fn relu_grad(mask: ReluMask<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::relu_grad::<Self>(mask, dy)
    }
    /// `act(g) ⊙ h` for `g`, `h` of one shape: a gated unit's hidden
    /// layer (one graph node on autodiff, see [`DenseOps::gated_backward`]).
    fn gated(g: FloatTensor<Self>, h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        reference::gated::<Self>(g, h, gate)
    }
    /// The gradients `(dg, dh)` of [`DenseOps::gated`] from `dz`: `dg = dz
    /// ⊙ h ⊙ act'(g)`, `dh = dz ⊙ act(g)`.
    fn gated_backward(
        g: FloatTensor<Self>,
        h: FloatTensor<Self>,
        dz: FloatTensor<Self>,
        gate: Gate,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::gated_backward::<Self>(g, h, dz, gate)
    }
    /// `act(x)` for an activation whose derivative the family has (an
    /// MLP's hidden layer without a gate; one graph node on autodiff).
    fn activate(x: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        reference::activate::<Self>(x, gate)
    }
    /// The gradient `dy ⊙ act'(x)` of [`DenseOps::activate`].
    fn activate_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        reference::activate_backward::<Self>(x, dy, gate)
    }
    /// [`DenseOps::relu_grad`] of a 2-D `dy` and the sums of its columns
    /// (the gradient of a bias before the ReLU): `(dz, Σ_rows dz)`.
    fn relu_grad_bias(mask: ReluMask<Self>, dy: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let dz = Self::relu_grad(mask, dy);
        (dz.clone(), Self::column_sums(dz))
    }
}

/// `act(x · w (+ bias))` over the last dimension of `x` (see
/// [`DenseOps::dense`]).
/// In a bf16 scope ([`super::precision`]) the operands are cast to bf16 and
/// the output back to fp32, here and in the other products of this family.
pub fn linear<B: DenseOps, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    relu: bool,
) -> Tensor<B, D> {
    if precision::bf16() {
        let y = B::dense(primitive(narrow(x)), primitive(narrow(w)), bias.map(|b| primitive(narrow(b))), relu);
        return widen(tensor(y));
    }
    tensor(B::dense(primitive(x), primitive(w), bias.map(primitive), relu))
}
/// A ReLU MLP over the last dimension of `x` (see
/// [`DenseOps::relu_mlp`]): `relu(x · up (+ up_bias)) · down (+ down_bias)`.
pub fn relu_mlp<B: DenseOps, const D: usize>(
    x: Tensor<B, D>,
    (up, up_bias): (Tensor<B, 2>, Option<Tensor<B, 1>>),
    (down, down_bias): (Tensor<B, 2>, Option<Tensor<B, 1>>),
) -> Tensor<B, D> {
    if precision::bf16() {
        let up = (primitive(narrow(up)), up_bias.map(|b| primitive(narrow(b))));
        let down = (primitive(narrow(down)), down_bias.map(|b| primitive(narrow(b))));
        return widen(tensor(B::relu_mlp(primitive(narrow(x)), up, down)));
    }
    let up = (primitive(up), up_bias.map(primitive));
    let down = (primitive(down), down_bias.map(primitive));
    tensor(B::relu_mlp(primitive(x), up, down))
}
/// `x · wᵀ` over the last dimension of `x`, for `w: [n, k]` (see
/// [`DenseOps::dense_transposed`]).
pub fn linear_transposed<B: DenseOps, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    if precision::bf16() {
        return widen(tensor(B::dense_transposed(primitive(narrow(x)), primitive(narrow(w)))));
    }
    tensor(B::dense_transposed(primitive(x), primitive(w)))
}
/// `act(g) ⊙ h` (see [`DenseOps::gated`]).
pub fn gated<B: DenseOps, const D: usize>(g: Tensor<B, D>, h: Tensor<B, D>, gate: Gate) -> Tensor<B, D> {
    tensor(B::gated(primitive(g), primitive(h), gate))
}
/// `act(x)` (see [`DenseOps::activate`]).
pub fn activate<B: DenseOps, const D: usize>(x: Tensor<B, D>, gate: Gate) -> Tensor<B, D> {
    tensor(B::activate(primitive(x), gate))
}
/// `a · b` (see [`DenseOps::matmul`]).
pub fn matmul<B: DenseOps, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    tensor(B::matmul(primitive(a), primitive(b)))
}
