//! The embedding on the CPU: rows copied into an output that is not
//! zeroed; the gradient added by token in one pass.

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::{loops, reference, EmbedOps};
use crate::kernels::cpu::raw::{fresh, Out};
use crate::kernels::cpu::rows::{indices, matrix, Rows};
use crate::kernels::cpu::simd;

impl EmbedOps for Flex {
    fn embed(table: FlexTensor, tokens: FlexTensor, positions: Option<FlexTensor>) -> FlexTensor {
        let usable = table.dtype() == DType::F32
            && table.layout().num_dims() == 2
            && positions.as_ref().is_none_or(|p| {
                let s = p.layout().shape();
                p.dtype() == DType::F32 && s.num_dims() == 2 && s[0] > 0 && s[1] == table.layout().shape()[1]
            });
        let Some(ids) = indices(&tokens).filter(|_| usable) else {
            return reference::embed::<Flex>(table, tokens, positions);
        };
        let (table, positions) = (table.to_contiguous(), positions.map(|p| p.to_contiguous()));
        let (vocab, d) = (table.layout().shape()[0], table.layout().shape()[1]);
        let rows: &[f32] = &table.storage()[..vocab * d];
        let pos: Option<(&[f32], usize)> =
            positions.as_ref().map(|p| (&p.storage()[..p.layout().num_elements()], p.layout().shape()[0].max(1)));
        let n = ids.len();
        if vocab == 0 || d == 0 {
            return reference::embed::<Flex>(table, tokens, positions);
        }
        let out = fresh(n * d, d, |i, o: Out<'_>| {
            let k = ids[i].min(vocab.saturating_sub(1));
            loops::embed_row(o, &rows[k * d..(k + 1) * d], pos.map(|(p, t)| &p[(i % t) * d..(i % t + 1) * d]))
        });
        matrix(out, n, d)
    }

    fn embed_backward(
        dy: FlexTensor,
        tokens: FlexTensor,
        _groups: Option<FlexTensor>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FlexTensor>,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let usable = dy.dtype() == DType::F32 && dy.layout().num_dims() == 2 && vocab > 0;
        let d = dy.layout().shape().last().copied().unwrap_or(0);
        let acc_fits = acc.as_ref().is_none_or(|a| a.dtype() == DType::F32 && a.layout().num_elements() == vocab * d);
        let Some(ids) = indices(&tokens).filter(|_| usable && acc_fits) else {
            return reference::embed_backward::<Flex>(dy, tokens, vocab, t, acc);
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
}
