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
        let f32s = x.dtype() == DType::F32 && scale.dtype() == DType::F32;
        let width = x.layout().shape().last().copied().unwrap_or(0);
        let fits = |t: &FlexTensor| t.dtype() == DType::F32 && t.layout().num_elements() == width;
        if !f32s || x.layout().num_dims() != 2 || !fits(&scale) || bias.as_ref().is_some_and(|b| !fits(b)) {
            return composed::norm::<Flex>(x, scale, bias, eps, centred);
        }
        let scale = scale.to_contiguous();
        let bias = bias.map(|b| b.to_contiguous());
        let gamma: &[f32] = scale.storage();
        let beta: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
        // Into a new tensor: `x` is almost always shared (autodiff keeps it
        // for the backward, the residual stream reads it again), so working
        // in place would first copy it.
        let x = x.to_contiguous();
        let (rows, width) = (x.layout().shape()[0], x.layout().shape()[1]);
        let xs: &[f32] = &x.storage()[..rows * width];
        let mut out: Vec<f32> = Vec::with_capacity(rows * width);
        let mut rstd = vec![0.0f32; rows];
        let eps = eps as f32;
        // By blocks of 64 rows, each row into a scratch row in cache, then
        // streamed out (the output is read by later kernels, not this one).
        let w = width.max(1);
        let block = |((y, x), r): RowBlock<'_>| {
            let mut row = vec![0.0f32; w];
            for ((y, x), r) in y.chunks_mut(w).zip(x.chunks(w)).zip(r) {
                // SAFETY: the scratch row is initialised; `simd::norm`
                // writes all `w` of its elements.
                let scratch = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), w) };
                *r = simd::norm(scratch, x, gamma, beta, eps, centred);
                simd::stream(y, &row);
            }
            simd::fence();
        };
        let spare = &mut out.spare_capacity_mut()[..rows * width];
        if rows * width >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            spare.par_chunks_mut(64 * w).zip(xs.par_chunks(64 * w)).zip(rstd.par_chunks_mut(64)).for_each(block);
        } else {
            spare.chunks_mut(64 * w).zip(xs.chunks(64 * w)).zip(rstd.chunks_mut(64)).for_each(block);
        }
        // SAFETY: every row of the `rows · width` reserved above was
        // streamed whole from a scratch row `simd::norm` wrote (its rows are
        // `width` long, as are `x`'s and `gamma`).
        unsafe { out.set_len(rows * width) };
        (matrix(out, rows, width), vector(rstd))
    }

    fn norm_backward(
        x: FlexTensor,
        scale: FlexTensor,
        rstd: FlexTensor,
        dy: FlexTensor,
        centred: bool,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let f32s = [&x, &scale, &rstd, &dy].iter().all(|t| t.dtype() == DType::F32);
        let acc_fits = acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape() == x.layout().shape());
        if !f32s || !acc_fits || x.layout().num_dims() != 2 {
            let (dx, dscale, dbias) = composed::norm_backward::<Flex>(x, scale, rstd, dy, centred);
            return (acc.map_or(dx.clone(), |a| Flex::float_add(dx, a)), dscale, dbias);
        }
        let acc = acc.map(|a| a.to_contiguous());
        let acc: Option<&[f32]> = acc.as_ref().map(|a| &a.storage()[..a.layout().num_elements()]);
        let (x, scale, rstd) = (x.to_contiguous(), scale.to_contiguous(), rstd.to_contiguous());
        let width = x.layout().shape()[1];
        let len = x.layout().num_elements();
        let (xs, gamma, rs): (&[f32], &[f32], &[f32]) = (&x.storage()[..len], scale.storage(), rstd.storage());
        let mut out = Rows::new(dy);
        // Row by row, the column sums in f32 over blocks of 64 rows, the
        // blocks' in f64.
        const ROWS: usize = 64;
        let block = ROWS * width.max(1);
        let part = |(b, d): (usize, &mut [f32])| {
            let (mut s32, mut b32) = (vec![0.0f32; width], vec![0.0f32; width]);
            for (i, row) in d.chunks_mut(width.max(1)).enumerate() {
                let (at, rows) = (b * ROWS + i, (b * ROWS + i) * width..(b * ROWS + i + 1) * width);
                let acc = acc.map(|a| &a[rows.clone()]);
                simd::norm_backward(row, &xs[rows], gamma, rs[at], centred, acc, (&mut s32, &mut b32));
            }
            (s32.into_iter().map(f64::from).collect(), b32.into_iter().map(f64::from).collect())
        };
        let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
            a.iter_mut().zip(c).for_each(|(x, y)| *x += y);
            b.iter_mut().zip(d).for_each(|(x, y)| *x += y);
            (a, b)
        };
        let zero = || (vec![0.0f64; width], vec![0.0f64; width]);
        let dys = out.all();
        let (ds, db) = if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            dys.par_chunks_mut(block).enumerate().map(part).reduce(zero, add)
        } else {
            dys.chunks_mut(block).enumerate().map(part).fold(zero(), add)
        };
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        let (dscale, dbias): (Vec<f32>, Vec<f32>) = (f32s(ds), f32s(db));
        (out.tensor, vector(dscale), vector(dbias))
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
        let plan = attention_dims(&q, &k, &v).and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
        let Some(([b, h, t, d, dv], bias)) = plan else {
            return composed::attention_forward::<Flex>(q, k, v, bq, (scale, causal));
        };
        let n = b * h;
        let (qh, kh, vh) = (Heads::new(&q), Heads::new(&k), Heads::new(&v));
        let (mut p, mut o): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n * t * t), Vec::with_capacity(n * t * dv));
        let (pd, od) = (Dst(p.as_mut_ptr()), Dst(o.as_mut_ptr()));
        let clock = AtomicU64::new(0);
        let scale = scale as f32;
        // Per head: the scores, their softmax while in cache, the output.
        let head = |i: usize| {
            // SAFETY: the operands' matrices lie in their storage (`Heads`
            // reads each tensor's own layout); head `i` writes the `t × t`
            // weights at `i·t·t` of `p` and its `t × dv` rows of the
            // token-major `o` (row stride `h·dv`), within the capacities
            // and disjoint between heads; the weights are read only after
            // the product wrote all of them.
            unsafe {
                let u = bias.as_ref().map(|bias| key_shift(kh.at(i), &bias[(i % h) * d..], [t, d], &clock));
                let (at, w) = (pd.at(i * t * t), [t, d]);
                let weights = attention_weights(at, qh.at(i), kh.at(i), w, (scale, causal), u.as_deref(), &clock);
                let oi = od.at((i / h) * t * h * dv + (i % h) * dv);
                product([t, dv, t], oi, h * dv, None, weights, vh.at(i), &clock);
            }
        };
        let threads = each_head(n, head);
        commit(&clock, threads);
        // SAFETY: the heads wrote all `n·t·t` weights and `n·t·dv` outputs.
        let o = unsafe {
            p.set_len(n * t * t);
            token_major(o, [b, h, t, dv])
        };
        (o, owned(p, [b, h, t, t].into()))
    }

    fn attention_backward(
        qkv: [FlexTensor; 3],
        bq: Option<FlexTensor>,
        p: FlexTensor,
        g: FlexTensor,
        (scale, acc): (f64, Option<FlexTensor>),
        wants: [bool; 3],
    ) -> [Option<FlexTensor>; 4] {
        let [q, k, v] = &qkv;
        let dims = attention_dims(q, k, v).filter(|&[b, h, t, _, dv]| {
            p.dtype() == DType::F32
                && p.layout().shape().as_slice() == [b, h, t, t]
                && g.dtype() == DType::F32
                && g.layout().shape().as_slice() == [b, h, t, dv]
                && acc
                    .as_ref()
                    .is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape().as_slice() == [b, t, h * dv])
        });
        let plan = dims.and_then(|dims| Some((dims, bias_values(&bq, dims[1] * dims[3])?)));
        let Some(([b, h, t, d, dv], bias)) = plan else {
            return composed::attention_backward::<Flex>(qkv, bq, p, g, (scale, acc), wants);
        };
        let n = b * h;
        let p = p.to_contiguous();
        let pv: &[f32] = &p.storage()[..n * t * t];
        let (qh, kh, vh, gh) = (Heads::new(q), Heads::new(k), Heads::new(v), Heads::new(&g));
        let [want_q, want_k, want_v] = wants;
        // With a query bias, `dq` is needed for its gradient.
        let (want_q, keep_q) = (want_q || bias.is_some(), want_q);
        let scores = want_q || want_k;
        let fresh = |len: usize, wanted: bool| if wanted { Vec::with_capacity(len) } else { Vec::new() };
        let (mut dq, mut dk): (Vec<f32>, Vec<f32>) = (fresh(n * t * d, want_q), fresh(n * t * d, want_k));
        let mut acc = acc.filter(|_| want_v).map(Rows::new);
        let mut dvs: Vec<f32> = fresh(n * t * dv, want_v && acc.is_none());
        let (dqd, dkd) = (Dst(dq.as_mut_ptr()), Dst(dk.as_mut_ptr()));
        let dvd = Dst(match acc.as_mut() {
            Some(rows) => rows.all().as_mut_ptr(),
            None => dvs.as_mut_ptr(),
        });
        let read_dv = acc.is_some();
        let clock = AtomicU64::new(0);
        let scale = scale as f32;
        let head = |i: usize| {
            let pi = Operand { ptr: pv[i * t * t..].as_ptr(), rs: t as isize, cs: 1 };
            let token = |w: usize| (i / h) * t * h * w + (i % h) * w;
            // SAFETY: the operands' matrices lie in their storage (`Heads`
            // reads each tensor's own layout, `p` is contiguous); head `i`
            // writes only its own rows of the token-major outputs (row
            // stride `h·width`), within their capacities or `acc`'s
            // storage (unique, of that shape, initialised when read), and
            // its own scratch `ds`, read only after the product wrote it.
            unsafe {
                if want_v {
                    product(
                        [t, dv, t],
                        dvd.at(token(dv)),
                        h * dv,
                        read_dv.then_some(1.0),
                        pi.transposed(),
                        gh.at(i),
                        &clock,
                    );
                }
                if !scores {
                    return Vec::new();
                }
                // dp = g · vᵀ, then ds in place, while in cache.
                let mut ds: Vec<f32> = Vec::with_capacity(t * t);
                product([t, t, dv], ds.as_mut_ptr(), t, None, gh.at(i), vh.at(i).transposed(), &clock);
                ds.set_len(t * t);
                for (row, w) in ds.chunks_mut(t).zip(pv[i * t * t..(i + 1) * t * t].chunks(t)) {
                    simd::softmax_backward(row, w, scale);
                }
                let dsi = Operand { ptr: ds.as_ptr(), rs: t as isize, cs: 1 };
                if want_q {
                    product([t, d, t], dqd.at(token(d)), h * d, None, dsi, kh.at(i), &clock);
                }
                if want_k {
                    product([t, d, t], dkd.at(token(d)), h * d, None, dsi.transposed(), qh.at(i), &clock);
                }
                let mut dbq = Vec::new();
                if let Some(bias) = &bias {
                    dbq = vec![0.0f32; d];
                    let dk = want_k.then(|| dkd.at(token(d)));
                    let bias = &bias[(i % h) * d..(i % h + 1) * d];
                    query_bias_back(&ds, [t, d, h * d], bias, dqd.at(token(d)), dk, &mut dbq);
                }
                dbq
            }
        };
        let (parts, threads) = map_heads(n, head);
        commit(&clock, threads);
        let dbq = bias.map(|_| {
            let mut sums = vec![0.0f64; h * d];
            for (i, part) in parts.iter().enumerate() {
                let hi = i % h;
                sums[hi * d..(hi + 1) * d].iter_mut().zip(part).for_each(|(a, &x)| *a += f64::from(x));
            }
            vector(sums.into_iter().map(|x| x as f32).collect())
        });
        // SAFETY: every head wrote its `t × w` rows of the output.
        let token_major = |data: Vec<f32>, w: usize| unsafe { token_major(data, [b, h, t, w]) };
        let dv = want_v.then(|| match acc {
            Some(rows) => Flex::float_swap_dims(Flex::float_reshape(rows.tensor, [b, t, h, dv].into()), 1, 2),
            None => token_major(dvs, dv),
        });
        [keep_q.then(|| token_major(dq, d)), want_k.then(|| token_major(dk, d)), dv, dbq]
    }

    fn shaped_attention_forward(a: Shaped<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> (FlexTensor, FlexTensor) {
        let Some(plan) = shaped_plan(&a, add.as_ref()) else {
            return composed::shaped_attention_forward::<Flex>(a, add);
        };
        let [b, h, t, d, dv] = plan.dims;
        let width = h * dv;
        let (qh, kh) = (Heads::new(&a.q), Heads::new(&a.k));
        let v = a.v.to_contiguous();
        let bt = add.map(|m| m.b.to_contiguous());
        let vs: &[f32] = &v.storage()[..b * t * width];
        let bs: Option<&[f32]> = bt.as_ref().map(|x| &x.storage()[..b * t * width]);
        let mut p: Vec<f32> = Vec::with_capacity(b * h * t * t);
        let pd = Dst(p.as_mut_ptr());
        let cols = plan.columns(dv);
        let g = simd::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
        let clock = AtomicU64::new(0);
        let (scale, causal) = (a.scale as f32, a.causal);
        // Per sequence: per head the scores, their softmax and the softmax
        // term (into a scratch `[t, width]` that stays in cache), then the
        // mix row by row.
        let sequence = |q: usize, y: &mut [MaybeUninit<f32>]| {
            let span = q * t * width..(q + 1) * t * width;
            let (vq, bq) = (&vs[span.clone()], bs.map(|x| &x[span]));
            let mut o: Vec<f32> = Vec::with_capacity(t * width);
            for hi in 0..h {
                let i = q * h + hi;
                let vi = Operand { ptr: vq[hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
                // SAFETY: the operands lie in their storage (`Heads` reads
                // the layouts; `v` is contiguous `[b, t, width]`); head `i`
                // writes its `t × t` weights at `i·t·t` of `p` (within
                // capacity, disjoint between heads) and its `dv` columns of
                // the scratch `o`; each is read after it is written.
                unsafe {
                    let u = plan.bq.as_ref().map(|bias| key_shift(kh.at(i), &bias[hi * d..], [t, d], &clock));
                    let (at, w) = (pd.at(i * t * t), [t, d]);
                    let weights = attention_weights(at, qh.at(i), kh.at(i), w, (scale, causal), u.as_deref(), &clock);
                    product([t, dv, t], o.as_mut_ptr().add(hi * dv), width, None, weights, vi, &clock);
                }
            }
            // SAFETY: the heads wrote every column of every row of `o`.
            unsafe { o.set_len(t * width) };
            let mut sum = vec![0.0f32; width];
            if !causal {
                vq.chunks(width).for_each(|row| simd::add_into(&mut sum, row));
            }
            // Each row into a scratch row in cache, then streamed out.
            let mut row = vec![0.0f32; width];
            for (r, out) in y.chunks_mut(width).enumerate() {
                let rows = r * width..(r + 1) * width;
                let x = simd::MixIn { v: &vq[rows.clone()], o: &o[rows.clone()], b: bq.map(|x| &x[rows]) };
                let inv = 1.0 / if causal { r + 1 } else { t } as f32;
                // SAFETY: the scratch row is initialised; `simd::mix_row`
                // writes all `width` of its elements.
                let scratch = unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width) };
                simd::mix_row(scratch, x, &mut sum, g, inv, causal);
                simd::stream(out, &row);
            }
            simd::fence();
        };
        // As `filled` runs the sequences.
        let parallel = b * t * width >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1;
        let threads = if parallel { rayon::current_num_threads().min(b) } else { 1 };
        // SAFETY: every row of the sequence is streamed whole from a
        // scratch row `simd::mix_row` wrote.
        let y = unsafe { filled(b * t * width, t * width, sequence) };
        commit(&clock, threads);
        // SAFETY: the heads wrote all `b·h·t·t` weights.
        unsafe { p.set_len(b * h * t * t) };
        (owned(y, v.layout().shape().clone()), owned(p, [b, h, t, t].into()))
    }

    fn shaped_attention_backward(
        a: Shaped<FlexTensor>,
        add: Option<MixAddend<FlexTensor>>,
        p: FlexTensor,
        dy: FlexTensor,
        acc: Option<FlexTensor>,
    ) -> ShapedGrads<FlexTensor> {
        let plan = shaped_plan(&a, add.as_ref()).filter(|plan| {
            let [b, h, t, _, dv] = plan.dims;
            let fits = |x: &FlexTensor| x.dtype() == DType::F32 && x.layout().shape().as_slice() == [b, t, h * dv];
            p.dtype() == DType::F32
                && p.layout().shape().as_slice() == [b, h, t, t]
                && fits(&dy)
                && acc.as_ref().is_none_or(fits)
        });
        let Some(plan) = plan else {
            return composed::shaped_attention_backward::<Flex>(a, add, p, dy, acc);
        };
        let [b, h, t, d, dv] = plan.dims;
        let (n, width) = (b * h, h * dv);
        let (qh, kh) = (Heads::new(&a.q), Heads::new(&a.k));
        let (v, p, dy) = (a.v.to_contiguous(), p.to_contiguous(), dy.to_contiguous());
        let bt = add.as_ref().map(|m| m.b.to_contiguous());
        let len = b * t * width;
        let (vs, ps, gs): (&[f32], &[f32], &[f32]) =
            (&v.storage()[..len], &p.storage()[..n * t * t], &dy.storage()[..len]);
        let bs: Option<&[f32]> = bt.as_ref().map(|x| &x.storage()[..len]);
        let (mut dq, mut dk): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n * t * d), Vec::with_capacity(n * t * d));
        let mut acc = acc.map(Rows::new);
        let mut fresh: Vec<f32> = if acc.is_some() { Vec::new() } else { Vec::with_capacity(len) };
        let mut db: Vec<f32> = if bs.is_some() { Vec::with_capacity(len) } else { Vec::new() };
        let (dqd, dkd, dbd) = (Dst(dq.as_mut_ptr()), Dst(dk.as_mut_ptr()), Dst(db.as_mut_ptr()));
        let dvd = Dst(match acc.as_mut() {
            Some(rows) => rows.all().as_mut_ptr(),
            None => fresh.as_mut_ptr(),
        });
        let adding = acc.is_some();
        let cols = plan.columns(dv);
        let g = simd::MixGains { i: &cols[0], s: &cols[1], c: &cols[2], b: &cols[3] };
        let clock = AtomicU64::new(0);
        let (scale, causal) = (a.scale as f32, a.causal);
        // Per sequence: the mix's part of `dv` (and `db`) row by row from
        // the last, then per head the attention's, the softmax gain folded
        // in. Returns the column sums of `dy` against `v`, the centre term
        // and `b`, per head `dy · o`, and the sequence's part of the query
        // bias's gradient.
        let sequence = |q: usize| -> ([Vec<f32>; 3], Vec<f64>, Vec<f32>) {
            let base = q * t * width;
            let [mut si, mut sc, mut sb, mut unused, mut r] = [0, 1, 2, 3, 4].map(|_| vec![0.0f32; width]);
            let gq = &gs[base..base + t * width];
            if !causal {
                gq.chunks(width).for_each(|row| simd::add_into(&mut r, row));
                r.iter_mut().for_each(|x| *x /= t as f32);
            }
            let mut sums = simd::MixSums { r: &mut r, i: &mut si, s: &mut unused, c: &mut sc, b: &mut sb };
            let mut so = vec![0.0f64; h];
            let mut dbq = vec![0.0f32; if plan.bq.is_some() { h * d } else { 0 }];
            let (mut row_dv, mut row_db) = (vec![0.0f32; width], vec![0.0f32; width]);
            // SAFETY: the operands lie in their storage (`Heads` reads the
            // layouts; `v`, `b`, `dy`, `p` are contiguous); sequence `q`
            // writes only its own rows of `dv` (in `acc`'s storage: unique,
            // of that shape, initialised; or within capacity) and of `db`,
            // its heads' rows of the token-major `dq`, `dk`, and its
            // scratch `ds`; each is read only after it is written.
            unsafe {
                for row in (0..t).rev() {
                    let at = base + row * width;
                    // Rows last to first: the hardware prefetcher does not
                    // follow, so ask for the rows two ahead.
                    if row >= 2 {
                        let next = at - 2 * width..at - width;
                        simd::prefetch(&gs[next.clone()]);
                        simd::prefetch(&vs[next.clone()]);
                        if let Some(x) = bs {
                            simd::prefetch(&x[next.clone()]);
                        }
                        if adding {
                            simd::prefetch(std::slice::from_raw_parts(dvd.at(next.start), width));
                        }
                    }
                    let inv = if causal { 1.0 / (row + 1) as f32 } else { 0.0 };
                    let (gy, vr) = (&gs[at..at + width], &vs[at..at + width]);
                    // Fresh rows into scratch in cache (`shaped_back_row`
                    // writes every element of both), then streamed out.
                    let scratch = |row: &mut Vec<f32>| std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), width);
                    let branch = bs.map(|x| (&x[at..at + width], scratch(&mut row_db)));
                    let out = match adding {
                        true => simd::Grad::Add(std::slice::from_raw_parts_mut(dvd.at(at), width)),
                        false => simd::Grad::Fresh(scratch(&mut row_dv)),
                    };
                    simd::shaped_back_row(out, gy, vr, branch, g, &mut sums, inv);
                    if bs.is_some() {
                        let out = std::slice::from_raw_parts_mut(dbd.at(at).cast::<MaybeUninit<f32>>(), width);
                        simd::stream(out, &row_db);
                    }
                    if !adding {
                        let out = std::slice::from_raw_parts_mut(dvd.at(at).cast::<MaybeUninit<f32>>(), width);
                        simd::stream(out, &row_dv);
                    }
                }
                simd::fence();
                let mut ds: Vec<f32> = Vec::with_capacity(t * t);
                for hi in 0..h {
                    let i = q * h + hi;
                    let token = |w: usize| q * t * h * w + hi * w;
                    let gi = Operand { ptr: gs[base + hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
                    let vi = Operand { ptr: vs[base + hi * dv..].as_ptr(), rs: width as isize, cs: 1 };
                    let pi = Operand { ptr: ps[i * t * t..].as_ptr(), rs: t as isize, cs: 1 };
                    let gain = cols[1][hi * dv];
                    // dv += gs · pᵀ · dy (the mix's part is written above).
                    product([t, dv, t], dvd.at(base + hi * dv), width, Some(gain), pi.transposed(), gi, &clock);
                    // ds = gs · scale · p ⊙ (dp − Σ p ⊙ dp), dp = dy · vᵀ;
                    // the row sums Σ p ⊙ dp are dy · o: the softmax gain's
                    // gradient.
                    product([t, t, dv], ds.as_mut_ptr(), t, None, gi, vi.transposed(), &clock);
                    ds.set_len(t * t);
                    for (row, w) in ds.chunks_mut(t).zip(ps[i * t * t..(i + 1) * t * t].chunks(t)) {
                        so[hi] += f64::from(simd::softmax_backward(row, w, gain * scale));
                    }
                    let dsi = Operand { ptr: ds.as_ptr(), rs: t as isize, cs: 1 };
                    // dq = ds · k: the key's bias adds (Σ_j ds_ij) · bk,
                    // and each row of ds sums to zero.
                    product([t, d, t], dqd.at(token(d)), h * d, None, dsi, kh.at(i), &clock);
                    product([t, d, t], dkd.at(token(d)), h * d, None, dsi.transposed(), qh.at(i), &clock);
                    if let Some(bias) = &plan.bq {
                        let (bias, part) = (&bias[hi * d..(hi + 1) * d], &mut dbq[hi * d..(hi + 1) * d]);
                        query_bias_back(&ds, [t, d, h * d], bias, dqd.at(token(d)), Some(dkd.at(token(d))), part);
                    }
                    ds.set_len(0);
                }
            }
            ([si, sc, sb], so, dbq)
        };
        let (per, threads) = map_heads(b, sequence);
        commit(&clock, threads);
        // Per head: the sums of `dy` against `v`, `o`, the centre term and
        // `b` over the batch and the head's columns.
        let mut heads = vec![[0.0f64; 4]; h];
        for ([si, sc, sb], so, _) in &per {
            for (hi, x) in heads.iter_mut().enumerate() {
                let part = |v: &[f32]| v[hi * dv..(hi + 1) * dv].iter().map(|&x| f64::from(x)).sum::<f64>();
                x[0] += part(si);
                x[1] += so[hi];
                x[2] += part(sc);
                x[3] += part(sb);
            }
        }
        let ga = |hi: usize| plan.ga.as_ref().map_or(1.0, |g| f64::from(g[hi]));
        let own = [&plan.gi, &plan.gs, &plan.gc];
        let sizes = a.gains.each_ref().map(|g| g.layout().num_elements());
        let dgains =
            [0, 1, 2].map(|k| per_group(&(0..h).map(|hi| ga(hi) * heads[hi][k]).collect::<Vec<_>>(), sizes[k]));
        // SAFETY: every head wrote its `t × w` rows of the output.
        let token_major = |data: Vec<f32>, w: usize| unsafe { token_major(data, [b, h, t, w]) };
        let shape = v.layout().shape().clone();
        let dv = match acc {
            Some(rows) => rows.tensor,
            None => {
                // SAFETY: every sequence wrote every element of its rows.
                unsafe { fresh.set_len(len) };
                owned(fresh, shape.clone())
            }
        };
        let addend = add.map(|m| {
            let dga: Vec<f64> = (0..h).map(|hi| (0..3).map(|k| f64::from(own[k][hi]) * heads[hi][k]).sum()).collect();
            let dgb: Vec<f64> = (0..h).map(|hi| heads[hi][3]).collect();
            // SAFETY: with a branch, every sequence wrote every element of
            // its rows of `db`.
            unsafe { db.set_len(len) };
            let [na, nb] = [&m.ga, &m.gb].map(|g| g.layout().num_elements());
            [owned(db, shape.clone()), per_group(&dga, na), per_group(&dgb, nb)]
        });
        let dbq = plan.bq.as_ref().map(|_| vector(totals(per.iter().map(|(_, _, part)| part.as_slice()), h * d)));
        ShapedGrads { dq: token_major(dq, d), dk: token_major(dk, d), dv, dgains, addend, dbq }
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

/// A tensor's f32 elements, owned, contiguous and unique (copied only
/// when they are not already), to be rewritten in place.
struct Rows {
    tensor: FlexTensor,
}

impl Rows {
    fn new(t: FlexTensor) -> Self {
        let owned = t.is_unique() && t.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
        Rows { tensor: if owned { t } else { t.to_contiguous() } }
    }

    /// All the elements.
    fn all(&mut self) -> &mut [f32] {
        let n = self.tensor.layout().num_elements();
        &mut self.tensor.storage_mut::<f32>()[..n]
    }

    /// The length of the last dimension (at least 1).
    fn width(&self) -> usize {
        let shape = self.tensor.layout().shape();
        shape.last().copied().unwrap_or(1).max(1)
    }

    /// Calls `f` on every consecutive run of `len` elements (a sequence of
    /// a `[batch, tokens, width]` tensor), on several threads when large.
    fn for_each_sequence<F: Fn(&mut [f32]) + Sync>(&mut self, len: usize, f: F) {
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            data.par_chunks_mut(len.max(1)).for_each(&f);
        } else {
            data.chunks_mut(len.max(1)).for_each(f);
        }
    }

    /// Calls `f(r, row)` on every row (last dimension) of the tensor, on
    /// several threads when the work is large.
    fn for_each<F: Fn(usize, &mut [f32]) + Sync>(&mut self, f: F) {
        let width = self.width();
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            data.par_chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        } else {
            data.chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        }
    }
}

/// A ReLU's mask of bits from [`Kernels::dense_relu`] (`[rows,
/// ceil(cols / 32)]` words) for the gradient `dy: [rows, cols]`,
/// contiguous, and its words per row; `None` when `y` is not such a mask
/// (then it is the ReLU's output).
fn relu_mask(y: &FlexTensor, dy: &FlexTensor) -> Option<(FlexTensor, usize)> {
    if y.dtype() != DType::U32 {
        return None;
    }
    let (m, d) = (y.layout().shape(), dy.layout().shape());
    let fits = m.num_dims() == 2 && d.num_dims() == 2 && m[0] == d[0] && m[1] == d[1].div_ceil(32);
    assert!(fits && dy.dtype() == DType::F32, "a ReLU mask {m:?} for a gradient {d:?} it was not made for");
    Some((y.to_contiguous(), m[1]))
}

/// `a · b` for `a: [rows, k]` (contiguous) and an operand `b` (`k × n`),
/// by blocks of 128 rows on several threads when large; each block's
/// output (`m × n`, its first row `first`) is given to `then(first,
/// block)` while it is in cache. Returns the output and what `then`
/// returned for each block, in order.
fn product_by_blocks<T: Send>(
    a: &[f32],
    [rows, k, n]: [usize; 3],
    b: Operand,
    then: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    const BLOCK: usize = 128;
    let clock = AtomicU64::new(0);
    let block = |(i, out): (usize, &mut [MaybeUninit<f32>])| -> T {
        let (first, m) = (i * BLOCK, out.len() / n.max(1));
        let ao = Operand { ptr: a[first * k..].as_ptr(), rs: k as isize, cs: 1 };
        // SAFETY: `a`'s rows `first..first + m` lie in `a`, `b`'s elements
        // in their storage (the caller's operand); `out` is this block's
        // `m × n` (row stride `n`), all written by the product before it
        // is read.
        let out = unsafe {
            product([m, n, k], out.as_mut_ptr().cast(), n, None, ao, b, &clock);
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), m * n)
        };
        then(first, out)
    };
    let mut out: Vec<f32> = Vec::with_capacity(rows * n);
    let spare = &mut out.spare_capacity_mut()[..rows * n];
    let chunk = (BLOCK * n).max(1);
    let parallel = rows * n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1;
    let parts: Vec<T> = match parallel {
        true => spare.par_chunks_mut(chunk).enumerate().map(block).collect(),
        false => spare.chunks_mut(chunk).enumerate().map(block).collect(),
    };
    commit(&clock, if parallel { rayon::current_num_threads().min(parts.len()) } else { 1 });
    // SAFETY: every block's product wrote all its elements.
    unsafe { out.set_len(rows * n) };
    (out, parts)
}

/// The sums of `parts` (each `n` long, or shorter), in f64.
fn totals<'a>(parts: impl IntoIterator<Item = &'a [f32]>, n: usize) -> Vec<f32> {
    let mut total = vec![0.0f64; n];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, &x)| *t += f64::from(x));
    }
    total.into_iter().map(|x| x as f32).collect()
}

/// Calls `f(r, row, acc)` on every row of `data` (rows of `cols`) and
/// returns the column sums `f` adds into `acc`: in f32 over blocks of 64
/// rows, the blocks' in f64; on several threads when large.
fn column_blocks(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = 64 * cols.max(1);
    let block = |(i, d): (usize, &mut [f32])| {
        let mut acc = vec![0.0f32; cols];
        for (j, row) in d.chunks_mut(cols.max(1)).enumerate() {
            f(i * 64 + j, row, &mut acc);
        }
        acc.into_iter().map(f64::from).collect::<Vec<f64>>()
    };
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        a
    };
    let sums = if data.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        data.par_chunks_mut(chunk).enumerate().map(block).reduce(|| vec![0.0; cols], add)
    } else {
        data.chunks_mut(chunk).enumerate().map(block).fold(vec![0.0; cols], add)
    };
    sums.into_iter().map(|v| v as f32).collect()
}

/// An integer tensor's values as indices (i32 or i64 storage), or `None`
/// for other dtypes; negative values become 0.
fn indices(t: &FlexTensor) -> Option<Vec<usize>> {
    let t = t.to_contiguous();
    let n = t.layout().num_elements();
    match t.dtype() {
        DType::I32 => Some(t.storage::<i32>()[..n].iter().map(|&i| i.max(0) as usize).collect()),
        DType::I64 => Some(t.storage::<i64>()[..n].iter().map(|&i| i.max(0) as usize).collect()),
        _ => None,
    }
}

/// A gain `[n]` as one value per column of a `width`-wide last dimension
/// (group `j / (width / n)`), or `None` (not f32, `n` does not divide).
fn columns(g: &FlexTensor, width: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || width == 0 || !width.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..width).map(|j| values[j / (width / n)]).collect())
}

/// The per-column gains of a shaped mix (`[width]` each) and the dims of
/// `v`, or `None` where the fused kernel does not apply (not f32, not
/// `[batch, tokens, width]`, `o` of another shape, a gain count that does
/// not divide the width).
fn mix_setup(v: &FlexTensor, o: &FlexTensor, gains: &[FlexTensor; 3]) -> Option<([Vec<f32>; 3], [usize; 3])> {
    let ok = v.dtype() == DType::F32
        && o.dtype() == DType::F32
        && v.layout().num_dims() == 3
        && o.layout().shape() == v.layout().shape()
        && gains.iter().all(|g| g.dtype() == DType::F32);
    if !ok {
        return None;
    }
    let dims = dims3(v);
    let w = dims[2];
    if dims[1] == 0 {
        return None;
    }
    let [gi, gs, gc] = gains;
    Some(([columns(gi, w)?, columns(gs, w)?, columns(gc, w)?], dims))
}

/// Per-column sums as one sum per group of `n` (a gain's gradient):
/// `[n]`, group `i` the columns `i·w/n .. (i+1)·w/n`.
fn group_sums(col: &[f64], n: usize) -> FlexTensor {
    let per = col.len() / n.max(1);
    vector(col.chunks(per.max(1)).map(|g| g.iter().sum::<f64>() as f32).collect())
}

/// A fresh buffer of `len` elements, `fill(i, chunk)` called on its
/// consecutive chunks of `chunk` elements (on several threads when large).
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
unsafe fn filled<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        spare.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    } else {
        spare.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the chunks cover all `len` elements, and the caller promises
    // that `fill` wrote each.
    unsafe { out.set_len(len) };
    out
}

/// A `[b, h, t, w]` f32 tensor stored token-major (`[b, t, h, w]` in
/// memory, as `matmul` stores a token-major product) owning `data`.
///
/// # Safety
/// All `b·h·t·w` elements of `data`'s capacity are written.
unsafe fn token_major(mut data: Vec<f32>, [b, h, t, w]: [usize; 4]) -> FlexTensor {
    // SAFETY: as the caller promises.
    unsafe { data.set_len(b * h * t * w) };
    let strides = vec![(t * h * w) as isize, w as isize, (h * w) as isize, 1];
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::new([b, h, t, w].into(), strides, 0), DType::F32)
}

/// A contiguous f32 tensor of `shape` owning `v`.
fn owned(v: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(v), Layout::contiguous(shape), DType::F32)
}

/// A block of rows of a row kernel: its output, its input and one value
/// per row.
type RowBlock<'a> = ((&'a mut [MaybeUninit<f32>], &'a [f32]), &'a mut [f32]);

/// A `[rows, cols]` f32 tensor.
fn matrix(v: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    owned(v, [rows, cols].into())
}

/// A `[n]` f32 tensor.
fn vector(v: Vec<f32>) -> FlexTensor {
    let n = v.len();
    owned(v, [n].into())
}

fn dims3(x: &FlexTensor) -> [usize; 3] {
    let s = x.layout().shape();
    [s[0], s[1], s[2]]
}

/// The start of each matrix of a `[..., rows, cols]` layout, in elements,
/// in row-major order of the leading dimensions.
fn matrix_offsets(layout: &Layout) -> Vec<isize> {
    let dims = layout.num_dims();
    let lead = &layout.shape()[..dims - 2];
    let strides = &layout.strides()[..dims - 2];
    let count: usize = lead.iter().product();
    (0..count)
        .map(|mut i| {
            let mut offset = layout.start_offset() as isize;
            for (&n, &s) in lead.iter().zip(strides).rev() {
                offset += (i % n) as isize * s;
                i /= n;
            }
            offset
        })
        .collect()
}

/// The output pointer of a product, shared by the threads that write
/// disjoint matrices of it.
#[derive(Clone, Copy)]
struct Dst(*mut f32);

// SAFETY: each thread writes only the matrix of its own batch index; the
// matrices are disjoint (see `matmul`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must lie within the allocation `self` points into.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(offset) }
    }
}

/// The operands of the shaped mix, and the addend, handed back where the
/// fused kernel does not apply.
type MixOperands = (MixArgs<FlexTensor>, Option<MixAddend<FlexTensor>>);

/// The per-column gains of the mix's terms (times the mix's gain with an
/// addend) and of the addend's branch, the mix's own per-column gain, and
/// the dims of `v`; `None` where the fused kernel does not apply.
struct MixPlan {
    terms: [Vec<f32>; 3],
    own: [Vec<f32>; 3],
    ga: Option<Vec<f32>>,
    gb: Vec<f32>,
    dims: [usize; 3],
}

impl MixPlan {
    fn gains(&self) -> simd::MixGains<'_> {
        let [i, s, c] = &self.terms;
        simd::MixGains { i, s, c, b: &self.gb }
    }
}

/// The shaped mix's `v`, `o` (and branch `b`), contiguous.
struct MixData {
    v: FlexTensor,
    o: FlexTensor,
    b: Option<FlexTensor>,
    len: usize,
}

impl MixData {
    fn new(m: &MixArgs<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> Self {
        let (v, o) = (m.v.to_contiguous(), m.o.to_contiguous());
        let len = v.layout().num_elements();
        MixData { v, o, b: add.map(|a| a.b.to_contiguous()), len }
    }

    fn slices(&self) -> (&[f32], &[f32], Option<&[f32]>) {
        let n = self.len;
        (&self.v.storage()[..n], &self.o.storage()[..n], self.b.as_ref().map(|b| &b.storage()[..n]))
    }
}

fn mix_plan(m: &MixArgs<FlexTensor>, add: Option<&MixAddend<FlexTensor>>) -> Option<MixPlan> {
    let (own, dims) = mix_setup(&m.v, &m.o, &m.gains)?;
    let w = dims[2];
    let (ga, gb) = match add {
        Some(a) => {
            let fits = a.b.dtype() == DType::F32 && a.b.layout().shape() == m.v.layout().shape();
            (Some(columns(&a.ga, w).filter(|_| fits)?), columns(&a.gb, w)?)
        }
        None => (None, Vec::new()),
    };
    let terms = own.clone().map(|mut g| {
        if let Some(ga) = &ga {
            g.iter_mut().zip(ga).for_each(|(x, a)| *x *= a);
        }
        g
    });
    Some(MixPlan { terms, own, ga, gb, dims })
}

/// The shaped mix (plus `ga`/`gb`-gained `b` with an addend), one pass per
/// sequence.
#[allow(clippy::result_large_err)]
fn mix_forward(m: MixArgs<FlexTensor>, add: Option<MixAddend<FlexTensor>>) -> Result<FlexTensor, MixOperands> {
    let Some(plan) = mix_plan(&m, add.as_ref()) else {
        return Err((m, add));
    };
    let [_, t, w] = plan.dims;
    let causal = m.causal;
    let data = MixData::new(&m, add);
    let (len, (vs, os, bs)) = (data.len, data.slices());
    let g = plan.gains();
    let sequence = |q: usize, y: &mut [MaybeUninit<f32>]| {
        let span = q * t * w..(q + 1) * t * w;
        let (vq, oq, bq) = (&vs[span.clone()], &os[span.clone()], bs.map(|b| &b[span]));
        // The running sum of the rows (causal), or the sum of all.
        let mut sum = vec![0.0f32; w];
        if !causal {
            vq.chunks(w).for_each(|row| simd::add_into(&mut sum, row));
        }
        for (i, y) in y.chunks_mut(w).enumerate() {
            let rows = i * w..(i + 1) * w;
            let inv = 1.0 / if causal { i + 1 } else { t } as f32;
            let x = simd::MixIn { v: &vq[rows.clone()], o: &oq[rows.clone()], b: bq.map(|b| &b[rows]) };
            simd::mix_row(y, x, &mut sum, g, inv, causal);
        }
    };
    // SAFETY: `simd::mix_row` writes every element of every row of the
    // sequence.
    let out = unsafe { filled(len, t * w, sequence) };
    Ok(owned(out, data.v.layout().shape().clone()))
}

/// The gradients of the shaped mix (`dv` added into `acc` when given; `do`
/// over `dy`) and, with an addend, `[db, dga, dgb]`: one pass per sequence,
/// from the last token to the first.
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn mix_backward(
    m: MixArgs<FlexTensor>,
    add: Option<MixAddend<FlexTensor>>,
    dy: FlexTensor,
    acc: Option<FlexTensor>,
) -> Result<
    (FlexTensor, FlexTensor, [FlexTensor; 3], Option<[FlexTensor; 3]>),
    (MixArgs<FlexTensor>, Option<MixAddend<FlexTensor>>, FlexTensor, Option<FlexTensor>),
> {
    let shape = m.v.layout().shape().clone();
    let fits = dy.dtype() == DType::F32
        && dy.layout().shape() == &shape
        && acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape() == &shape);
    let Some(plan) = mix_plan(&m, add.as_ref()).filter(|_| fits) else {
        return Err((m, add, dy, acc));
    };
    let [_, t, w] = plan.dims;
    let causal = m.causal;
    let sizes = m.gains.each_ref().map(|g| g.layout().num_elements());
    let add_sizes = add.as_ref().map(|a| [a.ga.layout().num_elements(), a.gb.layout().num_elements()]);
    let data = MixData::new(&m, add);
    let (len, (vs, os, bs)) = (data.len, data.slices());
    let g = plan.gains();
    // `do` over `dy` itself; `dv` added into `acc`, or fresh; `db` fresh.
    let mut d_o = Rows::new(dy);
    let mut acc = acc.map(Rows::new);
    let (mut fresh, mut db): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    let sequence =
        |(q, ((mut dvq, dq), mut dbq)): (usize, ((simd::Grad, &mut [f32]), Option<&mut [MaybeUninit<f32>]>))| {
            let span = q * t * w..(q + 1) * t * w;
            let (vq, oq, bq) = (&vs[span.clone()], &os[span.clone()], bs.map(|b| &b[span]));
            let [mut si, mut ss, mut sc, mut sb] = [0, 1, 2, 3].map(|_| vec![0.0f32; w]);
            let mut r = vec![0.0f32; w];
            if !causal {
                // The mean's gradient per unit gain: Σ_i dy_i / t, the same
                // for every token.
                dq.chunks(w).for_each(|row| simd::add_into(&mut r, row));
                r.iter_mut().for_each(|x| *x /= t as f32);
            }
            let mut sums = simd::MixSums { r: &mut r, i: &mut si, s: &mut ss, c: &mut sc, b: &mut sb };
            for i in (0..t).rev() {
                let inv = if causal { 1.0 / (i + 1) as f32 } else { 0.0 };
                let rows = i * w..(i + 1) * w;
                let x = simd::MixIn { v: &vq[rows.clone()], o: &oq[rows.clone()], b: bq.map(|b| &b[rows.clone()]) };
                let (dy, db) = (&mut dq[rows.clone()], dbq.as_mut().map(|d| &mut d[rows.clone()]));
                simd::mix_back_row(dvq.part(rows), dy, x, db, g, &mut sums, inv);
            }
            [si, ss, sc, sb]
        };
    let add4 = |mut a: [Vec<f64>; 4], b: [Vec<f32>; 4]| {
        for (x, y) in a.iter_mut().zip(b) {
            x.iter_mut().zip(y).for_each(|(p, q)| *p += f64::from(q));
        }
        a
    };
    let zero = || [0, 1, 2, 3].map(|_| vec![0.0f64; w]);
    let dv: Vec<simd::Grad> = match acc.as_mut() {
        Some(rows) => rows.all().chunks_mut(t * w).map(simd::Grad::Add).collect(),
        None => {
            fresh.reserve_exact(len);
            fresh.spare_capacity_mut()[..len].chunks_mut(t * w).map(simd::Grad::Fresh).collect()
        }
    };
    let dbs: Vec<Option<&mut [MaybeUninit<f32>]>> = if bs.is_some() {
        db.reserve_exact(len);
        db.spare_capacity_mut()[..len].chunks_mut(t * w).map(Some).collect()
    } else {
        (0..dv.len()).map(|_| None).collect()
    };
    let dq: Vec<&mut [f32]> = d_o.all().chunks_mut(t * w).collect();
    let work: Vec<_> = dv.into_iter().zip(dq).zip(dbs).collect();
    let [si, ss, sc, sb] = if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        let per: Vec<[Vec<f32>; 4]> = work.into_par_iter().enumerate().map(sequence).collect();
        per.into_iter().fold(zero(), add4)
    } else {
        work.into_iter().enumerate().map(sequence).fold(zero(), add4)
    };
    let dv = match acc {
        Some(rows) => rows.tensor,
        None => {
            // SAFETY: `simd::mix_back_row` wrote every element of every
            // row of every sequence (`len` = sequences · t · w).
            unsafe { fresh.set_len(len) };
            owned(fresh, shape.clone())
        }
    };
    // Each term's gain gradient is the mix's gain times its sum; the mix's
    // gain gradient is Σ of each term's gain times its sum.
    let sums = [si, ss, sc];
    let scaled = |k: usize| -> Vec<f64> {
        match &plan.ga {
            Some(ga) => sums[k].iter().zip(ga).map(|(s, &a)| s * f64::from(a)).collect(),
            None => sums[k].clone(),
        }
    };
    let dgains = [0, 1, 2].map(|k| group_sums(&scaled(k), sizes[k]));
    let extra = add_sizes.map(|[na, nb]| {
        let dga: Vec<f64> = (0..w).map(|j| (0..3).map(|k| sums[k][j] * f64::from(plan.own[k][j])).sum()).collect();
        // SAFETY: `simd::mix_back_row` wrote every element of every row of
        // `db` (a branch `b` was given).
        unsafe { db.set_len(len) };
        [owned(db, shape.clone()), group_sums(&dga, na), group_sums(&sb, nb)]
    });
    Ok((dv, d_o.tensor, dgains, extra))
}

/// `[batch, heads, tokens, head_dim, value_dim]` of attention operands
/// that the fused kernel takes (f32, `q`, `k`: `[b, h, t, d]`, `v`: `[b, h,
/// t, dv]`, none empty), or `None`.
fn attention_dims(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<[usize; 5]> {
    let ok = [q, k, v].iter().all(|x| x.dtype() == DType::F32 && x.layout().num_dims() == 4);
    if !ok {
        return None;
    }
    let (sq, sv) = (q.layout().shape(), v.layout().shape());
    let dims = [sq[0], sq[1], sq[2], sq[3], sv[3]];
    let fits = k.layout().shape() == sq && sv[..3] == sq[..3] && dims.iter().all(|&x| x > 0);
    fits.then_some(dims)
}

/// A fused shaped attention's dims `[batch, heads, tokens, d, dv]`, its
/// gains per head: the mix's own (`gi`, `gs`, `gc`), the sum's `ga`, `gb`;
/// and the query's bias (`[heads · d]`) when it has biases.
struct ShapedPlan {
    dims: [usize; 5],
    gi: Vec<f32>,
    gs: Vec<f32>,
    gc: Vec<f32>,
    ga: Option<Vec<f32>>,
    gb: Vec<f32>,
    bq: Option<Vec<f32>>,
}

impl ShapedPlan {
    /// The gains per column (`dv` per head): the three terms' times `ga`,
    /// and `gb` (zeros without a branch).
    fn columns(&self, dv: usize) -> [Vec<f32>; 4] {
        let heads = self.gi.len();
        let column = |f: &dyn Fn(usize) -> f32| (0..heads * dv).map(|j| f(j / dv)).collect::<Vec<f32>>();
        let ga = |hi: usize| self.ga.as_ref().map_or(1.0, |g| g[hi]);
        [
            column(&|hi| self.gi[hi] * ga(hi)),
            column(&|hi| self.gs[hi] * ga(hi)),
            column(&|hi| self.gc[hi] * ga(hi)),
            column(&|hi| self.gb.get(hi).copied().unwrap_or(0.0)),
        ]
    }
}

/// A gain `[n]` as one value per head, or `None` unless `n` divides the
/// heads (each group of columns whole heads).
fn per_head(g: &FlexTensor, heads: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || !heads.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..heads).map(|i| values[i / (heads / n)]).collect())
}

/// Per-head sums as one sum per group of heads: `[n]`.
fn per_group(heads: &[f64], n: usize) -> FlexTensor {
    let per = heads.len() / n.max(1);
    vector(heads.chunks(per.max(1)).map(|g| g.iter().sum::<f64>() as f32).collect())
}

/// The plan of a shaped attention the fused kernel takes: f32 throughout,
/// `q`, `k` `[b, h, t, d]`, `v` (and `b`) `[b, t, h·dv]`, gains per whole
/// heads.
fn shaped_plan(a: &Shaped<FlexTensor>, add: Option<&MixAddend<FlexTensor>>) -> Option<ShapedPlan> {
    let (sq, sv) = (a.q.layout().shape(), a.v.layout().shape());
    let ok = [&a.q, &a.k].iter().all(|x| x.dtype() == DType::F32 && x.layout().num_dims() == 4)
        && a.k.layout().shape() == sq
        && a.v.dtype() == DType::F32
        && sv.num_dims() == 3;
    if !ok {
        return None;
    }
    let (b, h, t, d) = (sq[0], sq[1], sq[2], sq[3]);
    let fits = sv[0] == b && sv[1] == t && sv[2].is_multiple_of(h) && [b, h, t, d, sv[2]].iter().all(|&x| x > 0);
    if !fits {
        return None;
    }
    let [gi, gs, gc] = [&a.gains[0], &a.gains[1], &a.gains[2]].map(|g| per_head(g, h));
    let (ga, gb) = match add {
        Some(m) => {
            let same = m.b.dtype() == DType::F32 && m.b.layout().shape() == sv;
            (Some(per_head(&m.ga, h).filter(|_| same)?), per_head(&m.gb, h)?)
        }
        None => (None, Vec::new()),
    };
    let bq = bias_values(&a.bq, h * d)?;
    Some(ShapedPlan { dims: [b, h, t, d, sv[2] / h], gi: gi?, gs: gs?, gc: gc?, ga, gb, bq })
}

/// Runs `head(i)` for every head `i < n`, on several threads when there
/// are; returns what each head returned (in head order) and how many
/// threads ran them.
fn map_heads<T: Send>(n: usize, head: impl Fn(usize) -> T + Sync + Send) -> (Vec<T>, usize) {
    if rayon::current_num_threads() > 1 {
        ((0..n).into_par_iter().map(head).collect(), rayon::current_num_threads().min(n))
    } else {
        ((0..n).map(head).collect(), 1)
    }
}

/// One matrix operand of a product: its first element and strides.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: an operand is only read, by the products of one kernel call,
// while the tensor it points into is alive (borrowed by that call).
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    fn transposed(self) -> Self {
        Operand { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// The `batch · heads` matrices of a `[batch, heads, rows, cols]` f32
/// tensor, from its own layout.
struct Heads {
    ptr: *const f32,
    starts: Vec<isize>,
    rs: isize,
    cs: isize,
}

// SAFETY: as for `Operand`.
unsafe impl Send for Heads {}
unsafe impl Sync for Heads {}

impl Heads {
    fn new(x: &FlexTensor) -> Self {
        let l = x.layout();
        let data: &[f32] = x.storage();
        Heads { ptr: data.as_ptr(), starts: matrix_offsets(l), rs: l.strides()[2], cs: l.strides()[3] }
    }

    /// Matrix `i`.
    fn at(&self, i: usize) -> Operand {
        // SAFETY: `starts[i]` is the offset of matrix `i` in the storage
        // `ptr` points to (from the tensor's own layout).
        Operand { ptr: unsafe { self.ptr.offset(self.starts[i]) }, rs: self.rs, cs: self.cs }
    }
}

/// `dst ← a · b`, or with `add = Some(s)` `dst ← dst + s · a · b`, for one
/// `[m, n, k]` product on this thread, `dst` row-major with row stride
/// `dst_rs`; the time inside gemm is added to `clock` (nanoseconds).
///
/// # Safety
/// `a`'s `m × k` and `b`'s `k × n` elements (at `ptr + r·rs + c·cs`) lie in
/// live f32 memory; `dst`'s `m × n` elements (at `dst + r·dst_rs + c`) are
/// writable, touched by no other thread meanwhile, and initialised with
/// `add`.
unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    add: Option<f32>,
    a: Operand,
    b: Operand,
    clock: &AtomicU64,
) {
    let read_dst = add.is_some();
    let start = Instant::now();
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if read_dst { 1.0f32 } else { 0.0f32 },
            add.unwrap_or(1.0),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    clock.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// One head's attention weights `softmax(scale · (q · kᵀ + 1 · uᵀ) (+
/// causal mask))` (`q`, `k`: `t × d`; `u`, a shift per key, or none)
/// written at `p` (`t × t`, row-major); returns them as an operand.
///
/// # Safety
/// As for [`product`]: `q`'s and `k`'s elements are live, `p`'s `t × t`
/// are writable and touched by no other thread meanwhile.
unsafe fn attention_weights(
    p: *mut f32,
    q: Operand,
    k: Operand,
    [t, d]: [usize; 2],
    (scale, causal): (f32, bool),
    shift: Option<&[f32]>,
    clock: &AtomicU64,
) -> Operand {
    // SAFETY: as the caller promises; the rows are read after the product
    // wrote all of them.
    unsafe {
        product([t, t, d], p, t, None, q, k.transposed(), clock);
        let rows = std::slice::from_raw_parts_mut(p, t * t);
        for (r, row) in rows.chunks_mut(t).enumerate() {
            let seen = if causal { r + 1 } else { t };
            if let Some(u) = shift {
                simd::add_into(&mut row[..seen], &u[..seen]);
            }
            simd::softmax(row, seen, scale);
        }
    }
    Operand { ptr: p, rs: t as isize, cs: 1 }
}

/// The scores' shift per key from a query bias `bq` (one head's `d`
/// entries): `u = k · bq`, `u_j = bq · k_j` (`k`: `t × d`). With the bias,
/// a score is `(q_i + bq) · k_j = q_i · k_j + u_j`.
///
/// # Safety
/// As for [`product`]: `k`'s elements are live.
unsafe fn key_shift(k: Operand, bq: &[f32], [t, d]: [usize; 2], clock: &AtomicU64) -> Vec<f32> {
    let mut u: Vec<f32> = Vec::with_capacity(t);
    let b = Operand { ptr: bq.as_ptr(), rs: 1, cs: 1 };
    // SAFETY: as the caller promises; `bq` holds `d` entries, `u` room for
    // `t`, all written by the product.
    unsafe {
        product([t, 1, d], u.as_mut_ptr(), 1, None, k, b, clock);
        u.set_len(t);
    }
    u
}

/// A query bias's part of one head's backward, from its score gradients
/// `ds` (`t × t`, rows summing to zero): with `dk = dsᵀ · (q + bq)`, adds
/// `c_j · bq` to row `j` of `dk` (when given), `c` the column sums of `ds`;
/// adds the rows of `dq = ds · k` (exact without the key's bias, whose
/// term is `(Σ_j ds_ij) · bk = 0`) into `dbq`. Rows of `d`, `rs` apart.
///
/// # Safety
/// `dq`'s and `dk`'s `t` rows are initialised and touched by no other
/// thread meanwhile.
unsafe fn query_bias_back(
    ds: &[f32],
    [t, d, rs]: [usize; 3],
    bq: &[f32],
    dq: *const f32,
    dk: Option<*mut f32>,
    dbq: &mut [f32],
) {
    let mut c = vec![0.0f32; t];
    ds.chunks(t).take(t).for_each(|row| simd::add_into(&mut c, row));
    for (r, &cr) in c.iter().enumerate() {
        // SAFETY: as the caller promises; row `r` lies at `r·rs`.
        unsafe {
            if let Some(dk) = dk {
                simd::add_scaled(std::slice::from_raw_parts_mut(dk.add(r * rs), d), cr, bq);
            }
            simd::add_into(dbq, std::slice::from_raw_parts(dq.add(r * rs), d));
        }
    }
}

/// A query bias's values when it suits the kernels (f32, `n` of them):
/// `Some(None)` without one, `None` when it does not suit.
fn bias_values(bq: &Option<FlexTensor>, n: usize) -> Option<Option<Vec<f32>>> {
    match bq {
        None => Some(None),
        Some(b) if b.dtype() == DType::F32 && b.layout().num_elements() == n => {
            Some(Some(b.to_contiguous().storage::<f32>()[..n].to_vec()))
        }
        Some(_) => None,
    }
}

/// [`map_heads`] for heads that return nothing: how many threads ran them.
fn each_head(n: usize, head: impl Fn(usize) + Sync + Send) -> usize {
    map_heads(n, head).1
}

/// Adds the products' time of a kernel whose heads ran on `threads`
/// threads to the product clock: their summed time divided by the
/// threads, the wall time they took when the threads' products overlap
/// (exact on one thread).
fn commit(clock: &AtomicU64, threads: usize) {
    PRODUCT_NANOS.fetch_add(clock.load(Ordering::Relaxed) / threads.max(1) as u64, Ordering::Relaxed);
}

/// What a product's output starts as.
enum Start {
    /// Nothing: gemm writes every element.
    Zero,
    /// The tensor `c`, which the product is added into.
    Add(FlexTensor),
}

/// `a · b` by `gemm`, or the operands back when this kernel does not apply
/// (not f32, ranks or leading dimensions differ, an empty dimension).
///
/// With `token_major` (rank 4, `[batch, heads, tokens, n]`), the output is
/// stored as `[batch, tokens, heads, n]` — the strides of a head split — so
/// that merging the heads back (`swap_dims(1, 2)` then `reshape`) costs no
/// copy.
///
/// `init` can make the output a given tensor `c` (unique, contiguous, of
/// the output's shape, or for token-major of `[batch, tokens, heads · n]`)
/// that the product is added into — gemm's `read_dst`: the accumulation of
/// a gradient costs no pass of its own. When this kernel does not apply,
/// `c` comes back with the operands. (A bias is added after the product,
/// while its output is in cache: measured cheaper than writing the bias
/// rows for gemm to read.)
#[allow(clippy::result_large_err)]
fn matmul(
    a: FlexTensor,
    b: FlexTensor,
    token_major: bool,
    init: Start,
) -> Result<FlexTensor, (FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let (la, lb) = (a.layout(), b.layout());
    let rank = la.num_dims();
    let (sa, sb) = (la.shape(), lb.shape());
    let usable = a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && rank >= 2
        && lb.num_dims() == rank
        && sa[..rank - 2] == sb[..rank - 2]
        && sa[rank - 1] == sb[rank - 2]
        && sa.num_elements() > 0
        && sb.num_elements() > 0
        && match &init {
            Start::Zero => true,
            Start::Add(c) => {
                // The output's shape, or for token-major `[batch, tokens,
                // heads · n]`, its layout in memory.
                let shape: Vec<usize> = if token_major {
                    vec![sa[0], sa[2], sa[1] * sb[3]]
                } else {
                    let mut shape = sa.to_vec();
                    shape[rank - 1] = sb[rank - 1];
                    shape
                };
                (!token_major || rank == 4)
                    && c.dtype() == DType::F32
                    && c.is_unique()
                    && c.layout().shape().as_slice() == shape.as_slice()
                    && c.layout().contiguous_offsets().is_some_and(|(s, _)| s == 0)
            }
        };
    if !usable {
        let c = match init {
            Start::Add(c) => Some(c),
            _ => None,
        };
        return Err((a, b, c));
    }
    let (m, k, n) = (sa[rank - 2], sa[rank - 1], sb[rank - 1]);
    let (oa, ob) = (matrix_offsets(la), matrix_offsets(lb));
    let (a_rs, a_cs) = (la.strides()[rank - 2], la.strides()[rank - 1]);
    let (b_rs, b_cs) = (lb.strides()[rank - 2], lb.strides()[rank - 1]);
    let (da, db): (&[f32], &[f32]) = (a.storage(), b.storage());
    let batch = oa.len();
    let mut shape = sa.clone();
    shape[rank - 1] = n;
    // Where matrix `i` of the output starts, its row stride, and the layout.
    let (start, out_rs, layout): (Box<dyn Fn(usize) -> usize + Sync>, usize, Layout) = if token_major && rank == 4 {
        let heads = sa[1];
        let strides = vec![(m * heads * n) as isize, n as isize, (heads * n) as isize, 1];
        (Box::new(move |i| (i / heads) * m * heads * n + (i % heads) * n), heads * n, Layout::new(shape, strides, 0))
    } else {
        (Box::new(move |i| i * m * n), n, Layout::contiguous(shape))
    };
    let read_dst = !matches!(init, Start::Zero);
    let (mut out, mut into): (Vec<f32>, Option<FlexTensor>) = match init {
        Start::Zero => (Vec::with_capacity(batch * m * n), None),
        Start::Add(c) => (Vec::new(), Some(c)),
    };
    let dst = match into.as_mut() {
        Some(c) => Dst(c.storage_mut::<f32>().as_mut_ptr()),
        None => Dst(out.as_mut_ptr()),
    };
    let one = |i: usize, par: gemm::Parallelism| {
        // SAFETY: `oa[i]`, `ob[i]` and the strides come from the operands'
        // own layouts, so every element gemm reads (`offset + r·rs + c·cs`
        // for r < m or k, c < k or n) lies inside their storage. Matrix `i`
        // of the output is the `m × n` elements at `start(i) + r·out_rs + c`,
        // inside the `batch·m·n` capacity of `out` and disjoint between
        // batch indices (both layouts are permutations of the elements);
        // `read_dst = false` means gemm writes every one of them, reads none;
        // with `read_dst` they are initialised (the bias rows, `out`'s
        // length; or the unique, contiguous `c` of the output's shape).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.at(start(i)),
                1,
                out_rs as isize,
                read_dst,
                da.as_ptr().offset(oa[i]),
                a_cs,
                a_rs,
                db.as_ptr().offset(ob[i]),
                b_cs,
                b_rs,
                if read_dst { 1.0f32 } else { 0.0f32 },
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    };
    let work = m * n * k;
    let clock = Instant::now();
    if batch > 1 && work < PARALLEL_WORK && rayon::current_num_threads() > 1 {
        (0..batch).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
    } else {
        let par = if work >= PARALLEL_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        (0..batch).for_each(|i| one(i, par));
    }
    PRODUCT_NANOS.fetch_add(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if let Some(c) = into {
        if token_major && rank == 4 {
            // `c`'s memory seen as the `[batch, heads, tokens, n]` output.
            let heads = sa[1];
            return Ok(Flex::float_swap_dims(Flex::float_reshape(c, [sa[0], m, heads, n].into()), 1, 2));
        }
        return Ok(c);
    }
    if !read_dst {
        // SAFETY: the products above wrote all `batch·m·n` elements.
        unsafe { out.set_len(batch * m * n) };
    }
    Ok(FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout, DType::F32))
}
