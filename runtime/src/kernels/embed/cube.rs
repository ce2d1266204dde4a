//! The embedding's gradient on burn's CubeCL backends. The lookup stays
//! burn's `select` (one unit per entry, as fast as a copy). Its gradient
//! through burn is `select_add`, which gives each *column* of the table
//! one unit and walks every token in turn (a read, an add and a write per
//! token, each waiting on the last: a dependent chain as long as the batch,
//! on as many units as the width — 768 threads walking 16,384 tokens for
//! the CodeParrot shape at batch 128). Here, with the tokens grouped by
//! token as the forward ran ([`super::groups`]), one unit per (token,
//! vector of columns) adds that token's rows of `dy` in their order and
//! adds the sum into the table's row once: every unit independent, the
//! same sums run to run. Tested against the reference in
//! `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensorOps, IntTensor};
use burn::tensor::{DType, Element, FloatDType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, EmbedOps};
use crate::kernels::cube::{units, writable};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> EmbedOps for CubeBackend<R, F, I, BT> {
    fn embed_groups(tokens: &IntTensor<Self>, vocab: usize) -> Option<IntTensor<Self>> {
        (tokens.dtype() == I::dtype()).then(|| super::groups::<Self>(tokens, vocab))
    }

    fn embed_backward(
        dy: CubeTensor<R>,
        tokens: CubeTensor<R>,
        groups: Option<CubeTensor<R>>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<CubeTensor<R>>,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        let Some(groups) = groups.filter(|g| plan::<_, I>(&dy, g, vocab, acc.as_ref()).is_some()) else {
            return reference::embed_backward::<Self>(dy, tokens, vocab, t, acc);
        };
        let dpos = t.map(|t| reference::position_grad::<Self>(dy.clone(), t));
        (table_grad::<R, F, I, BT>(dy, groups, vocab, acc), dpos)
    }
}

/// `[n, d]` of `dy` when the kernel takes it: f32 `dy: [n, d]`, the
/// groups of `n` tokens in the backend's int type (`[n + 2u + 1]`, `u ≤
/// n`), and an f32 table gradient from elsewhere of `vocab · d` entries.
pub(crate) fn plan<T: TensorMetadata, I: Element>(
    dy: &T,
    groups: &T,
    vocab: usize,
    acc: Option<&T>,
) -> Option<[usize; 2]> {
    let s = dy.shape();
    let g = groups.shape();
    let fits = dy.dtype() == DType::F32
        && s.num_dims() == 2
        && vocab > 0
        && groups.dtype() == I::dtype()
        && g.num_dims() == 1
        && g[0] > s[0]
        && (g[0] - s[0] - 1).is_multiple_of(2)
        && (g[0] - s[0] - 1) / 2 <= s[0]
        && acc.is_none_or(|a| a.dtype() == DType::F32 && a.shape().num_elements() == vocab * s[1]);
    fits.then(|| [s[0], s[1]])
}

/// The table's gradient `[vocab, d]`: `dy`'s rows summed by token (by
/// `groups`), added into `acc` when given (in its memory when nothing
/// else holds it), else into zeros. The caller has checked [`plan`].
pub(crate) fn table_grad<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dy: CubeTensor<R>,
    groups: CubeTensor<R>,
    vocab: usize,
    acc: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let [n, d] = [dy.shape()[0], dy.shape()[1]];
    let table = match acc {
        Some(a) => Cube::<R, F, I, BT>::float_reshape(writable(a), [vocab, d].into()),
        None => Cube::<R, F, I, BT>::float_zeros([vocab, d].into(), &dy.device, FloatDType::F32),
    };
    let runs = (groups.shape()[0] - n - 1) / 2;
    if runs == 0 || d == 0 {
        return table;
    }
    let client = dy.client.clone();
    let lanes = if client.properties().hardware.max_vector_size >= 4 && d.is_multiple_of(4) { 4 } else { 1 };
    let w = d / lanes;
    let (count, dim) = units(&client, runs * w);
    let (dy, groups) = (into_contiguous(dy), into_contiguous(groups));
    sum_by_token::launch::<f32, I, R>(
        &client,
        count,
        dim,
        lanes,
        dy.into_tensor_arg(),
        groups.into_tensor_arg(),
        table.clone().into_tensor_arg(),
        runs * w,
        n,
        runs,
        w,
    );
    table
}

/// Unit `pos` of `units = runs · w`: group `s = pos / w`, vector `c` of a
/// row of `w` vectors. `groups` is the `rows` rows in token order, where
/// each of the `runs` groups starts (and the end), then each group's token.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn sum_by_token<F: Float, I: Int, N: Size>(
    dy: &Tensor<Vector<F, N>>,
    groups: &Tensor<I>,
    table: &mut Tensor<Vector<F, N>>,
    units: usize,
    rows: usize,
    runs: usize,
    w: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let s = pos / w;
    let c = pos % w;
    let first = usize::cast_from(groups[rows + s]);
    let end = usize::cast_from(groups[rows + s + 1]);
    let token = usize::cast_from(groups[rows + runs + 1 + s]);
    let mut sum = Vector::new(F::new(0.0));
    for k in first..end {
        let row = usize::cast_from(groups[k]);
        sum += dy[row * w + c];
    }
    let at = token * w + c;
    table[at] = table[at] + sum;
}
