//! The dense family's products on the CPU: `gemm` into outputs that are
//! not zeroed (or added into a gradient in place), by matrices of a batch
//! or by blocks of rows.

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::FlexTensor;

use crate::kernels::cpu::parallel;
use crate::kernels::cpu::raw::{Fresh, Gemm, Heads, Mat, MatMut, Threads, Written};
use crate::kernels::cpu::rows::{self, owned};

/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// What a product's output starts as.
#[derive(Debug)]
pub(super) enum Start {
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
pub(super) fn matmul(
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
    let (ma, mb) = (Heads::new(&a), Heads::new(&b));
    let batch = ma.len();
    let work = m * n * k;
    // Small products across the batch; a few large ones each on all threads.
    let threads = match (batch > 1 && work < PARALLEL_WORK, work >= PARALLEL_WORK) {
        (true, _) => Threads::Items,
        (false, true) => Threads::Inside,
        (false, false) => Threads::One,
    };
    let heads = sa[rank - 3.min(rank)];
    let mut shape = sa.clone();
    shape[rank - 1] = n;
    let by_heads = token_major && rank == 4;
    match init {
        Start::Zero => {
            let mut out = Fresh::new(batch * m * n);
            let views = match by_heads {
                true => out.heads([sa[0], heads, m, n]),
                false => out.matrices(batch, [m, n]),
            };
            let proofs = Gemm::map_with(threads, views, |i, v, gemm| gemm.into(v, ma.at(i), mb.at(i)).1);
            let data = out.finish(proofs);
            Ok(match by_heads {
                true => rows::token_major(data, [sa[0], heads, m, n]),
                false => owned(data, shape),
            })
        }
        Start::Add(mut c) => {
            let data = &mut c.storage_mut::<f32>()[..batch * m * n];
            let views = match by_heads {
                true => MatMut::heads(data, [sa[0], heads, m, n]),
                false => data.chunks_mut((m * n).max(1)).map(|x| MatMut::rows(x, m, n)).collect(),
            };
            Gemm::map_with(threads, views, |i, mut v, gemm| gemm.product(&mut v, Some(1.0), ma.at(i), mb.at(i)));
            Ok(match by_heads {
                // `c`'s memory seen as the `[batch, heads, tokens, n]` output.
                true => Flex::float_swap_dims(Flex::float_reshape(c, [sa[0], m, heads, n].into()), 1, 2),
                false => c,
            })
        }
    }
}

/// `a · b` for `a: [rows, k]` (contiguous) and an operand `b` (`k × n`),
/// by blocks of 128 rows on several threads when large; each block's
/// output (`m × n`, its first row `first`) is given to `then(first,
/// block)` while it is in cache. Returns the output and what `then`
/// returned for each block, in order.
pub(super) fn product_by_blocks<T: Send>(
    a: &[f32],
    [rows, k, n]: [usize; 3],
    b: Mat<'_>,
    then: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    const BLOCK: usize = 128;
    let mut out = Fresh::new(rows * n);
    let blocks = out.blocks([rows, n], BLOCK);
    let threads = if parallel(rows * n) { Threads::Items } else { Threads::One };
    let done = Gemm::map_with(threads, blocks, |i, block, gemm| {
        let (first, m) = (i * BLOCK, block.dims()[0]);
        let (mut y, proof) = gemm.into(block, Mat::rows(&a[first * k..], m, k), b);
        (proof, then(first, y.all()))
    });
    let (proofs, parts): (Vec<Written>, Vec<T>) = done.into_iter().unzip();
    (out.finish(proofs), parts)
}
