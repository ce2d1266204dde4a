//! Adam(W) on burn's CubeCL backends: one kernel that reads each parameter,
//! its gradient and both moments once and writes the three updated, where
//! the reference runs a dozen element-wise operations (each a launch and a
//! pass over memory), for up to [`GROUP`] parameters per launch (a
//! CodeParrot model has about 200, most of them gains of one entry). The
//! gradients' squared norm: one launch per group of gradients, each
//! cube's sum into its slot of one buffer, then one sum of the buffer (the
//! reference: a square, a sum and an add per gradient). f32 only; other
//! dtypes take the reference. Tested against the reference in
//! `runtime/tests/device/kernels.rs`.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{groups, reference, AdamOps, AdamStep};
use crate::kernels::cube::{cube_sum, empty_f32, row_cubes, sum_all};

/// Most cubes one tensor is spread over (its units then stride further).
const MAX_CUBES: usize = 1024;

/// The cubes one tensor of `n` entries is spread over, `block` units
/// each: enough for 4 entries per unit, at most `MAX_CUBES`.
#[cube]
fn spread(n: usize, #[comptime] block: usize) -> usize {
    n.div_ceil(block * 4).clamp(1, MAX_CUBES)
}

/// The sums of squares of `count` tensors in one launch: each tensor's
/// cubes ([`spread`]) follow the previous one's, and cube `c` writes the
/// sum of its stride of its tensor into `partials[offset + c]`.
#[cube(launch)]
fn squares<F: Float>(
    xs: &Sequence<Tensor<F>>,
    partials: &mut Tensor<F>,
    offset: usize,
    total: usize,
    #[comptime] block: usize,
    #[comptime] count: usize,
) {
    let c = CUBE_POS;
    if c >= total {
        terminate!();
    }
    let mut shared = SharedMemory::<F>::new(block);
    let mut s = F::new(0.0);
    let mut first = 0;
    #[unroll]
    for t in 0..count {
        let x = xs.index(t);
        let n = x.len();
        let cubes = spread(n, block);
        if c >= first && c < first + cubes {
            let mut i = (c - first) * block + UNIT_POS as usize;
            while i < n {
                let v = x[i];
                s += v * v;
                i += cubes * block;
            }
        }
        first += cubes;
    }
    let sum = cube_sum(&mut shared, s, block);
    if UNIT_POS == 0 {
        partials[offset + c] = sum;
    }
}

/// The constants of an update (`AdamStep` as the kernels read it): `lr`
/// already over `1 − β₁ᵗ`, `rest` = 1 − β, `keep` = 1 − decay.
#[derive(CubeLaunch, CubeType, Clone, Copy)]
struct Consts {
    lr: f32,
    beta1: f32,
    beta2: f32,
    rest1: f32,
    rest2: f32,
    eps: f32,
    inv_bc2: f32,
    grad_scale: f32,
    l2: f32,
    keep: f32,
}

impl Consts {
    fn of<R: Runtime>(k: AdamStep) -> ConstsLaunch<R> {
        let f = |x: f64| x as f32;
        ConstsLaunch::new(
            f(k.lr / k.bc1),
            f(k.beta1),
            f(k.beta2),
            // 1 − β in f64, then rounded: 1 − 0.999 in f32 is 5·10⁻⁵ off.
            f(1.0 - k.beta1),
            f(1.0 - k.beta2),
            f(k.eps),
            f(1.0 / k.bc2),
            f(k.grad_scale),
            f(k.l2),
            f(1.0 - k.decay),
        )
    }
}

/// Entry `i`: `g ← g · grad_scale + l2 · p`, the moments, then
/// `p ← p · keep − lr · m / (sqrt(v · inv_bc2) + eps)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn update_at<F: Float>(
    p: &Tensor<F>,
    g: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
    p_out: &mut Tensor<F>,
    m_out: &mut Tensor<F>,
    v_out: &mut Tensor<F>,
    i: usize,
    k: &Consts,
) {
    let w = p[i];
    let grad = g[i] * F::cast_from(k.grad_scale) + F::cast_from(k.l2) * w;
    let m1 = F::cast_from(k.beta1) * m[i] + F::cast_from(k.rest1) * grad;
    let v1 = F::cast_from(k.beta2) * v[i] + F::cast_from(k.rest2) * grad * grad;
    m_out[i] = m1;
    v_out[i] = v1;
    p_out[i] = w * F::cast_from(k.keep)
        - F::cast_from(k.lr) * m1 / (F::sqrt(v1 * F::cast_from(k.inv_bc2)) + F::cast_from(k.eps));
}

/// `count` parameters in one launch: each parameter's cubes ([`spread`])
/// follow the previous one's, and the units of a cube update its stride of
/// that parameter (so a cube, and every warp, works on one parameter).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adam_group<F: Float>(
    p: &Sequence<Tensor<F>>,
    g: &Sequence<Tensor<F>>,
    m: &Sequence<Tensor<F>>,
    v: &Sequence<Tensor<F>>,
    p_out: &mut Sequence<Tensor<F>>,
    m_out: &mut Sequence<Tensor<F>>,
    v_out: &mut Sequence<Tensor<F>>,
    total: usize,
    k: &Consts,
    #[comptime] block: usize,
    #[comptime] count: usize,
) {
    let c = CUBE_POS;
    if c >= total {
        terminate!();
    }
    let mut first = 0;
    #[unroll]
    for t in 0..count {
        let n = p.index(t).len();
        let cubes = spread(n, block);
        if c >= first && c < first + cubes {
            let mut i = (c - first) * block + UNIT_POS as usize;
            while i < n {
                update_at(
                    p.index(t),
                    g.index(t),
                    m.index(t),
                    v.index(t),
                    p_out.index_mut(t),
                    m_out.index_mut(t),
                    v_out.index_mut(t),
                    i,
                    k,
                );
                i += cubes * block;
            }
        }
        first += cubes;
    }
}

/// Most tensors of one grouped launch (fewer where a device binds fewer
/// buffers to a kernel): seven per parameter for Adam.
const GROUP: usize = 16;

/// How many tensors of `per` buffers each one launch can bind on `client`
/// (one binding kept for the launch's own metadata).
fn group_size<R: CubeRuntime>(client: &ComputeClient<R>, per: usize) -> usize {
    let bindings = client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(2) / per).min(GROUP)
}

/// Whether the squares kernel sums `xs`: f32 tensors, at least one, none
/// empty (of metadata only, so that fusion plans as this file does).
pub(crate) fn squares_plan<T: TensorMetadata>(xs: &[T]) -> bool {
    !xs.is_empty() && xs.iter().all(|x| x.dtype() == DType::F32 && x.shape().num_elements() > 0)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AdamOps for CubeBackend<R, F, I, BT> {
    fn adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [[p, m, v]] = Self::adam_many(vec![[p, g, m, v]], k).try_into().unwrap_or_else(|_| unreachable!());
        (p, m, v)
    }

    fn adam_many(items: Vec<[FloatTensor<Self>; 4]>, k: AdamStep) -> Vec<[FloatTensor<Self>; 3]> {
        let fits = |[p, g, m, v]: &[FloatTensor<Self>; 4]| {
            let n = p.shape().num_elements();
            n > 0 && [p, g, m, v].iter().all(|t| t.dtype == DType::F32 && t.shape().num_elements() == n)
        };
        let Some(client) = items.first().map(|[p, ..]| p.client.clone()) else { return Vec::new() };
        let sizes: Vec<usize> = items.iter().map(|[p, ..]| p.shape().num_elements()).collect();
        // Each launch's new tensors are at most what the largest parameter's
        // alone would be (the memory estimate's one copy of the weights).
        let cap = sizes.iter().copied().max().unwrap_or(0);
        let most = group_size(&client, 7).max(1);
        let (_, dim, block) = row_cubes(&client, 1, cap);
        let mut items = items.into_iter();
        let mut out = Vec::with_capacity(sizes.len());
        for range in groups(&sizes, most, cap) {
            let group: Vec<_> = items.by_ref().take(range.len()).collect();
            if !group.iter().all(fits) {
                out.extend(group.into_iter().map(|[p, g, m, v]| {
                    let (p, m, v) = reference::adam::<Self>(p, g, m, v, k);
                    [p, m, v]
                }));
                continue;
            }
            let group: Vec<[FloatTensor<Self>; 4]> = group.into_iter().map(|t| t.map(into_contiguous)).collect();
            let fresh: Vec<[FloatTensor<Self>; 3]> =
                group.iter().map(|[p, _, m, v]| [p, m, v].map(|t| empty_f32(t, t.shape()))).collect();
            let total: usize = sizes[range].iter().map(|&n| spread(n, block)).sum();
            let arg = |which: &dyn Fn(&[FloatTensor<Self>; 4]) -> &FloatTensor<Self>| -> SequenceArg<R, Tensor<f32>> {
                group.iter().map(|t| which(t).clone().into_tensor_arg()).collect()
            };
            let out_arg = |i: usize| -> SequenceArg<R, Tensor<f32>> {
                fresh.iter().map(|t| t[i].clone().into_tensor_arg()).collect()
            };
            let (count, _, _) = row_cubes(&client, total, block);
            adam_group::launch::<f32, R>(
                &client,
                count,
                dim,
                arg(&|t| &t[0]),
                arg(&|t| &t[1]),
                arg(&|t| &t[2]),
                arg(&|t| &t[3]),
                out_arg(0),
                out_arg(1),
                out_arg(2),
                total,
                Consts::of(k),
                block,
                group.len(),
            );
            out.extend(fresh);
        }
        out
    }

    fn squared_norm(xs: Vec<FloatTensor<Self>>, device: &Self::Device) -> FloatTensor<Self> {
        if !squares_plan(&xs) {
            return reference::squared_norm::<Self>(xs, device);
        }
        let sizes: Vec<usize> = xs.iter().map(|x| x.shape().num_elements()).collect();
        let client = xs[0].client.clone();
        let (_, dim, block) = row_cubes(&client, 1, sizes.iter().copied().max().unwrap_or(1));
        let cubes: Vec<usize> = sizes.iter().map(|&n| spread(n, block)).collect();
        let partials = empty_f32(&xs[0], [cubes.iter().sum::<usize>()]);
        let most = group_size(&client, 1).saturating_sub(1).max(1);
        let mut xs = xs.into_iter();
        let mut offset = 0;
        for range in groups(&sizes, most, usize::MAX) {
            let total: usize = cubes[range.clone()].iter().sum();
            let group: SequenceArg<R, Tensor<f32>> =
                xs.by_ref().take(range.len()).map(|x| into_contiguous(x).into_tensor_arg()).collect();
            let (count, _, _) = row_cubes(&client, total, block);
            squares::launch::<f32, R>(
                &client,
                count,
                dim,
                group,
                partials.clone().into_tensor_arg(),
                offset,
                total,
                block,
                range.len(),
            );
            offset += total;
        }
        sum_all(partials)
    }
}
