//! The dense family on the CPU: products by `gemm` into outputs that are
//! not zeroed (added into a gradient in place), the bias and the ReLU (and
//! its mask of bits) while each block of the product is in cache.

use burn::backend::Flex;
use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::product::{matmul, product_by_blocks, Start};
use super::{loops, reference, DenseOps, Gate, ReluMask};
use crate::kernels::cpu::raw::Mat;
use crate::kernels::cpu::rows::{column_blocks, matrix, owned, totals, vector, Rows};
use crate::kernels::cpu::{parallel, simd};
use crate::kernels::tensor::split_heads;

impl DenseOps for Flex {
    fn activate(x: FlexTensor, gate: Gate) -> FlexTensor {
        map([&x], |out, [x]| loops::activate(out, x, gate)).unwrap_or_else(|| reference::activate::<Flex>(x, gate))
    }

    fn activate_backward(x: FlexTensor, dy: FlexTensor, gate: Gate) -> FlexTensor {
        map([&x, &dy], |out, [x, dy]| loops::activate_grad(out, x, dy, gate))
            .unwrap_or_else(|| reference::activate_backward::<Flex>(x, dy, gate))
    }

    fn gated(g: FlexTensor, h: FlexTensor, gate: Gate) -> FlexTensor {
        map([&g, &h], |out, [g, h]| loops::gated(out, g, h, gate))
            .unwrap_or_else(|| reference::gated::<Flex>(g, h, gate))
    }

    fn gated_backward(g: FlexTensor, h: FlexTensor, dz: FlexTensor, gate: Gate) -> (FlexTensor, FlexTensor) {
        if !same_f32(&[&g, &h, &dz]) {
            return reference::gated_backward::<Flex>(g, h, dz, gate);
        }
        let shape = dz.layout().shape().clone();
        let (g, h, dz) = (g.to_contiguous(), h.to_contiguous(), dz.to_contiguous());
        let n = shape.num_elements();
        let (gs, hs, ds): (&[f32], &[f32], &[f32]) = (&g.storage()[..n], &h.storage()[..n], &dz.storage()[..n]);
        // `dg` and `dh` by blocks, so one pass writes both.
        let mut both = vec![0.0f32; 2 * n];
        let (dg, dh) = both.split_at_mut(n);
        let work = |(k, (a, b)): (usize, (&mut [f32], &mut [f32]))| {
            let at = k * BLOCK..k * BLOCK + a.len();
            loops::gated_grad(a, b, &gs[at.clone()], &hs[at.clone()], &ds[at], gate);
        };
        if parallel(n) {
            dg.par_chunks_mut(BLOCK).zip(dh.par_chunks_mut(BLOCK)).enumerate().for_each(work);
        } else {
            dg.chunks_mut(BLOCK).zip(dh.chunks_mut(BLOCK)).enumerate().for_each(work);
        }
        let dh = both.split_off(n);
        (owned(both, shape.clone()), owned(dh, shape))
    }

    fn matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        matmul(a, b, false, Start::Zero).map_err(|(a, b, _)| (a, b)).unwrap_or_else(|(a, b)| Flex::float_matmul(a, b))
    }

    fn matmul_add(c: FlexTensor, a: FlexTensor, b: FlexTensor) -> FlexTensor {
        match matmul(a, b, false, Start::Add(c)) {
            Ok(y) => y,
            Err((a, b, Some(c))) => Flex::float_add(c, Self::matmul(a, b)),
            Err((a, b, None)) => Self::matmul(a, b),
        }
    }

    fn matmul_token_major_add(c: FlexTensor, a: FlexTensor, b: FlexTensor) -> FlexTensor {
        match matmul(a, b, true, Start::Add(c)) {
            Ok(y) => y,
            Err((a, b, Some(c))) => {
                let c = split_heads::<Flex>(c, a.layout().shape()[1]);
                Flex::float_add(c, Self::matmul_token_major(a, b))
            }
            Err((a, b, None)) => Self::matmul_token_major(a, b),
        }
    }

    fn matmul_token_major(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        matmul(a, b, true, Start::Zero).map_err(|(a, b, _)| (a, b)).unwrap_or_else(|(a, b)| Flex::float_matmul(a, b))
    }

    fn column_sums(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || x.layout().num_dims() != 2 {
            return reference::column_sums::<Flex>(x);
        }
        let x = x.to_contiguous();
        let (rows, cols) = (x.layout().shape()[0], x.layout().shape()[1]);
        let xs: &[f32] = &x.storage()[..rows * cols];
        let block = |b: &[f32]| {
            let mut acc = vec![0.0f32; cols];
            for row in b.chunks(cols.max(1)) {
                simd::add_into(&mut acc, row);
            }
            acc.into_iter().map(f64::from).collect::<Vec<f64>>()
        };
        let add = |mut a: Vec<f64>, b: Vec<f64>| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        };
        // Blocks of 64 rows summed in f32, the blocks in f64.
        let chunk = 64 * cols.max(1);
        let sums = if parallel(xs.len()) {
            xs.par_chunks(chunk).map(block).reduce(|| vec![0.0; cols], add)
        } else {
            xs.chunks(chunk).map(block).fold(vec![0.0; cols], add)
        };
        vector(sums.into_iter().map(|v| v as f32).collect())
    }

    fn dense(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>, relu: bool) -> FlexTensor {
        // ReLU after a bias: the bias added in the ReLU's pass over the
        // product (rather than written as its initial output).
        let shape = x.layout().shape().clone();
        let (k, n) = (shape.last().copied().unwrap_or(0), w.layout().shape().last().copied().unwrap_or(0));
        let fused = relu
            && w.layout().num_dims() == 2
            && bias.as_ref().is_some_and(|b| b.dtype() == DType::F32 && b.layout().num_elements() == n)
            && k > 0
            && n > 0;
        let Some(b) = bias.as_ref().filter(|_| fused) else {
            return reference::dense::<Flex>(x, w, bias, relu);
        };
        let b = b.to_contiguous();
        let bv: &[f32] = &b.storage()[..n];
        let x2 = Flex::float_reshape(x, [shape.num_elements() / k, k].into());
        match matmul(x2, w, false, Start::Zero) {
            Ok(y) => {
                let mut out = Rows::new(y);
                out.for_each(|_, row| loops::bias_relu(row, bv));
                let mut dims = shape;
                let last = dims.num_dims() - 1;
                dims[last] = n;
                Flex::float_reshape(out.tensor, dims)
            }
            Err((x2, w, _)) => {
                let y = reference::dense::<Flex>(x2, w, bias, relu);
                let mut dims = shape;
                let last = dims.num_dims() - 1;
                dims[last] = n;
                Flex::float_reshape(y, dims)
            }
        }
    }

    fn dense_relu(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>) -> (FlexTensor, ReluMask<Flex>) {
        let shape = x.layout().shape().clone();
        let (k, n) = (shape.last().copied().unwrap_or(0), w.layout().shape().last().copied().unwrap_or(0));
        let fits = x.dtype() == DType::F32
            && w.dtype() == DType::F32
            && w.layout().num_dims() == 2
            && w.layout().shape()[0] == k
            && k > 0
            && n > 0
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32 && b.layout().num_elements() == n);
        if !fits {
            let y = reference::dense::<Flex>(x, w, bias, true);
            return (y.clone(), ReluMask::Output(y));
        }
        let mut dims = shape.clone();
        let last = dims.num_dims() - 1;
        dims[last] = n;
        let rows = shape.num_elements() / k;
        let b = bias.map(|b| b.to_contiguous());
        let bv: Option<&[f32]> = b.as_ref().map(|b| &b.storage()[..n]);
        let (x, w) = (x.to_contiguous(), w.to_contiguous());
        let wo = Mat::rows(&w.storage::<f32>()[..k * n], k, n);
        // The bias, the ReLU and the mask's bits while each block of the
        // product is in cache.
        let words = n.div_ceil(32);
        let (y, bits) = product_by_blocks(&x.storage()[..rows * k], [rows, k, n], wo, |_, block| {
            let mut bits = vec![0u32; block.len() / n * words];
            for (row, part) in block.chunks_mut(n).zip(bits.chunks_mut(words)) {
                loops::relu_bits(row, bv, part);
            }
            bits
        });
        let bits: Vec<u32> = bits.concat();
        let words = FlexTensor::new(
            burn::tensor::Bytes::from_elems(bits),
            Layout::contiguous([rows, words].into()),
            DType::U32,
        );
        (owned(y, dims), ReluMask::Bits { words, cols: n })
    }

    fn masked_product(
        dy: FlexTensor,
        w: FlexTensor,
        mask: ReluMask<Flex>,
        sums: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let (sd, sw) = (dy.layout().shape(), w.layout().shape());
        let fits = dy.dtype() == DType::F32
            && w.dtype() == DType::F32
            && [sd.num_dims(), sw.num_dims()] == [2; 2]
            && sw[1] == sd[1]
            && sd.num_elements() > 0
            && sw.num_elements() > 0;
        let bits = if fits { bit_words(&mask, sd[0], sw[0]) } else { None };
        let Some((mask, words)) = bits else {
            let g = Flex::matmul(dy, Flex::float_transpose(w));
            return match sums {
                true => {
                    let (dz, db) = Flex::relu_grad_bias(mask, g);
                    (dz, Some(db))
                }
                false => (Flex::relu_grad(mask, g), None),
            };
        };
        let (rows, n, k) = (sd[0], sd[1], sw[0]);
        let (dy, w) = (dy.to_contiguous(), w.to_contiguous());
        let bits: &[u32] = &mask.storage()[..rows * words];
        let wt = Mat::rows(&w.storage::<f32>()[..k * n], k, n).t();
        // The mask (and the column sums) while each block of the product
        // is in cache.
        let (dz, parts) = product_by_blocks(&dy.storage()[..rows * n], [rows, n, k], wt, |first, block| {
            let mut acc = vec![0.0f32; if sums { k } else { 0 }];
            let bits = &bits[first * words..];
            for (row, part) in block.chunks_mut(k).zip(bits.chunks(words)) {
                match sums {
                    true => loops::relu_grad_bits_sum(row, part, &mut acc),
                    false => loops::relu_grad_bits(row, part),
                }
            }
            acc
        });
        let sums = sums.then(|| vector(totals(parts.iter().map(Vec::as_slice), k)));
        (matrix(dz, rows, k), sums)
    }

    fn relu_grad_bias(mask: ReluMask<Flex>, dy: FlexTensor) -> (FlexTensor, FlexTensor) {
        if let Some((bits, words)) = relu_bits(&mask, &dy) {
            let bits: &[u32] = bits.storage();
            let mut out = Rows::new(dy);
            let cols = out.width();
            let sums = column_blocks(out.all(), cols, |r, row, acc| {
                loops::relu_grad_bits_sum(row, &bits[r * words..(r + 1) * words], acc);
            });
            return (out.tensor, vector(sums));
        }
        let y = match mask {
            ReluMask::Output(y) => y,
            bits => return reference::relu_grad_bias::<Flex>(bits, dy),
        };
        let fits = y.dtype() == DType::F32
            && dy.dtype() == DType::F32
            && y.layout().num_dims() == 2
            && y.layout().shape() == dy.layout().shape()
            && y.layout().shape()[1] > 0;
        if !fits {
            return reference::relu_grad_bias::<Flex>(ReluMask::Output(y), dy);
        }
        let y = y.to_contiguous();
        let (rows, cols) = (y.layout().shape()[0], y.layout().shape()[1]);
        let ys: &[f32] = &y.storage()[..rows * cols];
        let mut out = Rows::new(dy);
        let sums = column_blocks(out.all(), cols, |r, row, acc| {
            loops::relu_grad_sum(row, &ys[r * cols..(r + 1) * cols], acc);
        });
        (out.tensor, vector(sums))
    }

    fn relu_grad(mask: ReluMask<Flex>, dy: FlexTensor) -> FlexTensor {
        if let Some((bits, words)) = relu_bits(&mask, &dy) {
            let bits: &[u32] = bits.storage();
            let mut out = Rows::new(dy);
            out.for_each(|r, row| loops::relu_grad_bits(row, &bits[r * words..(r + 1) * words]));
            return out.tensor;
        }
        let y = match mask {
            ReluMask::Output(y) => y,
            bits => return reference::relu_grad::<Flex>(bits, dy),
        };
        if y.dtype() != DType::F32 || dy.dtype() != DType::F32 || y.layout().shape() != dy.layout().shape() {
            return Flex::relu_backward(y, dy);
        }
        let y = y.to_contiguous();
        let ys: &[f32] = &y.storage()[..y.layout().num_elements()];
        let mut out = Rows::new(dy);
        let width = out.width();
        out.for_each(|r, row| loops::relu_grad(row, &ys[r * width..(r + 1) * width]));
        out.tensor
    }
}

/// The words of a mask of bits made for `rows × cols` (contiguous) and
/// their count per row, or `None` for a ReLU's output or bits of another
/// shape.
fn bit_words(mask: &ReluMask<Flex>, rows: usize, cols: usize) -> Option<(FlexTensor, usize)> {
    let ReluMask::Bits { words, cols: c } = mask else { return None };
    let s = words.layout().shape();
    let fits =
        words.dtype() == DType::U32 && s.num_dims() == 2 && s[0] == rows && *c == cols && s[1] == cols.div_ceil(32);
    fits.then(|| (words.to_contiguous(), s[1]))
}

/// [`bit_words`] for the gradient `dy: [rows, cols]` (f32).
fn relu_bits(mask: &ReluMask<Flex>, dy: &FlexTensor) -> Option<(FlexTensor, usize)> {
    let d = dy.layout().shape();
    (dy.dtype() == DType::F32 && d.num_dims() == 2).then(|| bit_words(mask, d[0], d[1])).flatten()
}

/// Whether every tensor is f32 with the first one's shape.
fn same_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32 && t.layout().shape() == ts[0].layout().shape())
}

/// The entries an elementwise loop takes at a time (in parallel by blocks).
const BLOCK: usize = 4096;

/// `f` over blocks of the entries of `ts` (`f(out, [blocks of ts])`), as a
/// new tensor of their shape, in parallel when large; `None` unless every
/// tensor is f32 with one shape.
fn map<const N: usize>(ts: [&FlexTensor; N], f: impl Fn(&mut [f32], [&[f32]; N]) + Sync) -> Option<FlexTensor> {
    if !same_f32(&ts) {
        return None;
    }
    let shape = ts[0].layout().shape().clone();
    let n = shape.num_elements();
    let held = ts.map(|t| t.to_contiguous());
    let xs: [&[f32]; N] = std::array::from_fn(|k| &held[k].storage()[..n]);
    let mut y = vec![0.0f32; n];
    let run = |(k, out): (usize, &mut [f32])| {
        let at = k * BLOCK..k * BLOCK + out.len();
        f(out, xs.map(|x| &x[at.clone()]));
    };
    if parallel(n) {
        y.par_chunks_mut(BLOCK).enumerate().for_each(run);
    } else {
        y.chunks_mut(BLOCK).enumerate().for_each(run);
    }
    Some(owned(y, shape))
}
