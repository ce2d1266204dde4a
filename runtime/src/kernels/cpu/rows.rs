//! The rows the CPU kernels work in: a tensor's elements to rewrite in
//! place, row blocks with their column sums, gains per column, and the
//! tensors made from plain vectors.

use burn::tensor::DType;
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::parallel;

/// A tensor's f32 elements, owned, contiguous and unique (copied only
/// when they are not already), to be rewritten in place.
#[derive(Debug)]
pub struct Rows {
    pub tensor: FlexTensor,
}

impl Rows {
    pub fn new(t: FlexTensor) -> Self {
        let owned = t.is_unique() && t.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
        Rows { tensor: if owned { t } else { t.to_contiguous() } }
    }

    /// All the elements.
    pub fn all(&mut self) -> &mut [f32] {
        let n = self.tensor.layout().num_elements();
        &mut self.tensor.storage_mut::<f32>()[..n]
    }

    /// The length of the last dimension (at least 1).
    pub fn width(&self) -> usize {
        let shape = self.tensor.layout().shape();
        shape.last().copied().unwrap_or(1).max(1)
    }

    /// Calls `f` on every consecutive run of `len` elements (a sequence of
    /// a `[batch, tokens, width]` tensor), on several threads when large.
    pub fn for_each_sequence<F: Fn(&mut [f32]) + Sync>(&mut self, len: usize, f: F) {
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if parallel(n) {
            data.par_chunks_mut(len.max(1)).for_each(&f);
        } else {
            data.chunks_mut(len.max(1)).for_each(f);
        }
    }

    /// Calls `f(r, row)` on every row (last dimension) of the tensor, on
    /// several threads when the work is large.
    pub fn for_each<F: Fn(usize, &mut [f32]) + Sync>(&mut self, f: F) {
        let width = self.width();
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if parallel(n) {
            data.par_chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        } else {
            data.chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        }
    }
}

/// The sums of `parts` (each `n` long, or shorter), in f64.
pub fn totals<'a>(parts: impl IntoIterator<Item = &'a [f32]>, n: usize) -> Vec<f32> {
    let mut total = vec![0.0f64; n];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, &x)| *t += f64::from(x));
    }
    total.into_iter().map(|x| x as f32).collect()
}

/// Calls `f(r, row, acc)` on every row of `data` (rows of `cols`) and
/// returns the column sums `f` adds into `acc`: in f32 over blocks of 64
/// rows, the blocks' in f64; on several threads when large.
pub fn column_blocks(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync) -> Vec<f32> {
    let chunk = 64 * cols.max(1);
    let block = |(i, d): (usize, &mut [f32])| {
        let mut acc = vec![0.0f32; cols];
        for (j, row) in d.chunks_mut(cols.max(1)).enumerate() {
            f(i * 64 + j, row, &mut acc);
        }
        acc.into_iter().map(f64::from).collect::<Vec<f64>>()
    };
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        a
    };
    let sums = if parallel(data.len()) {
        data.par_chunks_mut(chunk).enumerate().map(block).reduce(|| vec![0.0; cols], add)
    } else {
        data.chunks_mut(chunk).enumerate().map(block).fold(vec![0.0; cols], add)
    };
    sums.into_iter().map(|v| v as f32).collect()
}

/// The sums of `n` groups of consecutive elements of `col` (a gain's
/// gradient from its per-column or per-head sums): `[n]`.
pub fn group_sums(col: &[f64], n: usize) -> FlexTensor {
    let per = col.len() / n.max(1);
    vector(col.chunks(per.max(1)).map(|g| g.iter().sum::<f64>() as f32).collect())
}

/// An integer tensor's values as indices (i32 or i64 storage), or `None`
/// for other dtypes; negative values become 0.
pub fn indices(t: &FlexTensor) -> Option<Vec<usize>> {
    let t = t.to_contiguous();
    let n = t.layout().num_elements();
    match t.dtype() {
        DType::I32 => Some(t.storage::<i32>()[..n].iter().map(|&i| i.max(0) as usize).collect()),
        DType::I64 => Some(t.storage::<i64>()[..n].iter().map(|&i| i.max(0) as usize).collect()),
        _ => None,
    }
}

/// A gain `[n]` as one value per column of a `width`-wide last dimension
/// (group `j / (width / n)`), or `None` (not f32, `n` does not divide).
pub fn columns(g: &FlexTensor, width: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || width == 0 || !width.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..width).map(|j| values[j / (width / n)]).collect())
}

/// A gain `[n]` as one value per head, or `None` unless `n` divides the
/// heads (each group of columns whole heads).
pub fn per_head(g: &FlexTensor, heads: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || !heads.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..heads).map(|i| values[i / (heads / n)]).collect())
}

/// A contiguous f32 tensor of `shape` owning `v`.
pub fn owned(v: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(v), Layout::contiguous(shape), DType::F32)
}

/// A `[rows, cols]` f32 tensor.
pub fn matrix(v: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    owned(v, [rows, cols].into())
}

/// A `[n]` f32 tensor.
pub fn vector(v: Vec<f32>) -> FlexTensor {
    let n = v.len();
    owned(v, [n].into())
}

pub fn dims3(x: &FlexTensor) -> [usize; 3] {
    let s = x.layout().shape();
    [s[0], s[1], s[2]]
}

/// A `[b, h, t, w]` f32 tensor stored token-major (`[b, t, h, w]` in
/// memory, as the heads' products write it).
pub fn token_major(data: Vec<f32>, [b, h, t, w]: [usize; 4]) -> FlexTensor {
    let strides = vec![(t * h * w) as isize, w as isize, (h * w) as isize, 1];
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::new([b, h, t, w].into(), strides, 0), DType::F32)
}
