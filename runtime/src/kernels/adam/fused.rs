//! AdamW under burn's fusion: the kernels of `cube.rs` as custom operations
//! of the fusion streams (see `kernels/fused.rs`), every parameter of a
//! step in one. The new weights and moments are shaped and typed as the old
//! whichever way `cube.rs` goes.

use burn::tensor::ops::FloatTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::Fusion;

use super::cube::squares_plan;
use super::{reference, AdamOps, AdamStep};
use crate::kernels::fused::{f32s, like, outputs, run, Operands};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AdamOps for Fusion<CubeBackend<R, F, I, BT>> {
    fn adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [[p, m, v]] = outputs(Self::adam_many(vec![[p, g, m, v]], k));
        (p, m, v)
    }

    fn adam_many(items: Vec<[FloatTensor<Self>; 4]>, k: AdamStep) -> Vec<[FloatTensor<Self>; 3]> {
        if items.is_empty() {
            return Vec::new();
        }
        let count = items.len();
        let shapes = items.iter().flat_map(|[p, _, m, v]| [like(p), like(m), like(v)]).collect();
        let ops = Operands::<CubeBackend<R, F, I, BT>>::new().floats(items.into_iter().flatten());
        let out = run("blkc.adam", ops, shapes, move |mut a| {
            let items = (0..count).map(|_| a.floats()).collect();
            CubeBackend::<R, F, I, BT>::adam_many(items, k).into_iter().flatten().collect()
        });
        let mut out = out.into_iter();
        (0..count).map(|_| std::array::from_fn(|_| out.next().unwrap_or_else(|| unreachable!("3 per item")))).collect()
    }

    fn squared_norm(xs: Vec<FloatTensor<Self>>, device: &Self::Device) -> FloatTensor<Self> {
        if !squares_plan(&xs) {
            return reference::squared_norm::<Self>(xs, device);
        }
        let device = device.clone();
        let count = xs.len();
        let [sum] = outputs(run(
            "blkc.squared_norm",
            Operands::<CubeBackend<R, F, I, BT>>::new().floats(xs),
            vec![f32s([1])],
            move |mut a| {
                let xs = (0..count).map(|_| a.float()).collect();
                vec![CubeBackend::<R, F, I, BT>::squared_norm(xs, &device)]
            },
        ));
        sum
    }
}
