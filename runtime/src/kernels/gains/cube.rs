//! Gains on burn's CubeCL backends: the gained sum of two branches as one
//! element-wise kernel (the reference: two scalings and an add), and its
//! backward as one pass over memory — both branches' gradients written and
//! both gains' sums taken by (chunk of rows, column) — whose chunks burn's
//! reductions then sum per group (the reference: two scalings, two
//! products and four sums). A single scaling keeps the reference (one
//! broadcast product already). f32 only; other dtypes take the reference.
//! Tested against the reference in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, GainOps};
use crate::kernels::cube::{chunk_end, empty_f32, units};
use crate::kernels::tensor::row;

/// Rows a unit of `gains_backward` sums.
const CHUNK: usize = 32;

/// `ga[group] · a + gb[group] · b`, one unit per entry; a column's group
/// is `column / (width / n)` for `n` gains.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gained_sum<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    ga: &Tensor<F>,
    gb: &Tensor<F>,
    y: &mut Tensor<F>,
    n: usize,
    width: usize,
    span_a: usize,
    span_b: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= n {
        terminate!();
    }
    let column = pos % width;
    y[pos] = ga[column / span_a] * a[pos] + gb[column / span_b] * b[pos];
}

/// Unit `(chunk, column)`: over the chunk's rows, `da = ga · dy` and `db =
/// gb · dy` written, `Σ dy ⊙ a` and `Σ dy ⊙ b` into `parts[0, chunk,
/// column]` and `parts[1, chunk, column]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gains_backward<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    ga: &Tensor<F>,
    gb: &Tensor<F>,
    dy: &Tensor<F>,
    da: &mut Tensor<F>,
    db: &mut Tensor<F>,
    parts: &mut Tensor<F>,
    rows: usize,
    width: usize,
    chunks: usize,
    span_a: usize,
    span_b: usize,
    #[comptime] chunk: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= chunks * width {
        terminate!();
    }
    let column = pos % width;
    let first = (pos / width) * chunk;
    let last = chunk_end(first, chunk, rows);
    let (wa, wb) = (ga[column / span_a], gb[column / span_b]);
    let mut sa = F::new(0.0);
    let mut sb = F::new(0.0);
    for row in first..last {
        let at = row * width + column;
        let g = dy[at];
        da[at] = wa * g;
        db[at] = wb * g;
        sa += g * a[at];
        sb += g * b[at];
    }
    parts[pos] = sa;
    parts[chunks * width + pos] = sb;
}

/// `[rows, width, n_a, n_b]` when `a`, `b` (and `dy`) are f32 of one shape
/// and each gain's length divides the last dimension.
fn plan<R: CubeRuntime>(tensors: &[&CubeTensor<R>], ga: &CubeTensor<R>, gb: &CubeTensor<R>) -> Option<[usize; 4]> {
    let shape = tensors.first()?.shape();
    let width = *shape.as_slice().last()?;
    let rows = shape.num_elements().checked_div(width)?;
    let same = tensors.iter().all(|t| t.dtype == DType::F32 && t.shape() == shape);
    let (na, nb) = (ga.shape().num_elements(), gb.shape().num_elements());
    let gains = [ga, gb].iter().all(|g| g.dtype == DType::F32);
    let divides = na > 0 && nb > 0 && width % na == 0 && width % nb == 0;
    (same && gains && divides && rows > 0).then_some([rows, width, na, nb])
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GainOps for CubeBackend<R, F, I, BT> {
    fn scaled_sum(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some([rows, width, na, nb]) = plan(&[&a, &b], &ga, &gb) else {
            return reference::scaled_sum::<Self>(a, b, ga, gb);
        };
        let shape = a.shape();
        let [a, b, ga, gb] = [a, b, ga, gb].map(into_contiguous);
        let y = empty_f32(&a, shape);
        let client = a.client.clone();
        let n = rows * width;
        let (count, dim) = units(&client, n);
        gained_sum::launch::<f32, R>(
            &client,
            count,
            dim,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            ga.into_tensor_arg(),
            gb.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            n,
            width,
            width / na,
            width / nb,
        );
        y
    }

    fn scaled_sum_backward(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ga: FloatTensor<Self>,
        gb: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 4] {
        let Some([rows, width, na, nb]) = plan(&[&a, &b, &dy], &ga, &gb) else {
            return reference::scaled_sum_backward::<Self>(a, b, ga, gb, dy);
        };
        let shape = a.shape();
        let [a, b, ga, gb, dy] = [a, b, ga, gb, dy].map(into_contiguous);
        let da = empty_f32(&a, shape.clone());
        let db = empty_f32(&a, shape);
        let chunks = rows.div_ceil(CHUNK);
        let parts = empty_f32(&a, [2, chunks, width]);
        let client = a.client.clone();
        let (count, dim) = units(&client, chunks * width);
        gains_backward::launch::<f32, R>(
            &client,
            count,
            dim,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            ga.into_tensor_arg(),
            gb.into_tensor_arg(),
            dy.into_tensor_arg(),
            da.clone().into_tensor_arg(),
            db.clone().into_tensor_arg(),
            parts.clone().into_tensor_arg(),
            rows,
            width,
            chunks,
            width / na,
            width / nb,
            CHUNK,
        );
        // Per column, then per group of columns.
        let columns = Self::float_sum_dim(parts, 1);
        let gain = |k: usize, n: usize| {
            let grouped = Self::float_reshape(row::<Self>(columns.clone(), k, width), [n, width / n].into());
            Self::float_reshape(Self::float_sum_dim(grouped, 1), [n].into())
        };
        let (dga, dgb) = (gain(0, na), gain(1, nb));
        [da, db, dga, dgb]
    }
}
