//! Matrix products through `gemm`, into outputs that are not zeroed, and
//! the clock of the time spent in them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::mat::{Gemm, Mat};
use super::out::{Fresh, Written};
use crate::kernels::cpu::parallel;

/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// Nanoseconds spent inside `gemm` by the products of this process.
pub(super) static PRODUCT_NANOS: AtomicU64 = AtomicU64::new(0);

/// Wall time spent inside `gemm` by this backend's matrix products since
/// the process started (the products' calls, not the setting up of their
/// outputs). Burn runs a step's operations one after another, so the
/// difference of two readings around a step is the step's time in
/// products, however many threads each product uses.
pub fn product_time() -> Duration {
    Duration::from_nanos(PRODUCT_NANOS.load(Ordering::Relaxed))
}

/// The output pointer of a product, shared by the threads that write
/// disjoint matrices of it.
#[derive(Debug, Clone, Copy)]
struct Dst(pub *mut f32);

// SAFETY: each thread writes only the matrix of its own batch index; the
// matrices are disjoint (see `matmul`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must lie within the allocation `self` points into.
    pub unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(offset) }
    }
}

/// The start of each matrix of a `[..., rows, cols]` layout, in elements,
/// in row-major order of the leading dimensions.
pub fn matrix_offsets(layout: &Layout) -> Vec<isize> {
    let dims = layout.num_dims();
    let lead = &layout.shape()[..dims - 2];
    let strides = &layout.strides()[..dims - 2];
    let count: usize = lead.iter().product();
    (0..count)
        .map(|mut i| {
            let mut offset = layout.start_offset() as isize;
            for (&n, &s) in lead.iter().zip(strides).rev() {
                offset += (i % n) as isize * s;
                i /= n;
            }
            offset
        })
        .collect()
}

/// `a · b` for `a: [rows, k]` (contiguous) and an operand `b` (`k × n`),
/// by blocks of 128 rows on several threads when large; each block's
/// output (`m × n`, its first row `first`) is given to `then(first,
/// block)` while it is in cache. Returns the output and what `then`
/// returned for each block, in order.
pub fn product_by_blocks<T: Send>(
    a: &[f32],
    [rows, k, n]: [usize; 3],
    b: Mat<'_>,
    then: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    const BLOCK: usize = 128;
    let mut out = Fresh::new(rows * n);
    let blocks = out.blocks([rows, n], BLOCK);
    let done = Gemm::map_if(parallel(rows * n), blocks, |i, block, gemm| {
        let (first, m) = (i * BLOCK, block.dims()[0]);
        let (mut y, proof) = gemm.into(block, Mat::rows(&a[first * k..], m, k), b);
        (proof, then(first, y.all()))
    });
    let (proofs, parts): (Vec<Written>, Vec<T>) = done.into_iter().unzip();
    (out.finish(proofs), parts)
}

/// What a product's output starts as.
#[derive(Debug)]
pub enum Start {
    /// Nothing: gemm writes every element.
    Zero,
    /// The tensor `c`, which the product is added into.
    Add(FlexTensor),
}

/// `a · b` by `gemm`, or the operands back when this kernel does not apply
/// (not f32, ranks or leading dimensions differ, an empty dimension).
///
/// With `token_major` (rank 4, `[batch, heads, tokens, n]`), the output is
/// stored as `[batch, tokens, heads, n]` — the strides of a head split — so
/// that merging the heads back (`swap_dims(1, 2)` then `reshape`) costs no
/// copy.
///
/// `init` can make the output a given tensor `c` (unique, contiguous, of
/// the output's shape, or for token-major of `[batch, tokens, heads · n]`)
/// that the product is added into — gemm's `read_dst`: the accumulation of
/// a gradient costs no pass of its own. When this kernel does not apply,
/// `c` comes back with the operands. (A bias is added after the product,
/// while its output is in cache: measured cheaper than writing the bias
/// rows for gemm to read.)
#[allow(clippy::result_large_err)]
pub fn matmul(
    a: FlexTensor,
    b: FlexTensor,
    token_major: bool,
    init: Start,
) -> Result<FlexTensor, (FlexTensor, FlexTensor, Option<FlexTensor>)> {
    let (la, lb) = (a.layout(), b.layout());
    let rank = la.num_dims();
    let (sa, sb) = (la.shape(), lb.shape());
    let usable = a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && rank >= 2
        && lb.num_dims() == rank
        && sa[..rank - 2] == sb[..rank - 2]
        && sa[rank - 1] == sb[rank - 2]
        && sa.num_elements() > 0
        && sb.num_elements() > 0
        && match &init {
            Start::Zero => true,
            Start::Add(c) => {
                // The output's shape, or for token-major `[batch, tokens,
                // heads · n]`, its layout in memory.
                let shape: Vec<usize> = if token_major {
                    vec![sa[0], sa[2], sa[1] * sb[3]]
                } else {
                    let mut shape = sa.to_vec();
                    shape[rank - 1] = sb[rank - 1];
                    shape
                };
                (!token_major || rank == 4)
                    && c.dtype() == DType::F32
                    && c.is_unique()
                    && c.layout().shape().as_slice() == shape.as_slice()
                    && c.layout().contiguous_offsets().is_some_and(|(s, _)| s == 0)
            }
        };
    if !usable {
        let c = match init {
            Start::Add(c) => Some(c),
            _ => None,
        };
        return Err((a, b, c));
    }
    let (m, k, n) = (sa[rank - 2], sa[rank - 1], sb[rank - 1]);
    let (oa, ob) = (matrix_offsets(la), matrix_offsets(lb));
    let (a_rs, a_cs) = (la.strides()[rank - 2], la.strides()[rank - 1]);
    let (b_rs, b_cs) = (lb.strides()[rank - 2], lb.strides()[rank - 1]);
    let (da, db): (&[f32], &[f32]) = (a.storage(), b.storage());
    let batch = oa.len();
    let mut shape = sa.clone();
    shape[rank - 1] = n;
    // Where matrix `i` of the output starts, its row stride, and the layout.
    let (start, out_rs, layout): (Box<dyn Fn(usize) -> usize + Sync>, usize, Layout) = if token_major && rank == 4 {
        let heads = sa[1];
        let strides = vec![(m * heads * n) as isize, n as isize, (heads * n) as isize, 1];
        (Box::new(move |i| (i / heads) * m * heads * n + (i % heads) * n), heads * n, Layout::new(shape, strides, 0))
    } else {
        (Box::new(move |i| i * m * n), n, Layout::contiguous(shape))
    };
    let read_dst = !matches!(init, Start::Zero);
    let (mut out, mut into): (Vec<f32>, Option<FlexTensor>) = match init {
        Start::Zero => (Vec::with_capacity(batch * m * n), None),
        Start::Add(c) => (Vec::new(), Some(c)),
    };
    let dst = match into.as_mut() {
        Some(c) => Dst(c.storage_mut::<f32>().as_mut_ptr()),
        None => Dst(out.as_mut_ptr()),
    };
    let one = |i: usize, par: gemm::Parallelism| {
        // SAFETY: `oa[i]`, `ob[i]` and the strides come from the operands'
        // own layouts, so every element gemm reads (`offset + r·rs + c·cs`
        // for r < m or k, c < k or n) lies inside their storage. Matrix `i`
        // of the output is the `m × n` elements at `start(i) + r·out_rs + c`,
        // inside the `batch·m·n` capacity of `out` and disjoint between
        // batch indices (both layouts are permutations of the elements);
        // `read_dst = false` means gemm writes every one of them, reads none;
        // with `read_dst` they are initialised (the bias rows, `out`'s
        // length; or the unique, contiguous `c` of the output's shape).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.at(start(i)),
                1,
                out_rs as isize,
                read_dst,
                da.as_ptr().offset(oa[i]),
                a_cs,
                a_rs,
                db.as_ptr().offset(ob[i]),
                b_cs,
                b_rs,
                if read_dst { 1.0f32 } else { 0.0f32 },
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    };
    let work = m * n * k;
    let clock = Instant::now();
    if batch > 1 && work < PARALLEL_WORK && rayon::current_num_threads() > 1 {
        (0..batch).into_par_iter().for_each(|i| one(i, gemm::Parallelism::None));
    } else {
        let par = if work >= PARALLEL_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        (0..batch).for_each(|i| one(i, par));
    }
    PRODUCT_NANOS.fetch_add(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if let Some(c) = into {
        if token_major && rank == 4 {
            // `c`'s memory seen as the `[batch, heads, tokens, n]` output.
            let heads = sa[1];
            return Ok(Flex::float_swap_dims(Flex::float_reshape(c, [sa[0], m, heads, n].into()), 1, 2));
        }
        return Ok(c);
    }
    if !read_dst {
        // SAFETY: the products above wrote all `batch·m·n` elements.
        unsafe { out.set_len(batch * m * n) };
    }
    Ok(FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout, DType::F32))
}
