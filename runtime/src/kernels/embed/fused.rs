//! The embedding's gradient under burn's fusion: the kernel of `cube.rs`
//! as a custom operation of the fusion streams (see `kernels/fused.rs`),
//! planned as `cube.rs` plans; the lookup and the positions' gradient stay
//! burn's operations, which fusion records as they come.

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::TensorMetadata;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::{plan, table_grad};
use super::{reference, EmbedOps};
use crate::kernels::fused::{f32s, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> EmbedOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn embed_groups(tokens: &IntTensor<Self>, vocab: usize) -> Option<IntTensor<Self>> {
        (tokens.dtype() == I::dtype()).then(|| super::groups::<Self>(tokens, vocab))
    }

    fn embed_backward(
        dy: FloatTensor<Self>,
        tokens: IntTensor<Self>,
        groups: Option<IntTensor<Self>>,
        vocab: usize,
        t: Option<usize>,
        acc: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let planned = groups.and_then(|g| plan::<_, I>(&dy, &g, vocab, acc.as_ref()).map(|[_, d]| (g, d)));
        let Some((groups, d)) = planned else {
            return reference::embed_backward::<Self>(dy, tokens, vocab, t, acc);
        };
        let dpos = t.map(|t| reference::position_grad::<Self>(dy.clone(), t));
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().float(dy).int(groups).maybe(acc);
        let [table] = outputs(run("blkc.embed_backward", ops, vec![f32s([vocab, d])], move |mut x| {
            let dy = x.float();
            let groups = x.int();
            let acc = x.maybe();
            vec![table_grad::<R, F, I, BT>(dy, groups, vocab, acc)]
        }));
        (table, dpos)
    }
}
