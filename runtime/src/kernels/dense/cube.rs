//! The dense family's products on burn's CubeCL backends, in the precision
//! asked for.
//!
//! burn's own product (`float_matmul`, cubek's matmul) runs f32 operands on
//! tensor cores wherever the device has TF32 (`adjust_dtypes` in
//! cubek-matmul 0.2 stages them as TF32: 10 bits of mantissa, 2⁻¹¹ ≈
//! 5·10⁻⁴ relative), which is what made CUDA's logits differ from the CPU's
//! by 1.28·10⁻³. So in `fp32` blkc runs f32 products on cubek's *unit*
//! matmuls — each unit a register tile of fp32 multiply-adds, never a
//! tensor core — choosing per shape the faster of two (the largest or the
//! smallest register tile) by cubecl's autotune, as burn chooses among its
//! own. In `tf32` (PyTorch's
//! `allow_tf32`) and for bf16 operands it runs burn's product; f32
//! operands in a bf16 scope are cast to bf16 for it, and its output back.
//!
//! A ReLU's backward is one kernel that zeroes the gradient where the
//! output was not positive, in the gradient's memory when nothing else
//! holds it (the product that made it), where burn compares (a launch and
//! a mask in memory) then fills (another launch).
//!
//! A gated unit (`act(g) ⊙ h`) and an activation without a gate are one
//! element-wise kernel each way (the reference is four to nine launches
//! for SwiGLU's or a tanh GELU's), the derivatives written out as
//! the reference has them; an input's gradient is written over the incoming
//! gradient when nothing else holds it.
//!
//! Tested against a product in f64 on the host and against the reference
//! ReLU backward, gated units and activations in
//! `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, FloatDType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, CubeTuneId, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::tune::{local_tuner, LocalTuner, Tunable, TunableSet};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek::matmul::launch::{launch_ref, MatmulAutotuneKey, Strategy};
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;

use super::{reference, DenseOps, Gate, ReluMask};
use crate::kernels::cube::{empty_f32, units, writable};
use crate::kernels::precision::{self, Precision};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> DenseOps for CubeBackend<R, F, I, BT> {
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if bf16_product(&a, &b) {
            return in_bf16::<Self>(a, b);
        }
        if fp32_product(&a, &b) {
            return exact(a, b);
        }
        Self::float_matmul(a, b)
    }

    fn relu_grad(mask: ReluMask<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        match mask {
            ReluMask::Output(y) if y.dtype == DType::F32 && dy.dtype == DType::F32 && y.shape() == dy.shape() => {
                relu_grad(y, dy)
            }
            mask => reference::relu_grad::<Self>(mask, dy),
        }
    }

    fn activate(x: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        if !all_f32(&[&x]) {
            return reference::activate::<Self>(x, gate);
        }
        let x = into_contiguous(x);
        let y = empty_f32(&x, x.shape());
        let (client, count, dim, lanes, n) = elementwise(&y);
        let (kind, slope) = Kind::of(gate);
        if n > 0 {
            activation::launch::<f32, R>(
                &client,
                count,
                dim,
                lanes,
                x.into_tensor_arg(),
                y.clone().into_tensor_arg(),
                slope,
                n,
                kind,
            );
        }
        y
    }

    fn activate_backward(x: FloatTensor<Self>, dy: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        if !all_f32(&[&x, &dy]) || x.shape() != dy.shape() {
            return reference::activate_backward::<Self>(x, dy, gate);
        }
        let x = into_contiguous(x);
        let dx = writable(dy);
        let (client, count, dim, lanes, n) = elementwise(&dx);
        let (kind, slope) = Kind::of(gate);
        if n > 0 {
            activation_grad::launch::<f32, R>(
                &client,
                count,
                dim,
                lanes,
                x.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                slope,
                n,
                kind,
            );
        }
        dx
    }

    fn gated(g: FloatTensor<Self>, h: FloatTensor<Self>, gate: Gate) -> FloatTensor<Self> {
        if !all_f32(&[&g, &h]) || g.shape() != h.shape() {
            return reference::gated::<Self>(g, h, gate);
        }
        let (g, h) = (into_contiguous(g), into_contiguous(h));
        let z = empty_f32(&g, g.shape());
        let (client, count, dim, lanes, n) = elementwise(&z);
        let (kind, slope) = Kind::of(gate);
        if n > 0 {
            gated_unit::launch::<f32, R>(
                &client,
                count,
                dim,
                lanes,
                g.into_tensor_arg(),
                h.into_tensor_arg(),
                z.clone().into_tensor_arg(),
                slope,
                n,
                kind,
            );
        }
        z
    }

    fn gated_backward(
        g: FloatTensor<Self>,
        h: FloatTensor<Self>,
        dz: FloatTensor<Self>,
        gate: Gate,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !all_f32(&[&g, &h, &dz]) || g.shape() != h.shape() || g.shape() != dz.shape() {
            return reference::gated_backward::<Self>(g, h, dz, gate);
        }
        let (g, h) = (into_contiguous(g), into_contiguous(h));
        let dg = writable(dz);
        let dh = empty_f32(&g, g.shape());
        let (client, count, dim, lanes, n) = elementwise(&dg);
        let (kind, slope) = Kind::of(gate);
        if n > 0 {
            gated_grad::launch::<f32, R>(
                &client,
                count,
                dim,
                lanes,
                g.into_tensor_arg(),
                h.into_tensor_arg(),
                dg.clone().into_tensor_arg(),
                dh.clone().into_tensor_arg(),
                slope,
                n,
                kind,
            );
        }
        (dg, dh)
    }
}

/// Whether `a · b` runs in fp32 ([`exact`]): both f32, and the precision
/// asked for is fp32 (of metadata only, so that fusion decides as this
/// file does).
pub(crate) fn fp32_product<T: TensorMetadata>(a: &T, b: &T) -> bool {
    a.dtype() == DType::F32 && b.dtype() == DType::F32 && precision::current() == Precision::Fp32
}

/// Whether `a · b` runs in bf16: both f32 in a bf16 scope (the attention's
/// products when it runs as products, [`crate::kernels::attention::Route`]):
/// cast to bf16, burn's product, its output widened back to f32, as
/// autocast runs a product of f32 tensors.
pub(crate) fn bf16_product<T: TensorMetadata>(a: &T, b: &T) -> bool {
    a.dtype() == DType::F32 && b.dtype() == DType::F32 && precision::bf16()
}

/// `a · b` of f32 operands by burn's product in bf16, widened back to f32
/// (for [`bf16_product`]s, with fusion or not).
pub(crate) fn in_bf16<B: burn::tensor::backend::Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    let [a, b] = [a, b].map(|t| B::float_cast(t, FloatDType::BF16));
    B::float_cast(B::float_matmul(a, b), FloatDType::F32)
}

/// The shape of `a · b` for `a: [..., m, k]` and `b: [..., k, n]`:
/// `[..., m, n]`, the leading dimensions `a`'s.
pub(crate) fn product_shape(a: &Shape, b: &Shape) -> Shape {
    let mut dims = a.to_vec();
    dims[a.num_dims() - 1] = b[b.num_dims() - 1];
    Shape::from(dims)
}

/// Whether every tensor is f32 (the kernels' dtype).
fn all_f32<R: CubeRuntime>(ts: &[&CubeTensor<R>]) -> bool {
    ts.iter().all(|t| t.dtype == DType::F32)
}

/// The launch of an element-wise kernel over `like`'s entries, read and
/// written as vectors of 4 where the count allows (and the device reads
/// them): the client, the cubes, the entries per vector and the vectors.
fn elementwise<R: CubeRuntime>(like: &CubeTensor<R>) -> (ComputeClient<R>, CubeCount, CubeDim, usize, usize) {
    let client = like.client.clone();
    let n = like.meta.shape().num_elements();
    let lanes = if client.properties().hardware.max_vector_size >= 4 && n.is_multiple_of(4) { 4 } else { 1 };
    let (count, dim) = units(&client, (n / lanes).max(1));
    (client, count, dim, lanes, n / lanes)
}

/// A [`Gate`]'s function, which the kernels are compiled for (a leaky
/// ReLU's slope is an argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Relu,
    LeakyRelu,
    Silu,
    Gelu,
    GeluTanh,
    Tanh,
    Identity,
}

impl Kind {
    /// The function of `gate`, and its slope below zero (a leaky ReLU's).
    fn of(gate: Gate) -> (Kind, f32) {
        match gate {
            Gate::Relu => (Kind::Relu, 0.0),
            Gate::LeakyRelu(s) => (Kind::LeakyRelu, s as f32),
            Gate::Silu => (Kind::Silu, 0.0),
            Gate::Gelu => (Kind::Gelu, 0.0),
            Gate::GeluTanh => (Kind::GeluTanh, 0.0),
            Gate::Tanh => (Kind::Tanh, 0.0),
            Gate::Identity => (Kind::Identity, 0.0),
        }
    }
}

/// `1/√2`, GELU's scale of its argument to erf.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`, the normal density's scale.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
/// `√(2/π)`, the tanh GELU's scale.
const GELU_K: f32 = 0.797_884_6;
/// The tanh GELU's cubic coefficient.
const GELU_C: f32 = 0.044_715;

/// `act(x)` (`slope`: a leaky ReLU's below zero).
#[cube]
fn act<F: Float, N: Size>(x: Vector<F, N>, slope: F, #[comptime] kind: Kind) -> Vector<F, N> {
    let zero = Vector::new(F::new(0.0));
    let one = Vector::new(F::new(1.0));
    match comptime![kind] {
        Kind::Relu => select_many(x.greater_than(zero), x, zero),
        Kind::LeakyRelu => select_many(x.greater_than(zero), x, x * Vector::new(slope)),
        Kind::Silu => x * (one / (one + Vector::exp(-x))),
        Kind::Gelu => Vector::new(F::new(0.5)) * x * (one + Vector::erf(x * Vector::new(F::new(FRAC_1_SQRT_2)))),
        Kind::GeluTanh => {
            let inner = Vector::new(F::new(GELU_K)) * (x + Vector::new(F::new(GELU_C)) * x * x * x);
            Vector::new(F::new(0.5)) * x * (one + Vector::tanh(inner))
        }
        Kind::Tanh => Vector::tanh(x),
        Kind::Identity => x,
    }
}

/// `act'(x)`.
#[cube]
fn slope_at<F: Float, N: Size>(x: Vector<F, N>, slope: F, #[comptime] kind: Kind) -> Vector<F, N> {
    let zero = Vector::new(F::new(0.0));
    let one = Vector::new(F::new(1.0));
    match comptime![kind] {
        Kind::Relu => select_many(x.greater_than(zero), one, zero),
        Kind::LeakyRelu => select_many(x.greater_than(zero), one, Vector::new(slope)),
        Kind::Silu => {
            let sig = one / (one + Vector::exp(-x));
            sig * (one + x * (one - sig))
        }
        Kind::Gelu => {
            // Φ(x) + x · e^(−x²/2) / √(2π).
            let half = Vector::new(F::new(0.5));
            let phi = half * (one + Vector::erf(x * Vector::new(F::new(FRAC_1_SQRT_2))));
            phi + x * Vector::exp(-half * x * x) * Vector::new(F::new(FRAC_1_SQRT_2PI))
        }
        Kind::GeluTanh => {
            let (k, c) = (Vector::new(F::new(GELU_K)), Vector::new(F::new(GELU_C)));
            let th = Vector::tanh(k * (x + c * x * x * x));
            let half = Vector::new(F::new(0.5));
            half * (one + th) + half * x * (one - th * th) * k * (one + Vector::new(F::new(3.0)) * c * x * x)
        }
        Kind::Tanh => {
            let th = Vector::tanh(x);
            one - th * th
        }
        Kind::Identity => one,
    }
}

/// `y = act(x)` over `len` vectors.
#[cube(launch)]
fn activation<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    y: &mut Tensor<Vector<F, N>>,
    slope: f32,
    len: usize,
    #[comptime] kind: Kind,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        y[i] = act(x[i], F::cast_from(slope), kind);
    }
}

/// `d ← d ⊙ act'(x)` over `len` vectors (`d` holds `dy` and becomes `dx`).
#[cube(launch)]
fn activation_grad<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    d: &mut Tensor<Vector<F, N>>,
    slope: f32,
    len: usize,
    #[comptime] kind: Kind,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        d[i] = d[i] * slope_at(x[i], F::cast_from(slope), kind);
    }
}

/// `z = act(g) ⊙ h` over `len` vectors.
#[cube(launch)]
fn gated_unit<F: Float, N: Size>(
    g: &Tensor<Vector<F, N>>,
    h: &Tensor<Vector<F, N>>,
    z: &mut Tensor<Vector<F, N>>,
    slope: f32,
    len: usize,
    #[comptime] kind: Kind,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        z[i] = act(g[i], F::cast_from(slope), kind) * h[i];
    }
}

/// `dh = dz ⊙ act(g)`, `d ← dz ⊙ h ⊙ act'(g)` over `len` vectors (`d` holds
/// `dz` and becomes `dg`).
#[cube(launch)]
fn gated_grad<F: Float, N: Size>(
    g: &Tensor<Vector<F, N>>,
    h: &Tensor<Vector<F, N>>,
    d: &mut Tensor<Vector<F, N>>,
    dh: &mut Tensor<Vector<F, N>>,
    slope: f32,
    len: usize,
    #[comptime] kind: Kind,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let (x, dz) = (g[i], d[i]);
        let s = F::cast_from(slope);
        dh[i] = dz * act(x, s, kind);
        d[i] = dz * h[i] * slope_at(x, s, kind);
    }
}

/// `g[i] ← 0` where `y[i] ≤ 0`, for `n` entries.
#[cube(launch)]
fn relu_mask<F: Float>(y: &Tensor<F>, g: &mut Tensor<F>, n: usize) {
    let i = ABSOLUTE_POS;
    if i < n && y[i] <= F::new(0.0) {
        g[i] = F::new(0.0);
    }
}

/// `dy` where the ReLU's output `y` is positive, else 0: written over `dy`
/// when it is contiguous and held nowhere else, else over a copy.
fn relu_grad<R: CubeRuntime>(y: CubeTensor<R>, dy: CubeTensor<R>) -> CubeTensor<R> {
    let y = into_contiguous(y);
    let g = writable(dy);
    let n = g.meta.shape().num_elements();
    if n == 0 {
        return g;
    }
    let client = g.client.clone();
    let (count, dim) = units(&client, n);
    relu_mask::launch::<f32, R>(&client, count, dim, y.into_tensor_arg(), g.clone().into_tensor_arg(), n);
    g
}

/// The fp32 strategies: cubek's single-buffered unit matmul with the
/// smallest and with the largest register tile (the first runs where the
/// other does not apply). Not its double-buffered one: on llvmpipe it
/// returns wrong products for short inner dimensions (k = 8, batched
/// 7 × 8 · 8 × 7: 0.9 of scale off) without an error, and autotune does not
/// check results.
fn strategies() -> [Strategy; 2] {
    let simple = |tile_size| Strategy::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size }));
    [simple(TileSizeSelection::MinTileSize), simple(TileSizeSelection::MaxTileSize)]
}

/// `a · b` for f32 `a: [..., m, k]` and `b: [..., k, n]` (equal leading
/// dimensions, any strides), every multiply-add in fp32: the fastest of
/// [`strategies`] for this shape and layout, tuned once per device.
pub fn exact<R: CubeRuntime>(a: CubeTensor<R>, b: CubeTensor<R>) -> CubeTensor<R> {
    let (sa, sb) = (a.meta.shape().clone(), b.meta.shape().clone());
    let out = empty_f32(&a, product_shape(&sa, &sb));
    if sa.num_elements() == 0 || sb.num_elements() == 0 {
        // An empty side: a sum of no terms (or no output at all).
        return zeros(out);
    }
    let client = a.client.clone();
    static TUNER: LocalTuner<MatmulAutotuneKey, CubeTuneId> = local_tuner!();
    let tunables = TUNER.init(|| {
        let mut set = TunableSet::new(key::<R>, |_: &MatmulAutotuneKey, (a, b, out): &Operands<R>| {
            (a.clone(), b.clone(), out.copy())
        });
        for strategy in strategies() {
            set = set.with(Tunable::new(&strategy.to_string(), move |(a, b, out): Operands<R>| {
                launch(&strategy, a, b, out).map_err(|e| format!("{e:?}"))
            }));
        }
        set
    });
    TUNER.execute(&CubeTuneId::new(&a.client, &a.device), &client, tunables, (a, b, out.clone()));
    out
}

/// `a · b` by each of [`strategies`] that takes the shape (what autotune
/// chooses among in [`exact`]), for the test that they agree to the bit:
/// which one autotune picks, by timing, must not change a run's numbers.
#[doc(hidden)]
pub fn exact_by_each<R: CubeRuntime>(a: CubeTensor<R>, b: CubeTensor<R>) -> Vec<CubeTensor<R>> {
    let shape = product_shape(a.meta.shape(), b.meta.shape());
    strategies()
        .iter()
        .filter_map(|s| {
            let out = empty_f32(&a, shape.clone());
            launch(s, a.clone(), b.clone(), out.clone()).ok().map(|_| out)
        })
        .collect()
}

/// A product's operands and output.
type Operands<R> = (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>);

/// The autotune key of a product: its sizes, layouts and dtypes, as burn
/// keys its own.
fn key<R: CubeRuntime>((a, b, out): &Operands<R>) -> MatmulAutotuneKey {
    MatmulAutotuneKey::generate(
        &a.client,
        a.meta.shape(),
        b.meta.shape(),
        a.meta.strides(),
        b.meta.strides(),
        a.dtype.into(),
        b.dtype.into(),
        out.dtype.into(),
        None,
        None,
    )
}

/// `out = a · b` by `strategy`.
fn launch<R: CubeRuntime>(
    strategy: &Strategy,
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    out: CubeTensor<R>,
) -> Result<(), MatmulSetupError> {
    let client = out.client.clone();
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: a.dtype.into(),
        rhs: b.dtype.into(),
        out: out.dtype.into(),
    });
    let (da, db) = (a.dtype, b.dtype);
    launch_ref(
        strategy,
        &client,
        InputBinding::new(a.binding(), da.into()),
        InputBinding::new(b.binding(), db.into()),
        out.binding(),
        &mut dtypes,
    )
}

/// `out` filled with zeros.
fn zeros<R: CubeRuntime>(out: CubeTensor<R>) -> CubeTensor<R> {
    burn_cubecl::ops::numeric::zeros_client(out.client.clone(), out.device.clone(), out.meta.shape().clone(), out.dtype)
}
