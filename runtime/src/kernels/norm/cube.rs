//! Norms on burn's CubeCL backends: one cube per row, its units striding
//! over the row and summing through shared memory, where the reference
//! runs a dozen operations (each a launch and a pass over memory).
//!
//! - `forward`: the row's mean (LayerNorm), the sum of squares of the
//!   centred entries (two sums, not `E[x²] − mean²`, which cancels), then
//!   `y` and `rstd`.
//! - `rows` (backward by row): the mean again, `Σ g` and `Σ g ⊙ x̂` (`g = dy
//!   ⊙ scale`), then `dx`, added into a gradient from elsewhere in the same
//!   pass; it keeps the row's mean for the next kernel.
//! - `columns`: `Σ dy ⊙ x̂` and `Σ dy` over chunks of rows, one unit per
//!   (chunk, column), the chunks then summed by burn's reduction: the
//!   scale's and the shift's gradients.
//!
//! f32 only; other dtypes take the reference. Tested against the
//! reference in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, NormOps};
use crate::kernels::cube::{chunk_end, cube_sum, empty_f32, row_cubes, units};
use crate::kernels::tensor::row;

/// Rows a unit of `columns` sums.
const CHUNK: usize = 32;

/// The row's mean over its `width` entries, or 0 when not `centred`.
#[cube]
fn row_mean<F: Float>(
    x: &Tensor<F>,
    shared: &mut SharedMemory<F>,
    start: usize,
    width: usize,
    #[comptime] block: usize,
    #[comptime] centred: bool,
) -> F {
    let mut mean = F::new(0.0);
    if centred {
        let mut s = F::new(0.0);
        let mut c = UNIT_POS as usize;
        while c < width {
            s += x[start + c];
            c += block;
        }
        mean = cube_sum(shared, s, block) / F::cast_from(width);
    }
    mean
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn norm_forward<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<F>,
    bias: &Tensor<F>,
    y: &mut Tensor<F>,
    rstd: &mut Tensor<F>,
    rows: usize,
    width: usize,
    eps: f32,
    #[comptime] block: usize,
    #[comptime] centred: bool,
    #[comptime] biased: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let mut shared = SharedMemory::<F>::new(block);
    let start = row * width;
    let mean = row_mean(x, &mut shared, start, width, block, centred);
    let mut s = F::new(0.0);
    let mut c = UNIT_POS as usize;
    while c < width {
        let e = x[start + c] - mean;
        s += e * e;
        c += block;
    }
    let r = F::new(1.0) / F::sqrt(cube_sum(&mut shared, s, block) / F::cast_from(width) + F::cast_from(eps));
    let mut c = UNIT_POS as usize;
    while c < width {
        let mut out = (x[start + c] - mean) * r * scale[c];
        if biased {
            out += bias[c];
        }
        y[start + c] = out;
        c += block;
    }
    if UNIT_POS == 0 {
        rstd[row] = r;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn norm_rows<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<F>,
    rstd: &Tensor<F>,
    dy: &Tensor<F>,
    acc: &Tensor<F>,
    dx: &mut Tensor<F>,
    means: &mut Tensor<F>,
    rows: usize,
    width: usize,
    #[comptime] block: usize,
    #[comptime] centred: bool,
    #[comptime] accumulate: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let mut shared = SharedMemory::<F>::new(block);
    let start = row * width;
    let mean = row_mean(x, &mut shared, start, width, block, centred);
    let r = rstd[row];
    let mut sg = F::new(0.0);
    let mut sgx = F::new(0.0);
    let mut c = UNIT_POS as usize;
    while c < width {
        let g = dy[start + c] * scale[c];
        sg += g;
        sgx += g * (x[start + c] - mean) * r;
        c += block;
    }
    let n = F::cast_from(width);
    let mut mean_g = F::new(0.0);
    if centred {
        mean_g = cube_sum(&mut shared, sg, block) / n;
    }
    let mean_gx = cube_sum(&mut shared, sgx, block) / n;
    let mut c = UNIT_POS as usize;
    while c < width {
        let xhat = (x[start + c] - mean) * r;
        let mut out = (dy[start + c] * scale[c] - mean_g - xhat * mean_gx) * r;
        if accumulate {
            out += acc[start + c];
        }
        dx[start + c] = out;
        c += block;
    }
    if UNIT_POS == 0 {
        means[row] = mean;
    }
}

/// Unit `(chunk, column)`: `Σ dy ⊙ x̂` and `Σ dy` over the chunk's rows,
/// into `parts[0, chunk, column]` and `parts[1, chunk, column]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn norm_columns<F: Float>(
    x: &Tensor<F>,
    rstd: &Tensor<F>,
    means: &Tensor<F>,
    dy: &Tensor<F>,
    parts: &mut Tensor<F>,
    rows: usize,
    width: usize,
    chunks: usize,
    #[comptime] chunk: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= chunks * width {
        terminate!();
    }
    let column = pos % width;
    let first = (pos / width) * chunk;
    let last = chunk_end(first, chunk, rows);
    let mut sx = F::new(0.0);
    let mut s = F::new(0.0);
    for row in first..last {
        let g = dy[row * width + column];
        sx += g * (x[row * width + column] - means[row]) * rstd[row];
        s += g;
    }
    parts[pos] = sx;
    parts[chunks * width + pos] = s;
}

/// `[rows, width]` when `x` is a matrix of f32 and `scale` (and `bias`)
/// f32 of `width`. Of metadata only, as burn's fusion streams plan too
/// (`kernels/fused.rs` and the family's `fused.rs`).
pub(crate) fn plan<T: TensorMetadata>(x: &T, scale: &T, bias: Option<&T>) -> Option<[usize; 2]> {
    let s = x.shape();
    if s.num_dims() != 2 || s[0] == 0 || s[1] == 0 {
        return None;
    }
    let fits = |t: &T| t.dtype() == DType::F32 && t.shape().num_elements() == s[1];
    (x.dtype() == DType::F32 && fits(scale) && bias.is_none_or(fits)).then_some([s[0], s[1]])
}

/// The plan of a norm's backward (see [`plan`]): `rstd` f32 of `rows`,
/// `dy` (and `acc`) f32 `[rows, width]`.
pub(crate) fn backward_plan<T: TensorMetadata>(
    x: &T,
    scale: &T,
    rstd: &T,
    dy: &T,
    acc: Option<&T>,
) -> Option<[usize; 2]> {
    plan(x, scale, None).filter(|&[rows, width]| {
        let matrix = |t: &T| t.dtype() == DType::F32 && t.shape().as_slice() == [rows, width];
        rstd.dtype() == DType::F32 && rstd.shape().num_elements() == rows && matrix(dy) && acc.is_none_or(matrix)
    })
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> NormOps for CubeBackend<R, F, I, BT> {
    fn norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        eps: f64,
        centred: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, width]) = plan(&x, &scale, bias.as_ref()) else {
            return reference::norm::<Self>(x, scale, bias, eps, centred);
        };
        let [x, scale] = [x, scale].map(into_contiguous);
        let biased = bias.is_some();
        let bias = bias.map_or_else(|| scale.clone(), into_contiguous);
        let y = empty_f32(&x, [rows, width]);
        let rstd = empty_f32(&x, [rows]);
        let client = x.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, width);
        norm_forward::launch::<f32, R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            scale.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rstd.clone().into_tensor_arg(),
            rows,
            width,
            eps as f32,
            block,
            centred,
            biased,
        );
        (y, rstd)
    }

    fn norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        centred: bool,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, width]) = backward_plan(&x, &scale, &rstd, &dy, acc.as_ref()) else {
            return reference::norm_backward_adding::<Self>(x, scale, rstd, dy, centred, acc);
        };
        let [x, scale, rstd, dy] = [x, scale, rstd, dy].map(into_contiguous);
        let accumulate = acc.is_some();
        let acc = acc.map_or_else(|| dy.clone(), into_contiguous);
        let dx = empty_f32(&x, [rows, width]);
        let means = empty_f32(&x, [rows]);
        let client = x.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, width);
        norm_rows::launch::<f32, R>(
            &client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            scale.into_tensor_arg(),
            rstd.clone().into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            acc.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            means.clone().into_tensor_arg(),
            rows,
            width,
            block,
            centred,
            accumulate,
        );
        let chunks = rows.div_ceil(CHUNK);
        let parts = empty_f32(&x, [2, chunks, width]);
        let (count, dim) = units(&client, chunks * width);
        norm_columns::launch::<f32, R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            rstd.into_tensor_arg(),
            means.into_tensor_arg(),
            dy.into_tensor_arg(),
            parts.clone().into_tensor_arg(),
            rows,
            width,
            chunks,
            CHUNK,
        );
        let sums = Self::float_sum_dim(parts, 1);
        (dx, row::<Self>(sums.clone(), 0, width), row::<Self>(sums, 1, width))
    }
}
