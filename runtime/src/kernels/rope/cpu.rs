//! Rotary positions on the CPU: one pass over the rows of `x` in the order
//! they lie in memory (the products' token-major layout is kept, so the
//! attention reads the result as it read its input), each row turned with
//! its token's row of the tables.

use burn::backend::Flex;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{reference, RopeOps};
use crate::kernels::cpu::parallel;
use crate::kernels::cpu::rows::{owned, token_major};

impl RopeOps for Flex {
    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let tables = [&cos, &sin].map(|t| t.layout().shape().clone());
        let fits = x.dtype() == DType::F32
            && cos.dtype() == DType::F32
            && sin.dtype() == DType::F32
            && shape.num_dims() == 4
            && tables[0].num_dims() == 2
            && tables[0] == tables[1]
            && tables[0][0] == shape[2]
            && 2 * tables[0][1] <= shape[3];
        if !fits {
            return reference::rope::<Flex>(x, cos, sin);
        }
        let [b, h, t, d] = [shape[0], shape[1], shape[2], shape[3]];
        let half = tables[0][1];
        // Token-major (`[b, t, h, d]` in memory) stays so; any other layout
        // is read as a contiguous copy.
        let tm = [(t * h * d) as isize, d as isize, (h * d) as isize, 1];
        let kept = x.layout().strides() == tm && x.layout().start_offset() == 0;
        let x = if kept { x } else { x.to_contiguous() };
        let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
        let len = b * h * t * d;
        let (xs, cs, ss): (&[f32], &[f32], &[f32]) =
            (&x.storage()[..len], &cos.storage()[..t * half], &sin.storage()[..t * half]);
        let mut out = vec![0.0f32; len];
        // Memory row `r`'s token: `[b, t, h]` rows (token-major) or
        // `[b, h, t]` rows.
        let token = |r: usize| if kept { (r / h) % t } else { r % t };
        let turn = |r: usize, y: &mut [f32]| {
            let x = &xs[r * d..(r + 1) * d];
            let at = token(r) * half;
            let (c, s) = (&cs[at..at + half], &ss[at..at + half]);
            let (y1, rest) = y.split_at_mut(half);
            let (y2, tail) = rest.split_at_mut(half);
            for p in 0..half {
                let (a, e) = (x[p], x[p + half]);
                y1[p] = a * c[p] - e * s[p];
                y2[p] = e * c[p] + a * s[p];
            }
            tail.copy_from_slice(&x[2 * half..]);
        };
        if d > 0 {
            if parallel(len) {
                out.par_chunks_mut(d).enumerate().for_each(|(r, y)| turn(r, y));
            } else {
                out.chunks_mut(d).enumerate().for_each(|(r, y)| turn(r, y));
            }
        }
        if kept {
            token_major(out, [b, h, t, d])
        } else {
            owned(out, shape)
        }
    }
}
