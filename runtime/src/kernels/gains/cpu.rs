//! Gains on the CPU: a row at a time, gains per column, the gains'
//! gradients summed over blocks of rows.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{loops, reference, GainOps};
use crate::kernels::cpu::raw::{fresh, fresh_along, Out};
use crate::kernels::cpu::rows::{columns, group_sums, owned, vector, Rows};
use crate::kernels::cpu::{parallel, simd};

impl GainOps for Flex {
    fn scaled_sum(a: FlexTensor, b: FlexTensor, ga: FlexTensor, gb: FlexTensor) -> FlexTensor {
        let fits = a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.layout().shape() == b.layout().shape();
        let width = a.layout().shape().last().copied().unwrap_or(0);
        let (Some(ca), Some(cb)) = (columns(&ga, width).filter(|_| fits), columns(&gb, width)) else {
            return reference::scaled_sum::<Flex>(a, b, ga, gb);
        };
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let len = a.layout().num_elements();
        let (av, bv): (&[f32], &[f32]) = (&a.storage()[..len], &b.storage()[..len]);
        let out = fresh(len, width, |r, row: Out<'_>| {
            let span = r * width..(r + 1) * width;
            loops::sum2_row(row, &av[span.clone()], &bv[span], &ca, &cb)
        });
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
            return reference::scaled_sum_backward::<Flex>(a, b, ga, gb, dy);
        };
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let len = a.layout().num_elements();
        let (av, bv): (&[f32], &[f32]) = (&a.storage()[..len], &b.storage()[..len]);
        // `da = ga ⊙ dy` over `dy` itself; `db` fresh.
        let mut da = Rows::new(dy);
        // Blocks of 64 rows: the gains' column sums from `dy`, then `db`
        // (fresh) and `da`.
        let block = 64 * width;
        let add = |mut x: [Vec<f64>; 2], y: [Vec<f32>; 2]| {
            for (p, q) in x.iter_mut().zip(y) {
                p.iter_mut().zip(q).for_each(|(s, t)| *s += f64::from(t));
            }
            x
        };
        let zero = || [vec![0.0f64; width], vec![0.0f64; width]];
        let chunks = da.all().chunks_mut(block.max(1)).collect();
        let (db, parts) = fresh_along(len, block, chunks, |k, yb: Out<'_>, xa: &mut [f32]| {
            let (mut sa, mut sb) = (vec![0.0f32; width], vec![0.0f32; width]);
            let span = k * block..(k * block + xa.len());
            let (ar, br) = (&av[span.clone()], &bv[span]);
            let mut rows = xa.chunks_mut(width);
            let written = yb.rows(width, false, |i, yb| {
                let g = rows.next().expect("a row of dy per row of db");
                let row = i * width..(i + 1) * width;
                simd::add_products(&mut sa, g, &ar[row.clone()]);
                simd::add_products(&mut sb, g, &br[row]);
                let written = loops::scale_cols(yb, g, &cb);
                simd::scale_in_place(g, &ca);
                written
            });
            (written, [sa, sb])
        });
        let [sa, sb] = parts.into_iter().fold(zero(), add);
        let shape = a.layout().shape().clone();
        [da.tensor, owned(db, shape), group_sums(&sa, na), group_sums(&sb, nb)]
    }

    fn scale_groups(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        let width = x.layout().shape().last().copied().unwrap_or(0);
        let n = g.layout().num_elements();
        if x.dtype() != DType::F32 || g.dtype() != DType::F32 || n == 0 || width % n != 0 {
            return reference::scale_groups::<Flex>(x, g);
        }
        let g = g.to_contiguous();
        let gains: &[f32] = &g.storage()[..n];
        let inner = width / n;
        let mut out = Rows::new(x);
        out.for_each(|_, row| loops::scale_groups(row, gains, inner));
        out.tensor
    }

    fn scale_groups_grad(x: FlexTensor, dy: FlexTensor, n: usize) -> FlexTensor {
        let width = x.layout().shape().last().copied().unwrap_or(0);
        if x.dtype() != DType::F32 || dy.dtype() != DType::F32 || n == 0 || width % n != 0 {
            return reference::scale_groups_grad::<Flex>(x, dy, n);
        }
        let (x, dy) = (x.to_contiguous(), dy.to_contiguous());
        let len = x.layout().num_elements();
        let (xs, gs): (&[f32], &[f32]) = (&x.storage()[..len], &dy.storage()[..len]);
        let inner = width / n;
        // Per-group sums of x ⊙ dy, accumulated in f64 over blocks of rows.
        let block = width * 64;
        let partial = |(a, b): (&[f32], &[f32])| {
            let mut acc = vec![0.0f64; n];
            loops::group_dots(a, b, width, inner, &mut acc);
            acc
        };
        let add = |mut a: Vec<f64>, b: Vec<f64>| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        };
        let sums = if parallel(len) {
            xs.par_chunks(block).zip(gs.par_chunks(block)).map(partial).reduce(|| vec![0.0; n], add)
        } else {
            xs.chunks(block).zip(gs.chunks(block)).map(partial).fold(vec![0.0; n], add)
        };
        vector(sums.into_iter().map(|v| v as f32).collect())
    }
}
