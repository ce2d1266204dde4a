//! The loss on the CPU: a row of logits at a time, the gradient written
//! over them while in cache.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{loops, reference, LossOps};
use crate::kernels::attention::loops::soft_cap;
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::rows::{indices, vector, Rows};

impl LossOps for Flex {
    fn cross_entropy(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let Some(targets) = indices(&targets).filter(|_| logits.dtype() == DType::F32) else {
            return reference::cross_entropy::<Flex>(logits, targets);
        };
        let logits = logits.to_contiguous();
        let v = logits.layout().shape()[1];
        let n = targets.len();
        let x: &[f32] = &logits.storage()[..n * v];
        let row = |(i, r): (usize, &[f32])| {
            let lse = loops::log_sum_exp(r);
            (lse - r[targets[i].min(v - 1)], lse)
        };
        let pairs: Vec<(f32, f32)> = if parallel(n * v) {
            x.par_chunks(v).enumerate().map(row).collect()
        } else {
            x.chunks(v).enumerate().map(row).collect()
        };
        let (nll, lse): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
        (vector(nll), vector(lse))
    }

    fn nll_mean(logits: FlexTensor, targets: FlexTensor, cap: Option<f64>) -> FlexTensor {
        let Some(t) = row_targets(&logits, &targets) else {
            return reference::nll_mean::<Flex>(logits, targets, cap);
        };
        let logits = logits.to_contiguous();
        let (n, v) = (t.len(), logits.layout().shape()[1]);
        let x: &[f32] = &logits.storage()[..n * v];
        // A capped row is formed in a scratch row of the thread's, while
        // in cache; the logits are not written.
        let row = |z: &mut Vec<f32>, (i, r): (usize, &[f32])| {
            let target = t[i].min(v - 1);
            let nll = match cap {
                Some(c) => loops::capped_cross_entropy(r, target, c as f32, z),
                None => loops::log_sum_exp(r) - r[target],
            };
            f64::from(nll)
        };
        let scratch = || vec![0.0f32; if cap.is_some() { v } else { 0 }];
        let total: f64 = if parallel(n * v) {
            x.par_chunks(v).enumerate().map_init(scratch, row).sum()
        } else {
            let mut z = scratch();
            x.chunks(v).enumerate().map(|r| row(&mut z, r)).sum()
        };
        vector(vec![(total / n.max(1) as f64) as f32])
    }

    fn nll_mean_with_grad(logits: FlexTensor, targets: FlexTensor, cap: Option<f64>) -> (FlexTensor, FlexTensor) {
        let Some(t) = row_targets(&logits, &targets) else {
            return reference::nll_mean_with_grad::<Flex>(logits, targets, cap);
        };
        let mut out = Rows::new(logits);
        let (n, v) = (t.len(), out.width());
        let inv_n = 1.0 / n.max(1) as f32;
        let rows = out.all();
        let row = |(i, r): (usize, &mut [f32])| {
            let target = t[i].min(v - 1);
            let nll = match cap {
                Some(c) => loops::capped_cross_entropy_grad_row(r, target, inv_n, c as f32),
                None => loops::cross_entropy_grad_row(r, target, inv_n),
            };
            f64::from(nll)
        };
        let total: f64 = if parallel(n * v) {
            rows.par_chunks_mut(v).enumerate().map(row).sum()
        } else {
            rows.chunks_mut(v).enumerate().map(row).sum()
        };
        (vector(vec![(total / n.max(1) as f64) as f32]), out.tensor)
    }

    fn soft_capped(x: FlexTensor, cap: f64) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return reference::soft_capped::<Flex>(x, cap);
        }
        let mut out = Rows::new(x);
        out.for_each(|_, row| soft_cap(row, 1.0, cap as f32));
        out.tensor
    }

    fn times_scalar(x: FlexTensor, g: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || g.dtype() != DType::F32 || g.layout().num_elements() != 1 {
            return reference::times_scalar::<Flex>(x, g);
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
            return reference::cross_entropy_backward::<Flex>(logits, lse, targets, g);
        };
        let (lse, g) = (lse.to_contiguous(), g.to_contiguous());
        let (lse, g): (&[f32], &[f32]) = (lse.storage(), g.storage());
        let mut out = Rows::new(logits);
        let v = out.width();
        out.for_each(|i, row| {
            loops::scaled_exp(row, lse[i], g[i]);
            row[t[i].min(v - 1)] -= g[i];
        });
        out.tensor
    }
}

/// The targets of f32 logits `[n, vocab]` (a vocabulary of at least one),
/// one per row, as indices, where the mean's kernels take them.
fn row_targets(logits: &FlexTensor, targets: &FlexTensor) -> Option<Vec<usize>> {
    let shape = logits.layout().shape();
    let fits = logits.dtype() == DType::F32 && shape.num_dims() == 2 && shape[1] > 0;
    indices(targets).filter(|t| fits && t.len() == shape[0])
}
