//! Adam(W) on burn's CubeCL backends: one kernel per parameter tensor that
//! reads the parameter, its gradient and both moments once and writes the
//! three updated, where the reference runs a dozen element-wise operations
//! (each a launch and a pass over memory). The gradients' squared norm:
//! one launch per gradient, each cube's sum into its slot of one buffer,
//! then one sum of the buffer (the reference: a square, a sum and an add
//! per gradient). f32 only; other dtypes take the reference. Tested
//! against the reference in `runtime/tests/device.rs`.

use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

use super::{reference, AdamOps, AdamStep};
use crate::kernels::cube::{cube_sum, empty_f32, row_cubes, units};

/// Most cubes one gradient's sum of squares is spread over.
const MAX_CUBES: usize = 1024;

/// Cube `c` of `cubes` sums the squares of its stride of `x` (`n` entries)
/// into `partials[offset + c]`.
#[cube(launch)]
fn squares<F: Float>(
    x: &Tensor<F>,
    partials: &mut Tensor<F>,
    n: usize,
    offset: usize,
    cubes: usize,
    #[comptime] block: usize,
) {
    let c = CUBE_POS;
    if c >= cubes {
        terminate!();
    }
    let mut shared = SharedMemory::<F>::new(block);
    let mut s = F::new(0.0);
    let mut i = c * block + UNIT_POS as usize;
    while i < n {
        let v = x[i];
        s += v * v;
        i += cubes * block;
    }
    let total = cube_sum(&mut shared, s, block);
    if UNIT_POS == 0 {
        partials[offset + c] = total;
    }
}

/// `g ← g · grad_scale + l2 · p`, the moments (`rest` = 1 − β), then
/// `p ← p · keep − lr · m / (sqrt(v · inv_bc2) + eps)` (`lr` already over
/// `1 − β₁ᵗ`), element by element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn adam_update<F: Float>(
    p: &Tensor<F>,
    g: &Tensor<F>,
    m: &Tensor<F>,
    v: &Tensor<F>,
    p_out: &mut Tensor<F>,
    m_out: &mut Tensor<F>,
    v_out: &mut Tensor<F>,
    n: usize,
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
) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let w = p[i];
    let grad = g[i] * F::cast_from(grad_scale) + F::cast_from(l2) * w;
    let b1 = F::cast_from(beta1);
    let b2 = F::cast_from(beta2);
    let m1 = b1 * m[i] + F::cast_from(rest1) * grad;
    let v1 = b2 * v[i] + F::cast_from(rest2) * grad * grad;
    m_out[i] = m1;
    v_out[i] = v1;
    p_out[i] =
        w * F::cast_from(keep) - F::cast_from(lr) * m1 / (F::sqrt(v1 * F::cast_from(inv_bc2)) + F::cast_from(eps));
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> AdamOps for CubeBackend<R, F, I, BT> {
    fn adam(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        k: AdamStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let n = p.shape().num_elements();
        let fits = [&p, &g, &m, &v].iter().all(|t| t.dtype == DType::F32 && t.shape().num_elements() == n);
        if !fits || n == 0 {
            return reference::adam::<Self>(p, g, m, v, k);
        }
        let [p, g, m, v] = [p, g, m, v].map(into_contiguous);
        let (p1, m1, v1) = (empty_f32(&p, p.shape()), empty_f32(&m, m.shape()), empty_f32(&v, v.shape()));
        let client = p.client.clone();
        let (count, dim) = units(&client, n);
        adam_update::launch::<f32, R>(
            &client,
            count,
            dim,
            p.into_tensor_arg(),
            g.into_tensor_arg(),
            m.into_tensor_arg(),
            v.into_tensor_arg(),
            p1.clone().into_tensor_arg(),
            m1.clone().into_tensor_arg(),
            v1.clone().into_tensor_arg(),
            n,
            (k.lr / k.bc1) as f32,
            k.beta1 as f32,
            k.beta2 as f32,
            // 1 − β in f64, then rounded: 1 − 0.999 in f32 is 5·10⁻⁵ off.
            (1.0 - k.beta1) as f32,
            (1.0 - k.beta2) as f32,
            k.eps as f32,
            (1.0 / k.bc2) as f32,
            k.grad_scale as f32,
            k.l2 as f32,
            (1.0 - k.decay) as f32,
        );
        (p1, m1, v1)
    }

    fn squared_norm(xs: Vec<FloatTensor<Self>>, device: &Self::Device) -> FloatTensor<Self> {
        let sizes: Vec<usize> = xs.iter().map(|x| x.shape().num_elements()).collect();
        if xs.is_empty() || xs.iter().any(|x| x.dtype != DType::F32) || sizes.contains(&0) {
            return reference::squared_norm::<Self>(xs, device);
        }
        let client = xs[0].client.clone();
        // Each gradient's cubes: enough for 4 entries per unit, at most
        // MAX_CUBES.
        let plans: Vec<_> = sizes
            .iter()
            .map(|&n| {
                let (_, dim, block) = row_cubes(&client, 1, n);
                let cubes = n.div_ceil(block * 4).clamp(1, MAX_CUBES);
                let (count, _, _) = row_cubes(&client, cubes, n);
                (count, dim, block, cubes)
            })
            .collect();
        let slots: usize = plans.iter().map(|p| p.3).sum();
        let partials = empty_f32(&xs[0], [slots]);
        let mut offset = 0;
        for ((x, &n), (count, dim, block, cubes)) in xs.into_iter().zip(&sizes).zip(plans) {
            let x = into_contiguous(x);
            squares::launch::<f32, R>(
                &client,
                count,
                dim,
                x.into_tensor_arg(),
                partials.clone().into_tensor_arg(),
                n,
                offset,
                cubes,
                block,
            );
            offset += cubes;
        }
        Self::float_sum(partials)
    }
}
