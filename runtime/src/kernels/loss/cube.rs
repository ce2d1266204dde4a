//! The loss on burn's CubeCL backends: one cube per row of logits (a
//! vocabulary wide), each unit keeping a running maximum and sum of
//! exponentials over the entries it strides over (the online softmax),
//! the units' pairs then merged through shared memory into the row's
//! log-sum-exp. The reference makes a pass over the `[rows, vocab]`
//! logits for each of its operations (max, subtract, exp, sum, log,
//! gather; then exp, scatter, scale for the gradient); here the loss and
//! its gradient take one read and one write, the gradient written over
//! the logits.
//!
//! f32 logits and targets of the backend's int type only; others take the
//! reference. A target past the vocabulary reads its last entry, as on the
//! CPU. Tested against the reference in `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn::tensor::{DType, Element, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, LossOps};
use crate::kernels::cube::{empty_f32, plain_lse, row_cubes, sum_all, units, writable};

/// The target of `row`, within the vocabulary.
#[cube]
fn target<I: Int>(targets: &Tensor<I>, row: usize, vocab: usize) -> usize {
    let t = usize::cast_from(targets[row]);
    let mut within = t;
    if t >= vocab {
        within = vocab - 1;
    }
    within
}

#[cube(launch)]
fn loss_rows<F: Float, I: Int>(
    x: &Tensor<F>,
    targets: &Tensor<I>,
    nll: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    rows: usize,
    vocab: usize,
    #[comptime] block: usize,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let start = row * vocab;
    let s = plain_lse(x, start, vocab, block);
    if UNIT_POS == 0 {
        nll[row] = s - x[start + target(targets, row, vocab)];
        lse[row] = s;
    }
}

/// The row's cross-entropy into `nll`, and `(softmax − onehot) · inv_n`
/// over its logits; when `capped`, of the soft-capped logits `z = cap ·
/// tanh(x / cap)`, written over the row first, and the gradient taken back
/// through the cap (times `1 − (z / cap)²`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn loss_with_grad<F: Float, I: Int>(
    x: &mut Tensor<F>,
    targets: &Tensor<I>,
    nll: &mut Tensor<F>,
    rows: usize,
    vocab: usize,
    inv_n: f32,
    cap: f32,
    #[comptime] block: usize,
    #[comptime] capped: bool,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let start = row * vocab;
    let t = target(targets, row, vocab);
    let cap = F::cast_from(cap);
    if capped {
        // Each unit caps the entries it strides over; every unit then
        // reads the whole row.
        let mut c = UNIT_POS as usize;
        while c < vocab {
            x[start + c] = F::tanh(x[start + c] / cap) * cap;
            c += block;
        }
        sync_cube();
    }
    // Read before the row is overwritten (the writes follow the cube's
    // synchronisations in `plain_lse`).
    let picked = x[start + t];
    let s = plain_lse(x, start, vocab, block);
    let k = F::cast_from(inv_n);
    let mut c = UNIT_POS as usize;
    while c < vocab {
        let z = x[start + c];
        let mut p = F::exp(z - s) * k;
        if c == t {
            p -= k;
        }
        if capped {
            p *= F::new(1.0) - (z / cap) * (z / cap);
        }
        x[start + c] = p;
        c += block;
    }
    if UNIT_POS == 0 {
        nll[row] = s - picked;
    }
}

/// `g[row] · (exp(x − lse[row]) − onehot)`, one unit per entry.
#[cube(launch)]
fn loss_backward<F: Float, I: Int>(
    x: &Tensor<F>,
    lse: &Tensor<F>,
    targets: &Tensor<I>,
    g: &Tensor<F>,
    dx: &mut Tensor<F>,
    rows: usize,
    vocab: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= rows * vocab {
        terminate!();
    }
    let row = pos / vocab;
    let mut p = F::exp(x[pos] - lse[row]);
    if pos % vocab == target(targets, row, vocab) {
        p -= F::new(1.0);
    }
    dx[pos] = g[row] * p;
}

/// `[rows, vocab]` when the logits are an f32 matrix and the targets `rows`
/// of the backend's int type `I`. Of metadata only, as burn's fusion
/// streams plan too (`kernels/fused.rs` and the family's `fused.rs`).
pub(crate) fn plan<T: TensorMetadata, I: Element>(logits: &T, targets: &T) -> Option<[usize; 2]> {
    let s = logits.shape();
    let fits = s.num_dims() == 2
        && s[0] > 0
        && s[1] > 0
        && logits.dtype() == DType::F32
        && targets.dtype() == I::dtype()
        && targets.shape().num_elements() == s[0];
    fits.then(|| [s[0], s[1]])
}

/// The plan of the loss's backward (see [`plan`]): `lse` and `g` f32 of
/// `rows`.
pub(crate) fn backward_plan<T: TensorMetadata, I: Element>(
    logits: &T,
    lse: &T,
    targets: &T,
    g: &T,
) -> Option<[usize; 2]> {
    let rowwise = |t: &T, rows: usize| t.dtype() == DType::F32 && t.shape().num_elements() == rows;
    plan::<T, I>(logits, targets).filter(|&[rows, _]| rowwise(lse, rows) && rowwise(g, rows))
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> LossOps for CubeBackend<R, F, I, BT> {
    fn cross_entropy(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, vocab]) = plan::<_, I>(&logits, &targets) else {
            return reference::cross_entropy::<Self>(logits, targets);
        };
        let [x, targets] = [logits, targets].map(into_contiguous);
        let nll = empty_f32(&x, [rows]);
        let lse = empty_f32(&x, [rows]);
        let client = x.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, vocab);
        loss_rows::launch::<f32, I, R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            targets.into_tensor_arg(),
            nll.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            rows,
            vocab,
            block,
        );
        (nll, lse)
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let Some([rows, vocab]) = backward_plan::<_, I>(&logits, &lse, &targets, &g) else {
            return reference::cross_entropy_backward::<Self>(logits, lse, targets, g);
        };
        let [x, lse, targets, g] = [logits, lse, targets, g].map(into_contiguous);
        let dx = empty_f32(&x, [rows, vocab]);
        let client = x.client.clone();
        let (count, dim) = units(&client, rows * vocab);
        loss_backward::launch::<f32, I, R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            lse.into_tensor_arg(),
            targets.into_tensor_arg(),
            g.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            rows,
            vocab,
        );
        dx
    }

    fn total(x: FloatTensor<Self>) -> FloatTensor<Self> {
        sum_all(x)
    }

    fn nll_mean(logits: FloatTensor<Self>, targets: IntTensor<Self>, cap: Option<f64>) -> FloatTensor<Self> {
        let planned = plan::<_, I>(&logits, &targets).filter(|_| cap.is_none());
        let Some([rows, _]) = planned else {
            return reference::nll_mean::<Self>(logits, targets, cap);
        };
        let nll = Self::cross_entropy(logits, targets).0;
        Self::float_div_scalar(sum_all(nll), (rows as f64).into())
    }

    fn nll_mean_with_grad(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        cap: Option<f64>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some([rows, vocab]) = plan::<_, I>(&logits, &targets) else {
            return reference::nll_mean_with_grad::<Self>(logits, targets, cap);
        };
        // The gradient goes over the logits: a fresh copy when they are
        // shared or strided.
        let x = writable(logits);
        let targets = into_contiguous(targets);
        let nll = empty_f32(&x, [rows]);
        let client = x.client.clone();
        let (count, dim, block) = row_cubes(&client, rows, vocab);
        loss_with_grad::launch::<f32, I, R>(
            &client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            targets.into_tensor_arg(),
            nll.clone().into_tensor_arg(),
            rows,
            vocab,
            1.0 / rows as f32,
            cap.unwrap_or(1.0) as f32,
            block,
            cap.is_some(),
        );
        let loss = Self::float_div_scalar(sum_all(nll), (rows as f64).into());
        (loss, x)
    }
}
