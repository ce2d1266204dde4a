//! The kernels on burn's `flex` CPU backend, for f32 (other dtypes take
//! burn's own ops).
//!
//! Matrix products call `gemm` straight into an output that is allocated
//! and not zeroed: flex 0.21 allocates a product's output zeroed and then
//! copies it once more to realign it (`FlexTensor::empty`), which cost 19 %
//! of a step of the small model (perf: `memcpy`, `memset`, page clearing
//! under `matmul_gemm`).

use burn::backend::Flex;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::Kernels;

/// Products of fewer multiply-adds than this run on one thread.
const PARALLEL_WORK: usize = 192 * 192 * 192;

impl Kernels for Flex {
    fn matmul(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        matmul(a, b).unwrap_or_else(|(a, b)| Flex::float_matmul(a, b))
    }
}

/// The start of each matrix of a `[..., rows, cols]` layout, in elements,
/// in row-major order of the leading dimensions.
fn matrix_offsets(layout: &Layout) -> Vec<isize> {
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

/// `a · b` by `gemm`, or the operands back when this kernel does not apply
/// (not f32, ranks or leading dimensions differ, an empty dimension).
#[allow(clippy::result_large_err)]
fn matmul(a: FlexTensor, b: FlexTensor) -> Result<FlexTensor, (FlexTensor, FlexTensor)> {
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
        && sb.num_elements() > 0;
    if !usable {
        return Err((a, b));
    }
    let (m, k, n) = (sa[rank - 2], sa[rank - 1], sb[rank - 1]);
    let (oa, ob) = (matrix_offsets(la), matrix_offsets(lb));
    let (a_rs, a_cs) = (la.strides()[rank - 2], la.strides()[rank - 1]);
    let (b_rs, b_cs) = (lb.strides()[rank - 2], lb.strides()[rank - 1]);
    let (da, db): (&[f32], &[f32]) = (a.storage(), b.storage());
    let batch = oa.len();
    let mut out: Vec<f32> = Vec::with_capacity(batch * m * n);
    let one = |dst: *mut f32, i: usize, par: gemm::Parallelism| {
        // SAFETY: `oa[i]`, `ob[i]` and the strides come from the operands'
        // own layouts, so every element gemm reads (`offset + r·rs + c·cs`
        // for r < m or k, c < k or n) lies inside their storage; `dst`
        // points at `m·n` writable elements of `out`'s spare capacity,
        // disjoint between calls, and `read_dst = false` means gemm writes
        // every one of them and reads none.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                da.as_ptr().offset(oa[i]),
                a_cs,
                a_rs,
                db.as_ptr().offset(ob[i]),
                b_cs,
                b_rs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            );
        }
    };
    let work = m * n * k;
    let spare = &mut out.spare_capacity_mut()[..batch * m * n];
    if batch > 1 && work < PARALLEL_WORK && rayon::current_num_threads() > 1 {
        spare
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, c)| one(c.as_mut_ptr().cast(), i, gemm::Parallelism::None));
    } else {
        let par = if work >= PARALLEL_WORK { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        for (i, c) in spare.chunks_mut(m * n).enumerate() {
            one(c.as_mut_ptr().cast(), i, par);
        }
    }
    // SAFETY: the loop above wrote all `batch·m·n` elements.
    unsafe { out.set_len(batch * m * n) };
    let mut shape = sa.clone();
    shape[rank - 1] = n;
    Ok(FlexTensor::new(burn::tensor::Bytes::from_elems(out), Layout::contiguous(shape), DType::F32))
}
