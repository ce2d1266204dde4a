//! The shaped mix on the CPU, given the softmax term: one pass per
//! sequence forward, one from the last token to the first backward.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::loops;
use crate::kernels::attention::Keys;
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::raw::{fresh, Out};
use crate::kernels::cpu::rows::{columns, dims3, group_sums, owned, Rows};

/// The per-column gains of a shaped mix (`[width]` each) and the dims of
/// `v`, or `None` where the fused kernel does not apply (not f32, not
/// `[batch, tokens, width]`, `o` of another shape, a gain count that does
/// not divide the width).
fn setup(v: &FlexTensor, o: &FlexTensor, gains: &[FlexTensor; 3]) -> Option<([Vec<f32>; 3], [usize; 3])> {
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
    let [alpha, beta, gamma] = gains;
    Some(([columns(alpha, w)?, columns(beta, w)?, columns(gamma, w)?], dims))
}

/// The shaped mix, one pass per sequence; `None` where the kernel does
/// not apply.
pub fn mix_forward(v: &FlexTensor, o: &FlexTensor, gains: &[FlexTensor; 3], keys: Keys) -> Option<FlexTensor> {
    let ([alpha, beta, gamma], [_, t, w]) = setup(v, o, gains)?;
    let (v, o) = (v.to_contiguous(), o.to_contiguous());
    let len = v.layout().num_elements();
    let (vs, os): (&[f32], &[f32]) = (&v.storage()[..len], &o.storage()[..len]);
    let g = loops::MixGains { alpha: &alpha, beta: &beta, gamma: &gamma, branch: &[] };
    let out = fresh(len, t * w, |q, y: Out<'_>| {
        let span = q * t * w..(q + 1) * t * w;
        let (vq, oq) = (&vs[span.clone()], &os[span]);
        let mut centres = loops::Centres::new(vq, w, keys);
        let mut row = vec![0.0f32; w];
        y.rows(w, false, |i, y| {
            let rows = i * w..(i + 1) * w;
            let x = loops::MixIn { v: &vq[rows.clone()], o: &oq[rows], b: None };
            let (sum, inv, running) = centres.row(i, t);
            loops::mix_row(&mut row, x, sum, g, inv, running);
            y.copy(&row)
        })
    });
    Some(owned(out, v.layout().shape().clone()))
}

/// The gradients `(dv, do, [dalpha, dbeta, dgamma])` of the shaped mix (`dv` added
/// into `acc` when given; `do` over `dy`): one pass per sequence, from the
/// last token to the first. The operands come back where the kernel does
/// not apply.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn mix_backward(
    [v, o]: [&FlexTensor; 2],
    gains: &[FlexTensor; 3],
    dy: FlexTensor,
    keys: Keys,
    acc: Option<FlexTensor>,
) -> Result<(FlexTensor, FlexTensor, [FlexTensor; 3]), (FlexTensor, Option<FlexTensor>)> {
    let shape = v.layout().shape().clone();
    let fits = dy.dtype() == DType::F32
        && dy.layout().shape() == &shape
        && acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().shape() == &shape);
    let Some(([alpha, beta, gamma], [_, t, w])) = setup(v, o, gains).filter(|_| fits) else {
        return Err((dy, acc));
    };
    let sizes = gains.each_ref().map(|g| g.layout().num_elements());
    let (v, o) = (v.to_contiguous(), o.to_contiguous());
    let len = v.layout().num_elements();
    let (vs, os): (&[f32], &[f32]) = (&v.storage()[..len], &o.storage()[..len]);
    let g = loops::MixGains { alpha: &alpha, beta: &beta, gamma: &gamma, branch: &[] };
    // `do` over `dy` itself; `dv` added into `acc`, or into zeros (the
    // mix alone runs only with a soft-cap).
    let mut d_o = Rows::new(dy);
    let mut dv = Rows::new(acc.unwrap_or_else(|| owned(vec![0.0; len], shape.clone())));
    let sequence = |(q, (dvq, dq)): (usize, (&mut [f32], &mut [f32]))| {
        let span = q * t * w..(q + 1) * t * w;
        let (vq, oq) = (&vs[span.clone()], &os[span]);
        let [mut si, mut ss, mut sc, mut unused] = [0, 1, 2, 3].map(|_| vec![0.0f32; w]);
        let mut r = vec![0.0f32; w];
        // Before `do` is written over `dy`.
        let centre = loops::CentreGrads::new(dq, w, keys, &mut r);
        let mut sums = loops::MixSums { r: &mut r, alpha: &mut si, beta: &mut ss, gamma: &mut sc, branch: &mut unused };
        for i in (0..t).rev() {
            let inv = centre.row(i, sums.r);
            let rows = i * w..(i + 1) * w;
            let vo = [&vq[rows.clone()], &oq[rows.clone()]];
            loops::mix_back_row(&mut dvq[rows.clone()], &mut dq[rows], vo, g, &mut sums, inv);
        }
        [si, ss, sc]
    };
    let add3 = |mut a: [Vec<f64>; 3], b: [Vec<f32>; 3]| {
        for (x, y) in a.iter_mut().zip(b) {
            x.iter_mut().zip(y).for_each(|(p, q)| *p += f64::from(q));
        }
        a
    };
    let zero = || [0, 1, 2].map(|_| vec![0.0f64; w]);
    let dvs: Vec<&mut [f32]> = dv.all().chunks_mut(t * w).collect();
    let dq: Vec<&mut [f32]> = d_o.all().chunks_mut(t * w).collect();
    let work: Vec<_> = dvs.into_iter().zip(dq).collect();
    let sums = if parallel(len) {
        let per: Vec<[Vec<f32>; 3]> = work.into_par_iter().enumerate().map(sequence).collect();
        per.into_iter().fold(zero(), add3)
    } else {
        work.into_iter().enumerate().map(sequence).fold(zero(), add3)
    };
    let dgains = [0, 1, 2].map(|k| group_sums(&sums[k], sizes[k]));
    Ok((dv.tensor, d_o.tensor, dgains))
}
