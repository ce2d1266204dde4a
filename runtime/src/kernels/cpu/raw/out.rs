//! Outputs allocated and not zeroed, filled by kernels that write every
//! element.

use std::mem::MaybeUninit;

use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use crate::kernels::cpu::parallel;

/// A fresh buffer of `len` elements, `fill(i, chunk)` called on its
/// consecutive chunks of `chunk` elements (on several threads when large).
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub unsafe fn filled<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if parallel(len) {
        spare.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    } else {
        spare.chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the chunks cover all `len` elements, and the caller promises
    // that `fill` wrote each.
    unsafe { out.set_len(len) };
    out
}

/// A `[b, h, t, w]` f32 tensor stored token-major (`[b, t, h, w]` in
/// memory, as `matmul` stores a token-major product) owning `data`.
///
/// # Safety
/// All `b·h·t·w` elements of `data`'s capacity are written.
pub unsafe fn token_major(mut data: Vec<f32>, [b, h, t, w]: [usize; 4]) -> FlexTensor {
    // SAFETY: as the caller promises.
    unsafe { data.set_len(b * h * t * w) };
    let strides = vec![(t * h * w) as isize, w as isize, (h * w) as isize, 1];
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::new([b, h, t, w].into(), strides, 0), DType::F32)
}
