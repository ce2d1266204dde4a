//! The buffers and rows the CPU kernels work in: outputs allocated and
//! not zeroed (`filled`, `Dst`), token-major layouts, row blocks, and the
//! tensors made from them.

use super::*;

/// A tensor's f32 elements, owned, contiguous and unique (copied only
/// when they are not already), to be rewritten in place.
pub(super) struct Rows {
    pub(super) tensor: FlexTensor,
}

impl Rows {
    pub(super) fn new(t: FlexTensor) -> Self {
        let owned = t.is_unique() && t.layout().contiguous_offsets().is_some_and(|(start, _)| start == 0);
        Rows { tensor: if owned { t } else { t.to_contiguous() } }
    }

    /// All the elements.
    pub(super) fn all(&mut self) -> &mut [f32] {
        let n = self.tensor.layout().num_elements();
        &mut self.tensor.storage_mut::<f32>()[..n]
    }

    /// The length of the last dimension (at least 1).
    pub(super) fn width(&self) -> usize {
        let shape = self.tensor.layout().shape();
        shape.last().copied().unwrap_or(1).max(1)
    }

    /// Calls `f` on every consecutive run of `len` elements (a sequence of
    /// a `[batch, tokens, width]` tensor), on several threads when large.
    pub(super) fn for_each_sequence<F: Fn(&mut [f32]) + Sync>(&mut self, len: usize, f: F) {
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            data.par_chunks_mut(len.max(1)).for_each(&f);
        } else {
            data.chunks_mut(len.max(1)).for_each(f);
        }
    }

    /// Calls `f(r, row)` on every row (last dimension) of the tensor, on
    /// several threads when the work is large.
    pub(super) fn for_each<F: Fn(usize, &mut [f32]) + Sync>(&mut self, f: F) {
        let width = self.width();
        let n = self.tensor.layout().num_elements();
        let data = &mut self.tensor.storage_mut::<f32>()[..n];
        if n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
            data.par_chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        } else {
            data.chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
        }
    }
}

/// A ReLU's mask of bits from [`Kernels::dense_relu`] (`[rows,
/// ceil(cols / 32)]` words) for the gradient `dy: [rows, cols]`,
/// contiguous, and its words per row; `None` when `y` is not such a mask
/// (then it is the ReLU's output).
pub(super) fn relu_mask(y: &FlexTensor, dy: &FlexTensor) -> Option<(FlexTensor, usize)> {
    if y.dtype() != DType::U32 {
        return None;
    }
    let (m, d) = (y.layout().shape(), dy.layout().shape());
    let fits = m.num_dims() == 2 && d.num_dims() == 2 && m[0] == d[0] && m[1] == d[1].div_ceil(32);
    assert!(fits && dy.dtype() == DType::F32, "a ReLU mask {m:?} for a gradient {d:?} it was not made for");
    Some((y.to_contiguous(), m[1]))
}

/// `a · b` for `a: [rows, k]` (contiguous) and an operand `b` (`k × n`),
/// by blocks of 128 rows on several threads when large; each block's
/// output (`m × n`, its first row `first`) is given to `then(first,
/// block)` while it is in cache. Returns the output and what `then`
/// returned for each block, in order.
pub(super) fn product_by_blocks<T: Send>(
    a: &[f32],
    [rows, k, n]: [usize; 3],
    b: Operand,
    then: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    const BLOCK: usize = 128;
    let clock = AtomicU64::new(0);
    let block = |(i, out): (usize, &mut [MaybeUninit<f32>])| -> T {
        let (first, m) = (i * BLOCK, out.len() / n.max(1));
        let ao = Operand { ptr: a[first * k..].as_ptr(), rs: k as isize, cs: 1 };
        // SAFETY: `a`'s rows `first..first + m` lie in `a`, `b`'s elements
        // in their storage (the caller's operand); `out` is this block's
        // `m × n` (row stride `n`), all written by the product before it
        // is read.
        let out = unsafe {
            product([m, n, k], out.as_mut_ptr().cast(), n, None, ao, b, &clock);
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), m * n)
        };
        then(first, out)
    };
    let mut out: Vec<f32> = Vec::with_capacity(rows * n);
    let spare = &mut out.spare_capacity_mut()[..rows * n];
    let chunk = (BLOCK * n).max(1);
    let parallel = rows * n >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1;
    let parts: Vec<T> = match parallel {
        true => spare.par_chunks_mut(chunk).enumerate().map(block).collect(),
        false => spare.chunks_mut(chunk).enumerate().map(block).collect(),
    };
    commit(&clock, if parallel { rayon::current_num_threads().min(parts.len()) } else { 1 });
    // SAFETY: every block's product wrote all its elements.
    unsafe { out.set_len(rows * n) };
    (out, parts)
}

/// The sums of `parts` (each `n` long, or shorter), in f64.
pub(super) fn totals<'a>(parts: impl IntoIterator<Item = &'a [f32]>, n: usize) -> Vec<f32> {
    let mut total = vec![0.0f64; n];
    for part in parts {
        total.iter_mut().zip(part).for_each(|(t, &x)| *t += f64::from(x));
    }
    total.into_iter().map(|x| x as f32).collect()
}

/// Calls `f(r, row, acc)` on every row of `data` (rows of `cols`) and
/// returns the column sums `f` adds into `acc`: in f32 over blocks of 64
/// rows, the blocks' in f64; on several threads when large.
pub(super) fn column_blocks(
    data: &mut [f32],
    cols: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
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
    let sums = if data.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        data.par_chunks_mut(chunk).enumerate().map(block).reduce(|| vec![0.0; cols], add)
    } else {
        data.chunks_mut(chunk).enumerate().map(block).fold(vec![0.0; cols], add)
    };
    sums.into_iter().map(|v| v as f32).collect()
}

/// An integer tensor's values as indices (i32 or i64 storage), or `None`
/// for other dtypes; negative values become 0.
pub(super) fn indices(t: &FlexTensor) -> Option<Vec<usize>> {
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
pub(super) fn columns(g: &FlexTensor, width: usize) -> Option<Vec<f32>> {
    let n = g.layout().num_elements();
    if g.dtype() != DType::F32 || n == 0 || width == 0 || !width.is_multiple_of(n) {
        return None;
    }
    let g = g.to_contiguous();
    let values: &[f32] = &g.storage()[..n];
    Some((0..width).map(|j| values[j / (width / n)]).collect())
}

/// A fresh buffer of `len` elements, `fill(i, chunk)` called on its
/// consecutive chunks of `chunk` elements (on several threads when large).
///
/// # Safety
/// `fill` must write every element of the chunk it is given.
pub(super) unsafe fn filled<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if len >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
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
pub(super) unsafe fn token_major(mut data: Vec<f32>, [b, h, t, w]: [usize; 4]) -> FlexTensor {
    // SAFETY: as the caller promises.
    unsafe { data.set_len(b * h * t * w) };
    let strides = vec![(t * h * w) as isize, w as isize, (h * w) as isize, 1];
    FlexTensor::new(burn::tensor::Bytes::from_elems(data), Layout::new([b, h, t, w].into(), strides, 0), DType::F32)
}

/// A contiguous f32 tensor of `shape` owning `v`.
pub(super) fn owned(v: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::new(burn::tensor::Bytes::from_elems(v), Layout::contiguous(shape), DType::F32)
}

/// A block of rows of a row kernel: its output, its input and one value
/// per row.
pub(super) type RowBlock<'a> = ((&'a mut [MaybeUninit<f32>], &'a [f32]), &'a mut [f32]);

/// A `[rows, cols]` f32 tensor.
pub(super) fn matrix(v: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    owned(v, [rows, cols].into())
}

/// A `[n]` f32 tensor.
pub(super) fn vector(v: Vec<f32>) -> FlexTensor {
    let n = v.len();
    owned(v, [n].into())
}

pub(super) fn dims3(x: &FlexTensor) -> [usize; 3] {
    let s = x.layout().shape();
    [s[0], s[1], s[2]]
}

/// The start of each matrix of a `[..., rows, cols]` layout, in elements,
/// in row-major order of the leading dimensions.
pub(super) fn matrix_offsets(layout: &Layout) -> Vec<isize> {
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

/// The output pointer of a product, shared by the threads that write
/// disjoint matrices of it.
#[derive(Clone, Copy)]
pub(super) struct Dst(pub(super) *mut f32);

// SAFETY: each thread writes only the matrix of its own batch index; the
// matrices are disjoint (see `matmul`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The pointer `offset` elements further.
    ///
    /// # Safety
    /// `offset` must lie within the allocation `self` points into.
    pub(super) unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: as the caller promises.
        unsafe { self.0.add(offset) }
    }
}
