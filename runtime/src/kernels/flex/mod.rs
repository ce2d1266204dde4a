//! The kernels on burn's `flex` CPU backend, for f32 (other dtypes take
//! burn's own ops).
//!
//! Matrix products call `gemm` straight into an output that is allocated
//! and not zeroed: flex 0.21 allocates a product's output zeroed and then
//! copies it once more to realign it (`FlexTensor::empty`), which cost 19 %
//! of a step of the small model (perf: `memcpy`, `memset`, page clearing
//! under `matmul_gemm`).

use burn::backend::Flex;
use burn::tensor::ops::{ActivationOps, FloatTensorOps};
use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod attention;
mod buffers;
mod matmul;
mod mix;
mod norm;

use attention::*;
use buffers::*;
use matmul::*;
use mix::*;

use super::{composed, simd, AdamStep, Kernels, MixAddend, MixArgs, MixSumGrads, Shaped, ShapedGrads};

/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// Element-wise kernels on fewer elements than this run on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// Nanoseconds spent inside `gemm` by the products of this process.
static PRODUCT_NANOS: AtomicU64 = AtomicU64::new(0);

/// Wall time spent inside `gemm` by this backend's matrix products since
/// the process started (the products' calls, not the setting up of their
/// outputs). Burn runs a step's operations one after another, so the
/// difference of two readings around a step is the step's time in
/// products, however many threads each product uses.
pub fn product_time() -> Duration {
    Duration::from_nanos(PRODUCT_NANOS.load(Ordering::Relaxed))
}

impl Kernels for Flex {
    fn matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        matmul(a, b, false, Start::Zero).map_err(|(a, b, _)| (a, b)).unwrap_or_else(|(a, b)| Flex::float_matmul(a, b))
    }

    fn scaled_sum(a: FlexTensor, b: FlexTensor, ga: FlexTensor, gb: FlexTensor) -> FlexTensor {
        let fits = a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.layout().shape() == b.layout().shape();
        let width = a.layout().shape().last().copied().unwrap_or(0);
        let (Some(ca), Some(cb)) = (columns(&ga, width).filter(|_| fits), columns(&gb, width)) else {
            return composed::scaled_sum::<Flex>(a, b, ga, gb);
        };
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let len = a.layout().num_elements();
        let (av, bv): (&[f32], &[f32]) = (&a.storage()[..len], &b.storage()[..len]);
        // SAFETY: `simd::sum2_row` writes every element of its row.
        let out = unsafe {
            filled(len, width, |r, row| {
                let span = r * width..(r + 1) * width;
                simd::sum2_row(row, &av[span.clone()], &bv[span], &ca, &cb);
            })
        };
        owned(out, a.layout().shape().clone())
    }

    fn scaled_sum_backward(
        a: FlexTensor,
        b: FlexTensor,
        ga: FlexTensor,
        gb: FlexTensor,
        dy: FlexTensor,
    ) -> [FlexTensor; 4] {
        let fits = [&a, &b, &dy].iter().all(|t| t.dtype() == DType::F32 && t.layout().shape() == a.layout().shape());
        let width = a.layout().shape().last().copied().unwrap_or(0);
        let (na, nb) = (ga.layout().num_elements(), gb.layout().num_elements());
        let (Some(ca), Some(cb)) = (columns(&ga, width).filter(|_| fits), columns(&gb, width)) else {
            return composed::scaled_sum_backward::<Flex>(a, b, ga, gb, dy);
        };
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let len = a.layout().num_elements();
        let (av, bv): (&[f32], &[f32]) = (&a.storage()[..len], &b.storage()[..len]);
        // `da = ga ⊙ dy` over `dy` itself; `db` fresh.
        let mut da = Rows::new(dy);
        let mut db: Vec<f32> = Vec::with_capacity(len);
        // Blocks of 64 rows: the gains' column sums from `dy`, then `db`
        // and `da`.
        let block = 64 * width;
        let part = |(k, (xa, xb)): (usize, (&mut [f32], &mut [MaybeUninit<f32>]))| {
            let (mut sa, mut sb) = (vec![0.0f32; width], vec![0.0f32; width]);
            let span = k * block..(k * block + xa.len());
            let (ar, br) = (&av[span.clone()], &bv[span]);
            for (i, (g, yb)) in xa.chunks_mut(width).zip(xb.chunks_mut(width)).enumerate() {
                let row = i * width..(i + 1) * width;
                simd::add_products(&mut sa, g, &ar[row.clone()]);
                simd::add_products(&mut sb, g, &br[row]);
                simd::scale_cols(yb, g, &cb);
                simd::scale_in_place(g, &ca);
            }
            [sa, sb]
        };
        let add = |mut x: [Vec<f64>; 2], y: [Vec<f32>; 2]| {
            for (p, q) in x.iter_mut().zip(y) {
                p.iter_mut().zip(q).for_each(|(s, t)| *s += f64::from(t));
            }
            x
        };
        let zero = || [vec![0.0f64; width], vec![0.0f64; width]];
        let (ga_, gb_) = (da.all(), &mut db.spare_capacity_mut()[..len]);
        let [sa, sb] = if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            let parts: Vec<[Vec<f32>; 2]> =
                ga_.par_chunks_mut(block).zip(gb_.par_chunks_mut(block)).enumerate().map(part).collect();
            parts.into_iter().fold(zero(), add)
        } else {
            ga_.chunks_mut(block).zip(gb_.chunks_mut(block)).enumerate().map(part).fold(zero(), add)
        };
        // SAFETY: `simd::scale_cols` wrote every element of every row of
        // `db`'s `len` (the blocks cover it, rows of `width`).
        unsafe { db.set_len(len) };
        let shape = a.layout().shape().clone();
        [da.tensor, owned(db, shape), group_sums(&sa, na), group_sums(&sb, nb)]
    }

    fn mix(v: FlexTensor, o: FlexTensor, gains: [FlexTensor; 3], causal: bool) -> FlexTensor {
        let m = MixArgs { v, o, gains, causal };
        mix_forward(m, None).unwrap_or_else(|(m, _)| composed::mix::<Flex>(m.v, m.o, m.gains, m.causal))
    }

    fn mix_backward(
        v: FlexTensor,
        o: FlexTensor,
        gains: [FlexTensor; 3],
        dy: FlexTensor,
        causal: bool,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, [FlexTensor; 3]) {
        match mix_backward(MixArgs { v, o, gains, causal }, None, dy, acc) {
            Ok((dv, d_o, dgains, _)) => (dv, d_o, dgains),
            Err((m, _, dy, acc)) => composed::mix_backward::<Flex>(m.v, m.o, m.gains, dy, m.causal, acc),
        }
    }

    fn mix_sum(m: MixArgs<FlexTensor>, add: MixAddend<FlexTensor>) -> FlexTensor {
        mix_forward(m, Some(add)).unwrap_or_else(|(m, add)| {
            composed::mix_sum::<Flex>(m, add.expect("the addend comes back with the operands"))
        })
    }

    fn mix_sum_backward(
        m: MixArgs<FlexTensor>,
        add: MixAddend<FlexTensor>,
        dy: FlexTensor,
        acc: Option<FlexTensor>,
    ) -> MixSumGrads<FlexTensor> {
        match mix_backward(m, Some(add), dy, acc) {
            Ok((dv, d_o, dgains, Some([db, dga, dgb]))) => MixSumGrads { dv, d_o, dgains, db, dga, dgb },
            Ok(_) => unreachable!("an addend's gradients come with it"),
            Err((m, add, dy, acc)) => {
                composed::mix_sum_backward::<Flex>(m, add.expect("the addend comes back with the operands"), dy, acc)
            }
        }
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
                let c = super::autodiff::split_heads::<Flex>(c, a.layout().shape()[1]);
                Flex::float_add(c, Self::matmul_token_major(a, b))
            }
            Err((a, b, None)) => Self::matmul_token_major(a, b),
        }
    }

    fn matmul_token_major(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        matmul(a, b, true, Start::Zero).map_err(|(a, b, _)| (a, b)).unwrap_or_else(|(a, b)| Flex::float_matmul(a, b))
    }

    fn matmul_bias(a: FlexTensor, b: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let n = b.layout().shape().last().copied().unwrap_or(0);
        if bias.dtype() != DType::F32 || a.layout().num_dims() != 2 || bias.layout().num_elements() != n {
            return composed::matmul_bias::<Flex>(a, b, bias);
        }
        let bias = bias.to_contiguous();
        let v: &[f32] = &bias.storage()[..n];
        match matmul(a, b, false, Start::Zero) {
            Ok(y) => {
                // The bias added after the product, while its output is
                // still in cache.
                let mut out = Rows::new(y);
                out.for_each(|_, row| simd::add_into(row, v));
                out.tensor
            }
            Err((a, b, _)) => composed::matmul_bias::<Flex>(a, b, bias.clone()),
        }
    }

    fn column_sums(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || x.layout().num_dims() != 2 {
            return composed::column_sums::<Flex>(x);
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
        let sums = if xs.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            xs.par_chunks(chunk).map(block).reduce(|| vec![0.0; cols], add)
        } else {
            xs.chunks(chunk).map(block).fold(vec![0.0; cols], add)
        };
        vector(sums.into_iter().map(|v| v as f32).collect())
    }

    fn embed(table: FlexTensor, tokens: FlexTensor, positions: Option<FlexTensor>) -> FlexTensor {
        let usable = table.dtype() == DType::F32
            && table.layout().num_dims() == 2
            && positions.as_ref().is_none_or(|p| {
                let s = p.layout().shape();
                p.dtype() == DType::F32 && s.num_dims() == 2 && s[0] > 0 && s[1] == table.layout().shape()[1]
            });
        let Some(ids) = indices(&tokens).filter(|_| usable) else {
            return composed::embed::<Flex>(table, tokens, positions);
        };
        let (table, positions) = (table.to_contiguous(), positions.map(|p| p.to_contiguous()));
        let (vocab, d) = (table.layout().shape()[0], table.layout().shape()[1]);
        let rows: &[f32] = &table.storage()[..vocab * d];
        let pos: Option<(&[f32], usize)> =
            positions.as_ref().map(|p| (&p.storage()[..p.layout().num_elements()], p.layout().shape()[0].max(1)));
        let n = ids.len();
        let fill = |i: usize, o: &mut [MaybeUninit<f32>]| {
            let k = ids[i].min(vocab.saturating_sub(1));
            simd::embed_row(o, &rows[k * d..(k + 1) * d], pos.map(|(p, t)| &p[(i % t) * d..(i % t + 1) * d]));
        };
        if vocab == 0 || d == 0 {
            return composed::embed::<Flex>(table, tokens, positions);
        }
        // SAFETY: `simd::embed_row` writes all `d` elements of its row
        // (table rows and position rows are `d` long).
        let out = unsafe { filled(n * d, d, fill) };
        matrix(out, n, d)
    }

    fn embed_backward(
        dy: FlexTensor,
        tokens: FlexTensor,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let usable = dy.dtype() == DType::F32 && dy.layout().num_dims() == 2 && vocab > 0;
        let d = dy.layout().shape().last().copied().unwrap_or(0);
        let acc_fits = acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().num_elements() == vocab * d);
        let Some(ids) = indices(&tokens).filter(|_| usable && acc_fits) else {
            return composed::embed_backward::<Flex>(dy, tokens, vocab, t, acc);
        };
        let dy = dy.to_contiguous();
        let n = dy.layout().shape()[0];
        let g: &[f32] = &dy.storage()[..n * d];
        // Into the table's gradient from elsewhere (a tied head's), else zeros.
        let mut base = acc.map(Rows::new);
        let mut zeros = Vec::new();
        let table: &mut [f32] = match base.as_mut() {
            Some(rows) => rows.all(),
            None => {
                zeros = vec![0.0f32; vocab * d];
                &mut zeros
            }
        };
        let mut pos = t.map(|t| vec![0.0f32; t.max(1) * d]);
        // One pass over dy (rows of a token add up: serial).
        for (i, row) in g.chunks(d.max(1)).enumerate() {
            let k = ids.get(i).copied().unwrap_or(0).min(vocab - 1);
            simd::add_into(&mut table[k * d..(k + 1) * d], row);
            if let (Some(p), Some(t)) = (pos.as_mut(), t) {
                let j = i % t.max(1);
                simd::add_into(&mut p[j * d..(j + 1) * d], row);
            }
        }
        let table = match base {
            Some(rows) => Flex::float_reshape(rows.tensor, [vocab, d].into()),
            None => matrix(zeros, vocab, d),
        };
        (table, pos.zip(t).map(|(p, t)| matrix(p, t.max(1), d)))
    }

    fn matmul_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        match matmul(a, b, false, Start::Zero) {
            Ok(y) => {
                let mut out = Rows::new(y);
                out.for_each(|_, row| simd::relu(row));
                out.tensor
            }
            Err((a, b, _)) => composed::matmul_relu::<Flex>(a, b),
        }
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
            return composed::dense::<Flex>(x, w, bias, relu);
        };
        let b = b.to_contiguous();
        let bv: &[f32] = &b.storage()[..n];
        let x2 = Flex::float_reshape(x, [shape.num_elements() / k, k].into());
        match matmul(x2, w, false, Start::Zero) {
            Ok(y) => {
                let mut out = Rows::new(y);
                out.for_each(|_, row| simd::bias_relu(row, bv));
                let mut dims = shape;
                let last = dims.num_dims() - 1;
                dims[last] = n;
                Flex::float_reshape(out.tensor, dims)
            }
            Err((x2, w, _)) => {
                let y = composed::dense::<Flex>(x2, w, bias, relu);
                let mut dims = shape;
                let last = dims.num_dims() - 1;
                dims[last] = n;
                Flex::float_reshape(y, dims)
            }
        }
    }

    fn dense_relu(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>) -> (FlexTensor, FlexTensor) {
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
            let y = composed::dense::<Flex>(x, w, bias, true);
            return (y.clone(), y);
        }
        let mut dims = shape.clone();
        let last = dims.num_dims() - 1;
        dims[last] = n;
        let rows = shape.num_elements() / k;
        let b = bias.map(|b| b.to_contiguous());
        let bv: Option<&[f32]> = b.as_ref().map(|b| &b.storage()[..n]);
        let (x, w) = (x.to_contiguous(), w.to_contiguous());
        let wo = Operand { ptr: w.storage::<f32>().as_ptr(), rs: n as isize, cs: 1 };
        // The bias, the ReLU and the mask's bits while each block of the
        // product is in cache.
        let words = n.div_ceil(32);
        let (y, bits) = product_by_blocks(&x.storage()[..rows * k], [rows, k, n], wo, |_, block| {
            let mut bits = vec![0u32; block.len() / n * words];
            for (row, part) in block.chunks_mut(n).zip(bits.chunks_mut(words)) {
                simd::relu_bits(row, bv, part);
            }
            bits
        });
        let bits: Vec<u32> = bits.concat();
        let mask = FlexTensor::new(
            burn::tensor::Bytes::from_elems(bits),
            Layout::contiguous([rows, words].into()),
            DType::U32,
        );
        (owned(y, dims), mask)
    }

    fn masked_product(dy: FlexTensor, w: FlexTensor, mask: FlexTensor, sums: bool) -> (FlexTensor, Option<FlexTensor>) {
        let (sd, sw, sm) = (dy.layout().shape(), w.layout().shape(), mask.layout().shape());
        let fits = dy.dtype() == DType::F32
            && w.dtype() == DType::F32
            && mask.dtype() == DType::U32
            && [sd.num_dims(), sw.num_dims(), sm.num_dims()] == [2; 3]
            && sw[1] == sd[1]
            && sm[0] == sd[0]
            && sm[1] == sw[0].div_ceil(32)
            && sd.num_elements() > 0
            && sw.num_elements() > 0;
        if !fits {
            let g = Flex::matmul(dy, Flex::float_transpose(w));
            return match sums {
                true => {
                    let (dz, db) = Flex::relu_grad_bias(mask, g);
                    (dz, Some(db))
                }
                false => (Flex::relu_grad(mask, g), None),
            };
        }
        let (rows, n, k, words) = (sd[0], sd[1], sw[0], sm[1]);
        let (dy, w, mask) = (dy.to_contiguous(), w.to_contiguous(), mask.to_contiguous());
        let bits: &[u32] = &mask.storage()[..rows * words];
        let wt = Operand { ptr: w.storage::<f32>().as_ptr(), rs: 1, cs: n as isize };
        // The mask (and the column sums) while each block of the product
        // is in cache.
        let (dz, parts) = product_by_blocks(&dy.storage()[..rows * n], [rows, n, k], wt, |first, block| {
            let mut acc = vec![0.0f32; if sums { k } else { 0 }];
            let bits = &bits[first * words..];
            for (row, part) in block.chunks_mut(k).zip(bits.chunks(words)) {
                match sums {
                    true => simd::relu_grad_bits_sum(row, part, &mut acc),
                    false => simd::relu_grad_bits(row, part),
                }
            }
            acc
        });
        let sums = sums.then(|| vector(totals(parts.iter().map(Vec::as_slice), k)));
        (matrix(dz, rows, k), sums)
    }

    fn relu_grad_bias(y: FlexTensor, dy: FlexTensor) -> (FlexTensor, FlexTensor) {
        if let Some((mask, words)) = relu_mask(&y, &dy) {
            let bits: &[u32] = mask.storage();
            let mut out = Rows::new(dy);
            let cols = out.width();
            let sums = column_blocks(out.all(), cols, |r, row, acc| {
                simd::relu_grad_bits_sum(row, &bits[r * words..(r + 1) * words], acc);
            });
            return (out.tensor, vector(sums));
        }
        let fits = y.dtype() == DType::F32
            && dy.dtype() == DType::F32
            && y.layout().num_dims() == 2
            && y.layout().shape() == dy.layout().shape()
            && y.layout().shape()[1] > 0;
        if !fits {
            let dz = Self::relu_grad(y, dy);
            return (dz.clone(), Self::column_sums(dz));
        }
        let y = y.to_contiguous();
        let (rows, cols) = (y.layout().shape()[0], y.layout().shape()[1]);
        let ys: &[f32] = &y.storage()[..rows * cols];
        let mut out = Rows::new(dy);
        let sums = column_blocks(out.all(), cols, |r, row, acc| {
            simd::relu_grad_sum(row, &ys[r * cols..(r + 1) * cols], acc);
        });
        (out.tensor, vector(sums))
    }

    fn relu_grad(y: FlexTensor, dy: FlexTensor) -> FlexTensor {
        if let Some((mask, words)) = relu_mask(&y, &dy) {
            let bits: &[u32] = mask.storage();
            let mut out = Rows::new(dy);
            out.for_each(|r, row| simd::relu_grad_bits(row, &bits[r * words..(r + 1) * words]));
            return out.tensor;
        }
        if y.dtype() != DType::F32 || dy.dtype() != DType::F32 || y.layout().shape() != dy.layout().shape() {
            return Flex::relu_backward(y, dy);
        }
        let y = y.to_contiguous();
        let ys: &[f32] = &y.storage()[..y.layout().num_elements()];
        let mut out = Rows::new(dy);
        let width = out.width();
        out.for_each(|r, row| simd::relu_grad(row, &ys[r * width..(r + 1) * width]));
        out.tensor
    }

    fn scale_groups(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        let width = x.layout().shape().last().copied().unwrap_or(0);
        let n = g.layout().num_elements();
        if x.dtype() != DType::F32 || g.dtype() != DType::F32 || n == 0 || width % n != 0 {
            return composed::scale_groups::<Flex>(x, g);
        }
        let g = g.to_contiguous();
        let gains: &[f32] = &g.storage()[..n];
        let inner = width / n;
        let mut out = Rows::new(x);
        out.for_each(|_, row| simd::scale_groups(row, gains, inner));
        out.tensor
    }

    fn scale_groups_grad(x: FlexTensor, dy: FlexTensor, n: usize) -> FlexTensor {
        let width = x.layout().shape().last().copied().unwrap_or(0);
        if x.dtype() != DType::F32 || dy.dtype() != DType::F32 || n == 0 || width % n != 0 {
            return composed::scale_groups_grad::<Flex>(x, dy, n);
        }
        let (x, dy) = (x.to_contiguous(), dy.to_contiguous());
        let len = x.layout().num_elements();
        let (xs, gs): (&[f32], &[f32]) = (&x.storage()[..len], &dy.storage()[..len]);
        let inner = width / n;
        // Per-group sums of x ⊙ dy, accumulated in f64 over blocks of rows.
        let block = width * 64;
        let partial = |(a, b): (&[f32], &[f32])| {
            let mut acc = vec![0.0f64; n];
            simd::group_dots(a, b, width, inner, &mut acc);
            acc
        };
        let add = |mut a: Vec<f64>, b: Vec<f64>| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        };
        let sums = if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            xs.par_chunks(block).zip(gs.par_chunks(block)).map(partial).reduce(|| vec![0.0; n], add)
        } else {
            xs.chunks(block).zip(gs.chunks(block)).map(partial).fold(vec![0.0; n], add)
        };
        vector(sums.into_iter().map(|v| v as f32).collect())
    }

    fn causal_mean(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || x.layout().num_dims() != 3 {
            return composed::causal_mean::<Flex>(x);
        }
        let [_, t, d] = dims3(&x);
        let mut out = Rows::new(x);
        out.for_each_sequence(t * d, |seq| simd::running_mean(seq, d));
        out.tensor
    }

    fn causal_mean_backward(dy: FlexTensor) -> FlexTensor {
        if dy.dtype() != DType::F32 || dy.layout().num_dims() != 3 {
            return composed::causal_mean_backward::<Flex>(dy);
        }
        let [_, t, d] = dims3(&dy);
        let mut out = Rows::new(dy);
        out.for_each_sequence(t * d, |seq| simd::running_mean_backward(seq, d));
        out.tensor
    }

    fn adam(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        k: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if [&p, &g, &m, &v].iter().any(|t| t.dtype() != DType::F32) {
            return composed::adam::<Flex>(p, g, m, v, k);
        }
        let g = g.to_contiguous();
        let n = g.layout().num_elements();
        let gs: &[f32] = &g.storage()[..n];
        let (mut p, mut m, mut v) = (Rows::new(p), Rows::new(m), Rows::new(v));
        let f = |x: f64| x as f32;
        let k = simd::Adam {
            lr: f(k.lr / k.bc1),
            beta1: f(k.beta1),
            beta2: f(k.beta2),
            eps: f(k.eps),
            inv_bc2: f(1.0 / k.bc2),
            grad_scale: f(k.grad_scale),
            l2: f(k.l2),
            keep: f(1.0 - k.decay),
        };
        let (ps, ms, vs) = (p.all(), m.all(), v.all());
        const CHUNK: usize = 1 << 14;
        if n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            let chunks = ps.par_chunks_mut(CHUNK).zip(ms.par_chunks_mut(CHUNK)).zip(vs.par_chunks_mut(CHUNK));
            chunks.zip(gs.par_chunks(CHUNK)).for_each(|(((p, m), v), g)| simd::adam(p, m, v, g, k));
        } else {
            let chunks = ps.chunks_mut(CHUNK).zip(ms.chunks_mut(CHUNK)).zip(vs.chunks_mut(CHUNK));
            chunks.zip(gs.chunks(CHUNK)).for_each(|(((p, m), v), g)| simd::adam(p, m, v, g, k));
        }
        (p.tensor, m.tensor, v.tensor)
    }

    fn norm(
        x: FlexTensor,
        scale: FlexTensor,
        bias: Option<FlexTensor>,
        eps: f64,
        centred: bool,
    ) -> (FlexTensor, FlexTensor) {
        norm::norm(x, scale, bias, eps, centred)
    }

    fn norm_backward(
        x: FlexTensor,
        scale: FlexTensor,
        rstd: FlexTensor,
        dy: FlexTensor,
        centred: bool,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        norm::norm_backward(x, scale, rstd, dy, centred, acc)
    }

    fn cross_entropy(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let Some(targets) = indices(&targets).filter(|_| logits.dtype() == DType::F32) else {
            return composed::cross_entropy::<Flex>(logits, targets);
        };
        let logits = logits.to_contiguous();
        let v = logits.layout().shape()[1];
        let n = targets.len();
        let x: &[f32] = &logits.storage()[..n * v];
        let row = |(i, r): (usize, &[f32])| {
            let lse = simd::log_sum_exp(r);
            (lse - r[targets[i].min(v - 1)], lse)
        };
        let pairs: Vec<(f32, f32)> = if n * v >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            x.par_chunks(v).enumerate().map(row).collect()
        } else {
            x.chunks(v).enumerate().map(row).collect()
        };
        let (nll, lse): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
        (vector(nll), vector(lse))
    }

    fn nll_mean_with_grad(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let fits = logits.dtype() == DType::F32 && logits.layout().num_dims() == 2 && logits.layout().shape()[1] > 0;
        let Some(t) = indices(&targets).filter(|t| fits && t.len() == logits.layout().shape()[0]) else {
            return composed::nll_mean_with_grad::<Flex>(logits, targets);
        };
        let mut out = Rows::new(logits);
        let (n, v) = (t.len(), out.width());
        let inv_n = 1.0 / n.max(1) as f32;
        let rows = out.all();
        let row = |(i, r): (usize, &mut [f32])| f64::from(simd::cross_entropy_grad_row(r, t[i].min(v - 1), inv_n));
        let total: f64 = if n * v >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            rows.par_chunks_mut(v).enumerate().map(row).sum()
        } else {
            rows.chunks_mut(v).enumerate().map(row).sum()
        };
        (vector(vec![(total / n.max(1) as f64) as f32]), out.tensor)
    }

    fn times_scalar(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || g.dtype() != DType::F32 || g.layout().num_elements() != 1 {
            return composed::times_scalar::<Flex>(x, g);
        }
        let g = g.to_contiguous();
        let k: f32 = g.storage::<f32>()[0];
        if k == 1.0 {
            return x;
        }
        let mut out = Rows::new(x);
        out.for_each(|_, row| row.iter_mut().for_each(|v| *v *= k));
        out.tensor
    }

    fn cross_entropy_backward(logits: FlexTensor, lse: FlexTensor, targets: FlexTensor, g: FlexTensor) -> FlexTensor {
        let usable = logits.dtype() == DType::F32 && lse.dtype() == DType::F32 && g.dtype() == DType::F32;
        let Some(t) = indices(&targets).filter(|_| usable) else {
            return composed::cross_entropy_backward::<Flex>(logits, lse, targets, g);
        };
        let (lse, g) = (lse.to_contiguous(), g.to_contiguous());
        let (lse, g): (&[f32], &[f32]) = (lse.storage(), g.storage());
        let mut out = Rows::new(logits);
        let v = out.width();
        out.for_each(|i, row| {
            simd::scaled_exp(row, lse[i], g[i]);
            row[t[i].min(v - 1)] -= g[i];
        });
        out.tensor
    }

    fn attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bq: Option<FlexTensor>,
        (scale, causal): (f64, bool),
    ) -> (FlexTensor, FlexTensor) {
        attention::attention_forward(q, k, v, bq, (scale, causal))
    }

    fn attention_backward(
        qkv: [FlexTensor; 3],
        bq: Option<FlexTensor>,
        p: FlexTensor,
        g: FlexTensor,
        (scale, acc): (f64, Option<FlexTensor>),
        wants: [bool; 3],
    ) -> [Option<FlexTensor>; 4] {
        attention::attention_backward(qkv, bq, p, g, (scale, acc), wants)
    }

    fn shaped_attention_forward(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> (FlexTensor, FlexTensor) {
        attention::shaped_attention_forward(a, add)
    }

    fn shaped_attention_backward(
        a: Shaped<FlexTensor>,
        add: Option<MixAddend<FlexTensor>>,
        p: FlexTensor,
        dy: FlexTensor,
        acc: Option<FlexTensor>,
    ) -> ShapedGrads<FlexTensor> {
        attention::shaped_attention_backward(a, add, p, dy, acc)
    }

    fn softmax_scores(s: FlexTensor, scale: f64, causal: bool) -> FlexTensor {
        if s.dtype() != DType::F32 {
            return composed::softmax_scores::<Flex>(s, scale, causal);
        }
        let shape = s.layout().shape().clone();
        let (tq, tk) = (shape[shape.num_dims() - 2], shape[shape.num_dims() - 1]);
        let mut out = Rows::new(s);
        let scale = scale as f32;
        out.for_each(|r, row| {
            // Row `i` of its matrix sees columns `0..=i`.
            let seen = if causal { (r % tq + 1).min(tk) } else { tk };
            simd::softmax(row, seen, scale);
        });
        out.tensor
    }

    fn softmax_scores_backward(p: FlexTensor, dp: FlexTensor, scale: f64) -> FlexTensor {
        if p.dtype() != DType::F32 || dp.dtype() != DType::F32 {
            return composed::softmax_scores_backward::<Flex>(p, dp, scale);
        }
        let p = p.to_contiguous();
        let mut out = Rows::new(dp);
        let tk = out.width();
        let pv: &[f32] = p.storage();
        let scale = scale as f32;
        out.for_each(|r, row| {
            simd::softmax_backward(row, &pv[r * tk..(r + 1) * tk], scale);
        });
        out.tensor
    }
}
