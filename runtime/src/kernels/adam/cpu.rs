//! Adam(W) on the CPU: the parameter and both moments updated in place,
//! by chunks on several threads.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{loops, reference, AdamOps, AdamStep};
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::rows::Rows;

impl AdamOps for Flex {
    fn adam(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        k: AdamStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if [&p, &g, &m, &v].iter().any(|t| t.dtype() != DType::F32) {
            return reference::adam::<Flex>(p, g, m, v, k);
        }
        let g = g.to_contiguous();
        let n = g.layout().num_elements();
        let gs: &[f32] = &g.storage()[..n];
        let (mut p, mut m, mut v) = (Rows::new(p), Rows::new(m), Rows::new(v));
        let f = |x: f64| x as f32;
        let k = loops::Adam {
            lr: f(k.lr / k.bc1),
            beta1: f(k.beta1),
            beta2: f(k.beta2),
            rest1: f(1.0 - k.beta1),
            rest2: f(1.0 - k.beta2),
            eps: f(k.eps),
            inv_bc2: f(1.0 / k.bc2),
            grad_scale: f(k.grad_scale),
            l2: f(k.l2),
            keep: f(1.0 - k.decay),
        };
        let (ps, ms, vs) = (p.all(), m.all(), v.all());
        const CHUNK: usize = 1 << 14;
        if parallel(n) {
            let chunks = ps.par_chunks_mut(CHUNK).zip(ms.par_chunks_mut(CHUNK)).zip(vs.par_chunks_mut(CHUNK));
            chunks.zip(gs.par_chunks(CHUNK)).for_each(|(((p, m), v), g)| loops::adam(p, m, v, g, k));
        } else {
            let chunks = ps.chunks_mut(CHUNK).zip(ms.chunks_mut(CHUNK)).zip(vs.chunks_mut(CHUNK));
            chunks.zip(gs.chunks(CHUNK)).for_each(|(((p, m), v), g)| loops::adam(p, m, v, g, k));
        }
        (p.tensor, m.tensor, v.tensor)
    }
}
