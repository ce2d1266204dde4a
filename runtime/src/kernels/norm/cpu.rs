//! LayerNorm and RMSNorm on the CPU: a row at a time, the statistics and
//! the output in one pass; backward with the scale and shift gradients.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{loops, reference, NormOps};
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::raw::{self, fresh_along, Out};
use crate::kernels::cpu::rows::{matrix, vector, Rows};

impl NormOps for Flex {
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
            return reference::norm::<Flex>(x, scale, bias, eps, centred);
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
        let mut rstd = vec![0.0f32; rows];
        let eps = eps as f32;
        // By blocks of 64 rows, each row into a scratch row in cache, then
        // streamed out (the output is read by later kernels, not this one).
        let w = width.max(1);
        let along = rstd.chunks_mut(64).collect();
        let (out, _) = fresh_along(rows * width, 64 * w, along, |b, y: Out<'_>, r: &mut [f32]| {
            let mut row = vec![0.0f32; w];
            let written = y.rows(w, false, |i, y| {
                let at = (b * 64 + i) * w;
                r[i] = loops::norm(&mut row, &xs[at..at + w], gamma, beta, eps, centred);
                y.stream(&row)
            });
            raw::fence();
            (written, ())
        });
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
            return reference::norm_backward_adding::<Flex>(x, scale, rstd, dy, centred, acc);
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
                loops::norm_backward(row, &xs[rows], gamma, rs[at], centred, acc, (&mut s32, &mut b32));
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
        let (ds, db) = if parallel(len) {
            dys.par_chunks_mut(block).enumerate().map(part).reduce(zero, add)
        } else {
            dys.chunks_mut(block).enumerate().map(part).fold(zero(), add)
        };
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        let (dscale, dbias): (Vec<f32>, Vec<f32>) = (f32s(ds), f32s(db));
        (out.tensor, vector(dscale), vector(dbias))
    }
}
