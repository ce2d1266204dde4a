//! Rotary positions on burn's CubeCL backends: one kernel, one unit per
//! vector of the output, in the order the entries lie in memory. The
//! products' token-major layout (`[batch, tokens, heads, d]` in memory) is
//! kept, so the attention reads the result as it read its input; any other
//! layout than that and the contiguous one is read as a contiguous copy.
//! Where the reference slices, multiplies and concatenates (eight launches
//! and as many tensors), this reads `x` and the tables once and writes `y`
//! once. Tested against the reference in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, RopeOps};
use crate::kernels::cube::{empty_f32, units};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> RopeOps for CubeBackend<R, F, I, BT> {
    fn rope(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>) -> CubeTensor<R> {
        let shape = x.shape();
        let table = cos.shape();
        let fits = [&x, &cos, &sin].iter().all(|t| t.dtype == DType::F32)
            && shape.num_dims() == 4
            && table.num_dims() == 2
            && table == sin.shape()
            && table[0] == shape[2]
            && 2 * table[1] <= shape[3];
        if !fits {
            return reference::rope::<Self>(x, cos, sin);
        }
        let [b, h, t, d] = [shape[0], shape[1], shape[2], shape[3]];
        let half = table[1];
        let token_major = x.meta.strides().iter().eq(&[t * h * d, d, h * d, 1]);
        let x = if token_major { x } else { into_contiguous(x) };
        // `y` laid out as `x`: `[b, t, h, d]` seen as `[b, h, t, d]`, or
        // contiguous.
        let y = match token_major {
            true => Self::float_swap_dims(empty_f32(&x, [b, t, h, d]), 1, 2),
            false => empty_f32(&x, [b, h, t, d]),
        };
        let len = b * h * t * d;
        if len == 0 {
            return y;
        }
        let client = x.client.clone();
        let lanes =
            if client.properties().hardware.max_vector_size >= 4 && half.is_multiple_of(4) && d.is_multiple_of(4) {
                4
            } else {
                1
            };
        let (count, dim) = units(&client, len / lanes);
        let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
        rotate::launch::<f32, R>(
            &client,
            count,
            dim,
            lanes,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            len / lanes,
            h,
            t,
            d / lanes,
            half / lanes,
            token_major,
        );
        y
    }
}

/// `y`'s vector `pos` of `units`: in row `r` of `d` entries (`w` vectors),
/// at vector `j`, turned with the tables' row of its token (`[t, half]`,
/// `hw` vectors a row): the first half of the turned entries `x₁·cos −
/// x₂·sin`, the second `x₂·cos + x₁·sin`, the rest copied. Memory row `r`
/// is `[b, t, h]` when `token_major`, else `[b, h, t]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rotate<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    cos: &Tensor<Vector<F, N>>,
    sin: &Tensor<Vector<F, N>>,
    y: &mut Tensor<Vector<F, N>>,
    units: usize,
    heads: usize,
    tokens: usize,
    w: usize,
    hw: usize,
    #[comptime] token_major: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let r = pos / w;
    let j = pos % w;
    let mut token = r % tokens;
    if token_major {
        token = (r / heads) % tokens;
    }
    if j < hw {
        let at = token * hw + j;
        y[pos] = x[pos] * cos[at] - x[pos + hw] * sin[at];
    } else if j < 2 * hw {
        let at = token * hw + j - hw;
        y[pos] = x[pos] * cos[at] + x[pos - hw] * sin[at];
    } else {
        y[pos] = x[pos];
    }
}
