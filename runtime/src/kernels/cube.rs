//! burn's CubeCL backends without operation fusion (`CubeBackend`, which
//! `burn::backend::Cuda` and `Wgpu` are when the `fusion` feature is off):
//! every family by its CubeCL kernels (`shaped`, `attention`, `gains`,
//! `norm`, `loss`, `adam`, `rope`, `embed`: their `cube.rs`; `dense` by
//! cubek's products in the precision asked for and its own kernels for
//! activations and gated units); and what those kernels share: launch
//! sizes, fresh outputs, and the sum over the units of a cube.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::kernel::reduce::{sum_fallback, KernelReduceStrategy, SumStrategy};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// The sum of every entry of `x`, as `[1]`, in an order the shape fixes.
/// burn's `float_sum` adds its cubes' partial sums with atomics (its
/// `OneShot` strategy), in an order that changes from run to run: the
/// loss of a step and the gradient norm that clipping reads would differ
/// in their last bits between two runs of one command, and a resumed run
/// would not retrace the run it continues (`wgpu_resumes_exactly` in
/// `runtime/tests/device.rs` saw a step's loss 1 ulp apart). An empty `x`
/// (nothing to order) is burn's sum, 0.
pub(super) fn sum_all<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let strategy = match x.meta.shape().num_elements() {
        0 => SumStrategy::default(),
        _ => SumStrategy::Chained(KernelReduceStrategy::Unspecified),
    };
    sum_fallback(x, strategy).unwrap_or_else(|e| unreachable!("a reduction of every entry has a valid shape: {e:?}"))
}

/// The launch of `n` units, one per row or element.
pub(super) fn units<R: CubeRuntime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (cubecl::calculate_cube_count_elemwise(client, n, dim), dim)
}

/// `t` contiguous, in its own memory when nothing else holds it, else in a
/// copy: a buffer a kernel may write over.
pub(super) fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    if t.can_mut() && t.is_contiguous_buffer() {
        t
    } else {
        t.copy()
    }
}

/// An uninitialised f32 tensor of `shape` on `like`'s device.
pub(super) fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: impl Into<Shape>) -> CubeTensor<R> {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape.into(), DType::F32)
}

/// The launch of one cube per row for `rows` rows of `width` entries: the
/// count, the cube, and its number of units (a power of two, at most 256
/// and the device's limit, and no more than `width` needs).
pub(super) fn row_cubes<R: CubeRuntime>(
    client: &ComputeClient<R>,
    rows: usize,
    width: usize,
) -> (CubeCount, CubeDim, usize) {
    let limit = (client.properties().hardware.max_units_per_cube as usize).clamp(1, 256);
    let limit = 1 << limit.ilog2();
    let block = width.next_power_of_two().clamp(1, limit);
    let count = cubecl::calculate_cube_count_elemwise(client, rows, CubeDim::new_single());
    (count, CubeDim::new_1d(block as u32), block)
}

/// The sum of `value` over the `block` units of a cube (a power of two),
/// through `shared` (`block` entries), returned to every unit; `shared` may
/// be used again after.
#[cube]
pub(super) fn cube_sum<F: Float>(shared: &mut SharedMemory<F>, value: F, #[comptime] block: usize) -> F {
    let u = UNIT_POS as usize;
    shared[u] = value;
    sync_cube();
    let mut stride = block.runtime() / 2;
    while stride > 0 {
        if u < stride {
            shared[u] = shared[u] + shared[u + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The end of the chunk of `chunk` rows from `first`, within `rows`.
#[cube]
pub(super) fn chunk_end(first: usize, #[comptime] chunk: usize, rows: usize) -> usize {
    let mut last = first + chunk;
    if last > rows {
        last = rows;
    }
    last
}

/// The first key that query `i` sees: `reach` (a window less one, or
/// the length: no window) before it, or the first.
#[cube]
pub(super) fn first_key(i: usize, reach: usize) -> usize {
    let mut first = 0;
    if i > reach {
        first = i - reach;
    }
    first
}

/// The end of the keys (of `tokens`) that query `i` sees: past itself
/// under a causal mask, else `reach` after it or the last (the
/// attention family's `Keys::range`).
#[cube]
pub(super) fn keys_end(i: usize, tokens: usize, reach: usize, #[comptime] causal: bool) -> usize {
    let mut end = tokens;
    if causal {
        if i < tokens {
            end = i + 1;
        }
    } else if i + reach + 1 < tokens {
        end = i + reach + 1;
    }
    end
}

/// The logit of a score `s`: `scale · s`, soft-capped to `cap · tanh(scale
/// · s / cap)` when `capped` (the attention family's `Scores`).
#[cube]
pub(super) fn logit<F: Float>(s: F, scale: F, cap: F, #[comptime] capped: bool) -> F {
    let mut z = s * scale;
    if capped {
        z = F::tanh(z / cap) * cap;
    }
    z
}

/// The slope of a soft-cap at the logit `z` it gave: `1 − (z / cap)²` when
/// `capped`, else 1 (the logit's slope over `scale`).
#[cube]
pub(super) fn cap_slope<F: Float>(z: F, cap: F, #[comptime] capped: bool) -> F {
    let mut slope = F::new(1.0);
    if capped {
        let t = z / cap;
        slope = F::new(1.0) - t * t;
    }
    slope
}

/// ALiBi's slope of head `h` of `heads` (`blkc::graph::alibi_slopes`):
/// `2^(−8 (h + 1) / n)` for the first `n` heads, `n` the largest power of
/// two in `heads`, and `2^(−4 (2 (h − n) + 1) / n)` (every other slope of
/// `2n` heads) for the rest.
#[cube]
pub(super) fn alibi_slope<F: Float>(h: usize, heads: usize) -> F {
    let mut n = 1usize;
    while n * 2 <= heads {
        n *= 2;
    }
    let mut e = F::cast_from(h + 1) * F::new(-8.0) / F::cast_from(n);
    if h >= n {
        e = F::cast_from(2 * (h - n) + 1) * F::new(-4.0) / F::cast_from(n);
    }
    F::powf(F::new(2.0), e)
}

/// Head `h`'s ALiBi slope when `alibi` ([`alibi_slope`]), else 0.
#[cube]
pub(super) fn slope_of<F: Float>(h: usize, heads: usize, #[comptime] alibi: bool) -> F {
    let mut m = F::new(0.0);
    if alibi {
        m = alibi_slope::<F>(h, heads);
    }
    m
}

/// Query `i`'s logit `z` of key `j` less ALiBi's distance `slope · |i −
/// j|` when `alibi` (the attention family's `Scores`: after the cap).
#[cube]
pub(super) fn distanced<F: Float>(z: F, slope: F, i: usize, j: usize, #[comptime] alibi: bool) -> F {
    let mut x = z;
    if alibi {
        if i >= j {
            x = z - slope * F::cast_from(i - j);
        } else {
            x = z - slope * F::cast_from(j - i);
        }
    }
    x
}

/// The log-sum-exp of the `len` entries of a row from `start`, returned to
/// every unit of the cube (`block` units, a power of two) ([`row_lse`] of
/// the entries as they are).
#[cube]
pub(super) fn plain_lse<F: Float>(x: &Tensor<F>, start: usize, len: usize, #[comptime] block: usize) -> F {
    row_lse::<F>(x, start, len, F::new(1.0), F::new(1.0), F::new(0.0), 0usize, 0usize, false, false, block)
}

/// The log-sum-exp of query `i`'s logits ([`logit`], then [`distanced`]:
/// `scale`, `cap`, `slope`) of the `len` entries from `start` (a row's keys
/// from `first`), returned to every unit of the cube (`block` units, a
/// power of two): each unit's share with a running maximum, then merged
/// pairwise.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn row_lse<F: Float>(
    x: &Tensor<F>,
    start: usize,
    len: usize,
    scale: F,
    cap: F,
    slope: F,
    i: usize,
    first: usize,
    #[comptime] capped: bool,
    #[comptime] alibi: bool,
    #[comptime] block: usize,
) -> F {
    let u = UNIT_POS as usize;
    let mut m = F::min_value();
    let mut l = F::new(0.0);
    let mut c = u;
    while c < len {
        let e = distanced::<F>(logit::<F>(x[start + c], scale, cap, capped), slope, i, first + c, alibi);
        let top = F::max(m, e);
        l = l * F::exp(m - top) + F::exp(e - top);
        m = top;
        c += block;
    }
    let mut tops = SharedMemory::<F>::new(block);
    let mut sums = SharedMemory::<F>::new(block);
    tops[u] = m;
    sums[u] = l;
    sync_cube();
    let mut stride = block.runtime() / 2;
    while stride > 0 {
        if u < stride {
            let (m1, m2) = (tops[u], tops[u + stride]);
            let top = F::max(m1, m2);
            sums[u] = sums[u] * F::exp(m1 - top) + sums[u + stride] * F::exp(m2 - top);
            tops[u] = top;
        }
        sync_cube();
        stride /= 2;
    }
    let lse = tops[0] + F::ln(sums[0]);
    sync_cube();
    lse
}
