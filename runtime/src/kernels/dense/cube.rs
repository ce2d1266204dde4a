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
//! `allow_tf32`) and for bf16 operands it runs burn's product.
//!
//! A ReLU's backward is one kernel that zeroes the gradient where the
//! output was not positive, in the gradient's memory when nothing else
//! holds it (the product that made it), where burn compares (a launch and
//! a mask in memory) then fills (another launch).
//!
//! Tested against a product in f64 on the host and against the reference
//! ReLU backward in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Shape, TensorMetadata};
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

use super::{reference, DenseOps, ReluMask};
use crate::kernels::cube::{empty_f32, units};
use crate::kernels::precision::{self, Precision};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> DenseOps for CubeBackend<R, F, I, BT> {
    fn matmul(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if a.dtype == DType::F32 && b.dtype == DType::F32 && precision::current() != Precision::Tf32 {
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
    let g = into_contiguous(dy);
    let g = if g.can_mut() && g.is_contiguous_buffer() { g } else { g.copy() };
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
    let rank = sa.num_dims();
    let mut dims = sa.to_vec();
    dims[rank - 1] = sb[rank - 1];
    let out = empty_f32(&a, Shape::from(dims));
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
