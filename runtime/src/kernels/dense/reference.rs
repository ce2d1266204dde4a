//! The dense family from burn's primitive ops: what a backend without its
//! own kernels runs, and what the CPU's fall back to for other dtypes.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{ElementConversion, Int, Tensor, TensorMetadata};

use super::{DenseOps, Gate, ReluMask};
use crate::kernels::tensor::{primitive, tensor};

/// `act(x · w (+ bias))` as one 2-D product over the rows of `x`.
pub fn dense<B: DenseOps>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    relu: bool,
) -> FloatTensor<B> {
    let shape = x.shape();
    let k = shape[shape.num_dims() - 1];
    let x = B::float_reshape(x, [shape.num_elements() / k.max(1), k].into());
    let mut y = B::matmul(x, w);
    let n = y.shape()[1];
    if let Some(b) = bias {
        y = B::float_add(y, B::float_reshape(b, [1, n].into()));
    }
    if relu {
        y = B::relu(y);
    }
    let mut out = shape;
    let last = out.num_dims() - 1;
    out[last] = n;
    B::float_reshape(y, out)
}

pub fn column_sums<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape()[1];
    B::float_reshape(B::float_sum_dim(x, 0), [n].into())
}

/// `dy` where the ReLU's input was positive: the output's sign, or the
/// mask's bits unpacked (`[rows, words]` → `[rows, words · 32]`, the
/// columns past `cols` dropped).
pub fn relu_grad<B: Backend>(mask: ReluMask<B>, dy: FloatTensor<B>) -> FloatTensor<B> {
    match mask {
        ReluMask::Output(y) => B::relu_backward(y, dy),
        ReluMask::Bits { words, cols } => {
            // As i64: the words' u32 and the shifts' dtype would differ.
            let words = Tensor::<B, 2, Int>::from_primitive(words).cast(burn::tensor::IntDType::I64);
            let [rows, n] = words.dims();
            let device = words.device();
            let shifts = Tensor::<B, 1, Int>::arange(0..32, &device).cast(burn::tensor::IntDType::I64);
            let shifts = shifts.reshape([1, 1, 32]).expand([rows, n, 32]);
            let words = words.reshape([rows, n, 1]).expand([rows, n, 32]);
            let bits = words.bitwise_right_shift(shifts).bitwise_and_scalar(1.elem());
            let passed = bits.reshape([rows, n * 32]).slice([0..rows, 0..cols]).equal_elem(1);
            let dy = tensor::<B, 2>(dy);
            primitive(dy.clone().zeros_like().mask_where(passed, dy))
        }
    }
}

/// [`relu_grad`] and the sums of its columns.
pub fn relu_grad_bias<B: Backend>(mask: ReluMask<B>, dy: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let dz = relu_grad::<B>(mask, dy);
    (dz.clone(), column_sums::<B>(dz))
}

/// `g` flat (`[n]`), as the activation's formulas take it.
fn flat<B: Backend>(g: FloatTensor<B>) -> Tensor<B, 1> {
    let n = g.shape().num_elements();
    tensor::<B, 1>(B::float_reshape(g, [n].into()))
}

/// `act(g)` from burn's ops, flat.
fn activation<B: Backend>(g: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    use burn::tensor::activation;
    let g = flat::<B>(g);
    primitive(match gate {
        Gate::Relu => activation::relu(g),
        Gate::LeakyRelu(k) => activation::leaky_relu(g, k),
        Gate::Silu => activation::silu(g),
        Gate::Gelu => activation::gelu(g),
        Gate::GeluTanh => activation::gelu_approximate(g),
        Gate::Tanh => g.tanh(),
        Gate::Identity => g,
    })
}

/// `act'(g)` from burn's ops, flat.
fn slope<B: Backend>(g: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    use burn::tensor::activation;
    let g = flat::<B>(g);
    let ones = g.ones_like();
    primitive(match gate {
        Gate::Relu => ones.mask_fill(g.lower_equal_elem(0.0), 0.0),
        Gate::LeakyRelu(k) => ones.mask_fill(g.lower_equal_elem(0.0), k),
        Gate::Silu => {
            let sig = activation::sigmoid(g.clone());
            sig.clone() * (g * (sig.neg() + 1.0) + 1.0)
        }
        Gate::Gelu => {
            // Φ(x) + x · e^(−x²/2) / √(2π).
            let phi = (g.clone() * std::f64::consts::FRAC_1_SQRT_2).erf().add_scalar(1.0) * 0.5;
            phi + g.clone()
                * (g.powi_scalar(2) * -0.5).exp()
                * (0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2)
        }
        Gate::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let th = ((g.clone() + g.clone().powi_scalar(3) * 0.044715) * k).tanh();
            (th.clone() + 1.0) * 0.5
                + g.clone()
                    * (th.clone() * th).neg().add_scalar(1.0)
                    * (g.powi_scalar(2) * (3.0 * 0.044715) + 1.0)
                    * (0.5 * k)
        }
        Gate::Tanh => {
            let th = g.tanh();
            (th.clone() * th).neg() + 1.0
        }
        Gate::Identity => ones,
    })
}

/// `act(g) ⊙ h`.
pub fn gated<B: Backend>(g: FloatTensor<B>, h: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    let shape = h.shape();
    B::float_mul(B::float_reshape(activation::<B>(g, gate), shape), h)
}

/// `(dz ⊙ h ⊙ act'(g), dz ⊙ act(g))`.
pub fn gated_backward<B: Backend>(
    g: FloatTensor<B>,
    h: FloatTensor<B>,
    dz: FloatTensor<B>,
    gate: Gate,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = dz.shape();
    let a = B::float_reshape(activation::<B>(g.clone(), gate), shape.clone());
    let s = B::float_reshape(slope::<B>(g, gate), shape);
    let dg = B::float_mul(B::float_mul(dz.clone(), h), s);
    (dg, B::float_mul(dz, a))
}

/// `act(x)`.
pub fn activate<B: Backend>(x: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    let shape = x.shape();
    B::float_reshape(activation::<B>(x, gate), shape)
}

/// `dy ⊙ act'(x)`.
pub fn activate_backward<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, gate: Gate) -> FloatTensor<B> {
    let shape = dy.shape();
    B::float_mul(dy, B::float_reshape(slope::<B>(x, gate), shape))
}
