//! Matrices for the kernels that run products head by head: operands
//! checked to lie in their storage when made ([`Mat`]), disjoint views of
//! one output that several threads write ([`MatMut`], [`MatOut`] when not
//! yet written), and [`Gemm`], the products, whose clock it keeps.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::out::{Fresh, Out, Written};

/// Nanoseconds spent inside `gemm` by the products of this process.
static PRODUCT_NANOS: AtomicU64 = AtomicU64::new(0);

/// Wall time spent inside `gemm` by this backend's matrix products since
/// the process started (the products' calls, not the setting up of their
/// outputs). Burn runs a step's operations one after another, so the
/// difference of two readings around a step is the step's time in
/// products, however many threads each product uses.
pub fn product_time() -> Duration {
    Duration::from_nanos(PRODUCT_NANOS.load(Ordering::Relaxed))
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

/// A matrix to read: `rows × cols` elements at `start + r·rs + c·cs` of
/// `data`, every one inside it (checked when made).
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    ptr: *const f32,
    dims: [usize; 2],
    strides: [isize; 2],
    life: PhantomData<&'a [f32]>,
}

// SAFETY: a `Mat` only reads elements that nothing writes while it lives
// (its borrow), so threads may share it.
unsafe impl Send for Mat<'_> {}
unsafe impl Sync for Mat<'_> {}

impl<'a> Mat<'a> {
    /// The matrix at `start` of `data`; panics if an element lies outside.
    pub fn new(data: &'a [f32], start: usize, dims: [usize; 2], strides: [isize; 2]) -> Self {
        let [rows, cols] = dims;
        if rows > 0 && cols > 0 {
            let far = |n: usize, s: isize| (n as isize - 1) * s;
            let (lo, hi) = [(rows, strides[0]), (cols, strides[1])]
                .iter()
                .fold((start as isize, start as isize), |(lo, hi), &(n, s)| {
                    (lo + far(n, s).min(0), hi + far(n, s).max(0))
                });
            assert!(
                lo >= 0 && (hi as usize) < data.len(),
                "a matrix {dims:?} at {start} outside {} elements",
                data.len()
            );
        }
        Mat { ptr: data[start.min(data.len())..].as_ptr(), dims, strides, life: PhantomData }
    }

    /// `rows × cols` row-major from the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, [rows, cols], [cols as isize, 1])
    }

    /// Rows `rows` and columns `cols` of this matrix.
    pub fn block(self, rows: Range<usize>, cols: Range<usize>) -> Self {
        let [r, c] = self.dims;
        assert!(rows.start <= rows.end && rows.end <= r && cols.start <= cols.end && cols.end <= c);
        let at = rows.start as isize * self.strides[0] + cols.start as isize * self.strides[1];
        // SAFETY: the block's elements are this matrix's (checked above),
        // which lie in its storage; a block with no element offsets by
        // less than one past them.
        let ptr = if rows.is_empty() || cols.is_empty() { self.ptr } else { unsafe { self.ptr.offset(at) } };
        Mat { ptr, dims: [rows.len(), cols.len()], ..self }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        let ([r, c], [rs, cs]) = (self.dims, self.strides);
        Mat { dims: [c, r], strides: [cs, rs], ..self }
    }

    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }
}

/// The matrices of a `[..., rows, cols]` f32 tensor (`batch · heads` of a
/// `[batch, heads, rows, cols]` one), from its own layout.
#[derive(Debug)]
pub struct Heads<'a> {
    data: &'a [f32],
    starts: Vec<isize>,
    dims: [usize; 2],
    strides: [isize; 2],
}

impl<'a> Heads<'a> {
    pub fn new(x: &'a FlexTensor) -> Self {
        let l = x.layout();
        let (s, st, r) = (l.shape(), l.strides(), l.num_dims());
        Heads {
            data: x.storage(),
            starts: matrix_offsets(l),
            dims: [s[r - 2], s[r - 1]],
            strides: [st[r - 2], st[r - 1]],
        }
    }

    /// How many matrices.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Matrix `i`.
    pub fn at(&self, i: usize) -> Mat<'a> {
        Mat::new(self.data, self.starts[i] as usize, self.dims, self.strides)
    }
}

/// A matrix of written elements to rewrite: `rows × cols` at `r·rs + c`
/// from `ptr`, which no other view touches.
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    dims: [usize; 2],
    rs: usize,
    life: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `MatMut` is the only view of its elements (the functions that
// make several make them disjoint), so it may move to another thread.
unsafe impl Send for MatMut<'_> {}

/// Disjoint views of `data` as `[b, t, h, w]` (token-major): its `b · h`
/// matrices `t × w` with row stride `h · w`, in (batch, head) order.
fn heads_of(ptr: *mut f32, len: usize, [b, h, t, w]: [usize; 4]) -> Vec<(*mut f32, [usize; 2], usize)> {
    assert!(len >= b * t * h * w, "{len} elements for [{b}, {t}, {h}, {w}]");
    // SAFETY: matrix (i, j) starts at `i·t·h·w + j·w`, inside `data` (its
    // last element `+ (t−1)·h·w + w − 1` too), and the matrices are
    // disjoint: column blocks `j·w..(j+1)·w` of the rows of sequence `i`.
    (0..b * h).map(|n| (unsafe { ptr.add((n / h) * t * h * w + (n % h) * w) }, [t, w], h * w)).collect()
}

impl<'a> MatMut<'a> {
    /// All of `data` as one `rows × cols` row-major matrix.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "{} elements for {rows} × {cols}", data.len());
        MatMut { ptr: data.as_mut_ptr(), dims: [rows, cols], rs: cols, life: PhantomData }
    }

    /// `data` as `[b, t, h, w]` split into its heads (see `heads_of`).
    pub fn heads(data: &'a mut [f32], dims: [usize; 4]) -> Vec<Self> {
        let views = heads_of(data.as_mut_ptr(), data.len(), dims);
        views.into_iter().map(|(ptr, dims, rs)| MatMut { ptr, dims, rs, life: PhantomData }).collect()
    }

    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// All the elements, when the view is contiguous (its row stride its
    /// width).
    pub fn all(&mut self) -> &mut [f32] {
        assert_eq!(self.rs, self.dims[1], "a contiguous view");
        // SAFETY: the view's `rows · cols` elements are contiguous (row
        // stride = width), written, and touched by no other view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.dims[0] * self.dims[1]) }
    }

    /// Row `r`.
    pub fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.dims[0], "row {r} of {}", self.dims[0]);
        // SAFETY: row `r` is `cols` elements at `r·rs` of this view, which
        // no other view touches, all written.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.rs), self.dims[1]) }
    }

    /// Rows `rows` and columns `cols` of this view, as a view of its own
    /// while it lives (for this module: its elements may not be written
    /// yet).
    fn sub(&mut self, rows: Range<usize>, cols: Range<usize>) -> MatMut<'_> {
        let [r, c] = self.dims;
        assert!(rows.start <= rows.end && rows.end <= r && cols.start <= cols.end && cols.end <= c);
        let ptr = match rows.is_empty() || cols.is_empty() {
            true => self.ptr,
            // SAFETY: element (rows.start, cols.start) is this view's.
            false => unsafe { self.ptr.add(rows.start * self.rs + cols.start) },
        };
        MatMut { ptr, dims: [rows.len(), cols.len()], rs: self.rs, life: PhantomData }
    }

    /// Zeros into columns `cols` of rows `rows`, written or not before.
    fn zero(&mut self, rows: Range<usize>, cols: Range<usize>) {
        let sub = self.sub(rows, cols);
        for r in 0..sub.dims[0] {
            // SAFETY: row `r` of the block is `cols.len()` elements at
            // `r·rs` of it, this view's alone; writing needs no reads.
            unsafe { std::ptr::write_bytes(sub.ptr.add(r * sub.rs), 0, sub.dims[1]) };
        }
    }

    /// The view as an operand (read while it is not written).
    pub fn mat(&self) -> Mat<'_> {
        // This view's elements, written, and not written while borrowed.
        Mat { ptr: self.ptr, dims: self.dims, strides: [self.rs as isize, 1], life: PhantomData }
    }
}

/// A matrix of a [`Fresh`] output, not yet written, that a product writes
/// whole.
#[derive(Debug)]
pub struct MatOut<'a> {
    view: MatMut<'a>,
    proof: Written,
}

impl Fresh {
    /// The output as `[b, t, h, w]` (token-major) split into its heads.
    pub fn heads(&mut self, dims: [usize; 4]) -> Vec<MatOut<'_>> {
        let (spare, proofs) = self.hand_out(dims[0] * dims[1]);
        let views = heads_of(spare.as_mut_ptr().cast(), spare.len(), dims);
        let out = views.into_iter().zip(proofs);
        out.map(|((ptr, dims, rs), proof)| MatOut { view: MatMut { ptr, dims, rs, life: PhantomData }, proof })
            .collect()
    }

    /// The output as `[rows, cols]` row-major in blocks of `block` rows
    /// (the last may have fewer).
    pub fn blocks(&mut self, [rows, cols]: [usize; 2], block: usize) -> Vec<MatOut<'_>> {
        let n = rows.div_ceil(block.max(1));
        let (spare, proofs) = self.hand_out(n);
        assert!(spare.len() >= rows * cols, "{} elements for {rows} × {cols}", spare.len());
        let out = spare[..rows * cols].chunks_mut((block * cols).max(1)).zip(proofs);
        let view = |m: &mut [std::mem::MaybeUninit<f32>]| {
            let dims = [m.len() / cols.max(1), cols];
            MatMut { ptr: m.as_mut_ptr().cast(), dims, rs: cols, life: PhantomData }
        };
        out.map(|(m, proof)| MatOut { view: view(m), proof }).collect()
    }

    /// The output as `n` consecutive `rows × cols` row-major matrices.
    pub fn matrices(&mut self, n: usize, [rows, cols]: [usize; 2]) -> Vec<MatOut<'_>> {
        let (spare, proofs) = self.hand_out(n);
        assert!(spare.len() >= n * rows * cols, "{} elements for {n} × {rows} × {cols}", spare.len());
        let out = spare.chunks_mut((rows * cols).max(1)).zip(proofs);
        let view = |m: &mut [std::mem::MaybeUninit<f32>]| MatMut {
            ptr: m.as_mut_ptr().cast(),
            dims: [rows, cols],
            rs: cols,
            life: PhantomData,
        };
        out.map(|(m, proof)| MatOut { view: view(m), proof }).collect()
    }
}

impl MatOut<'_> {
    pub fn dims(&self) -> [usize; 2] {
        self.view.dims
    }
}

/// Where a matrix's entries may be nonzero: blocks of consecutive rows
/// from the first to the last, each with the columns its rows may hold
/// nonzeros in (attention's weights under a causal mask or a sliding
/// window: a band about the diagonal). The products that read or write
/// such a matrix visit those blocks alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    dims: [usize; 2],
    blocks: Vec<(Range<usize>, Range<usize>)>,
}

impl Band {
    /// A `rows × cols` matrix's band in blocks of `block` rows (the last
    /// may have fewer), the columns of block `r0..r1` being `cols(r0..r1)`.
    pub fn new(dims: [usize; 2], block: usize, cols: impl Fn(Range<usize>) -> Range<usize>) -> Band {
        let [rows, width] = dims;
        let step = block.clamp(1, rows.max(1));
        let blocks = (0..rows)
            .step_by(step)
            .map(|r0| {
                let rows = r0..(r0 + step).min(rows);
                let c = cols(rows.clone());
                assert!(c.start <= c.end && c.end <= width, "columns {c:?} of {width}");
                (rows, c)
            })
            .collect();
        Band { dims, blocks }
    }

    pub fn dims(&self) -> [usize; 2] {
        self.dims
    }

    /// The blocks of rows and their columns, first to last.
    pub fn blocks(&self) -> &[(Range<usize>, Range<usize>)] {
        &self.blocks
    }

    /// The band's entries, which its products compute, and which a
    /// matrix stored by its band ([`Banded`]) holds.
    pub fn entries(&self) -> usize {
        self.blocks.iter().map(|(r, c)| r.len() * c.len()).sum()
    }

    /// Each row, first to last, with its columns and where its entries lie
    /// in a matrix stored by the band ([`Banded`]).
    pub fn rows(&self) -> impl Iterator<Item = (usize, Range<usize>, Range<usize>)> + '_ {
        self.packed().flat_map(|(at, rows, cols)| {
            let w = cols.len();
            rows.clone().enumerate().map(move |(k, r)| (r, cols.clone(), at + k * w..at + (k + 1) * w))
        })
    }

    /// The blocks, each with where it starts in a matrix stored by the
    /// band: one after another, each row-major over its own columns.
    fn packed(&self) -> impl Iterator<Item = (usize, &Range<usize>, &Range<usize>)> + '_ {
        self.blocks.iter().scan(0, |at, (rows, cols)| {
            let start = *at;
            *at += rows.len() * cols.len();
            Some((start, rows, cols))
        })
    }
}

/// A matrix stored by its [`Band`] alone: the band's blocks one after
/// another, each row-major over its own columns ([`Band::rows`]), the
/// entries outside the band zero and not stored. What the CPU's attention
/// keeps of its weights: under a causal mask about half of `t × t`, under
/// a window a few blocks per row of blocks.
#[derive(Debug, Clone, Copy)]
pub struct Banded<'a> {
    data: &'a [f32],
    band: &'a Band,
}

impl<'a> Banded<'a> {
    /// The band's entries, from the start of `data`.
    pub fn new(data: &'a [f32], band: &'a Band) -> Self {
        let n = band.entries();
        assert!(data.len() >= n, "{} elements for a band of {n}", data.len());
        Banded { data: &data[..n], band }
    }

    /// Each row with its columns and its entries.
    pub fn rows(&self) -> impl Iterator<Item = (usize, Range<usize>, &'a [f32])> + 'a {
        let data = self.data;
        self.band.rows().map(move |(r, cols, at)| (r, cols, &data[at]))
    }

    /// The band's entries into `out`, the whole matrix row-major (its
    /// other entries untouched: zeros where `out` was).
    pub fn unpack_into(&self, out: &mut [f32]) {
        let n = self.band.dims[1];
        for (r, cols, row) in self.rows() {
            out[r * n + cols.start..r * n + cols.end].copy_from_slice(row);
        }
    }

    /// Each block's rows and columns (of the whole) and the block as a
    /// matrix of its own.
    fn blocks(&self) -> impl Iterator<Item = (Range<usize>, Range<usize>, Mat<'a>)> + 'a {
        let data = self.data;
        self.band
            .packed()
            .map(move |(at, rows, cols)| (rows.clone(), cols.clone(), Mat::rows(&data[at..], rows.len(), cols.len())))
    }
}

/// A [`Banded`] matrix to rewrite, its entries written.
#[derive(Debug)]
pub struct BandedMut<'a> {
    data: &'a mut [f32],
    band: &'a Band,
}

impl<'a> BandedMut<'a> {
    /// The band's entries, from the start of `data`.
    pub fn new(data: &'a mut [f32], band: &'a Band) -> Self {
        let n = band.entries();
        assert!(data.len() >= n, "{} elements for a band of {n}", data.len());
        BandedMut { data: &mut data[..n], band }
    }

    /// The matrix as an operand (read while it is not written).
    pub fn view(&self) -> Banded<'_> {
        Banded { data: self.data, band: self.band }
    }

    /// Each row with its columns and its entries, to rewrite.
    pub fn rows(&mut self) -> impl Iterator<Item = (usize, Range<usize>, &mut [f32])> + '_ {
        let mut rest: &mut [f32] = self.data;
        self.band.rows().map(move |(r, cols, at)| {
            let (row, tail) = std::mem::take(&mut rest).split_at_mut(at.len());
            rest = tail;
            (r, cols, row)
        })
    }
}

/// Where the threads of a kernel's products go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threads {
    /// Across its items (heads, sequences, blocks), each product on one.
    Items,
    /// To each product in turn (a few large ones).
    Inside,
    /// One thread for all.
    One,
}

/// The matrix products of one kernel, timed: what a head (or a sequence)
/// of a kernel run by [`Gemm::map`] is given.
#[derive(Debug)]
pub struct Gemm {
    nanos: AtomicU64,
    inside: bool,
}

impl Gemm {
    /// `f(i, items[i], gemm)` for every item, on several threads when
    /// there are; their products' time added to the product clock (their
    /// sum divided by the threads: the wall time when the threads'
    /// products overlap, exact on one). Returns what each call returned.
    pub fn map<U: Send, T: Send>(items: Vec<U>, f: impl Fn(usize, U, &Gemm) -> T + Sync + Send) -> Vec<T> {
        Self::map_with(Threads::Items, items, f)
    }

    /// [`Gemm::map`] with the threads where `threads` says.
    pub fn map_with<U: Send, T: Send>(
        threads: Threads,
        items: Vec<U>,
        f: impl Fn(usize, U, &Gemm) -> T + Sync + Send,
    ) -> Vec<T> {
        let gemm = Gemm { nanos: AtomicU64::new(0), inside: threads == Threads::Inside };
        let n = items.len();
        let threads = match threads {
            Threads::Items => rayon::current_num_threads().min(n).max(1),
            Threads::Inside | Threads::One => 1,
        };
        let out = match threads > 1 {
            true => items.into_par_iter().enumerate().map(|(i, u)| f(i, u, &gemm)).collect(),
            false => items.into_iter().enumerate().map(|(i, u)| f(i, u, &gemm)).collect(),
        };
        PRODUCT_NANOS.fetch_add(gemm.nanos.load(Ordering::Relaxed) / threads as u64, Ordering::Relaxed);
        out
    }

    /// `dst ← a · b`, or with `add = Some(s)` `dst ← dst + s · a · b`.
    pub fn product(&self, dst: &mut MatMut<'_>, add: Option<f32>, a: Mat<'_>, b: Mat<'_>) {
        let ([m, k], [k2, n]) = (a.dims, b.dims);
        assert!(k == k2 && dst.dims == [m, n], "a product {:?} · {:?} into {:?}", a.dims, b.dims, dst.dims);
        let start = Instant::now();
        // SAFETY: `a` and `b` lie in their storage (checked when made);
        // `dst` is `m × n` writable elements at `r·rs + c` that no other
        // view touches, written (gemm reads them only with `add`).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.ptr,
                1,
                dst.rs as isize,
                add.is_some(),
                a.ptr,
                a.strides[1],
                a.strides[0],
                b.ptr,
                b.strides[1],
                b.strides[0],
                if add.is_some() { 1.0f32 } else { 0.0f32 },
                add.unwrap_or(1.0),
                false,
                false,
                false,
                if self.inside { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None },
            );
        }
        self.nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// `a · b` on `band` into the band's blocks at `ptr` (see
    /// [`Banded`]), every entry of the band written and none read.
    ///
    /// # Safety
    ///
    /// `ptr` points to `band.entries()` writable elements that no other
    /// view touches.
    unsafe fn banded_product(&self, ptr: *mut f32, band: &Band, a: Mat<'_>, b: Mat<'_>) {
        let k = a.dims[1];
        assert!(
            band.dims == [a.dims[0], b.dims[1]] && b.dims[0] == k,
            "a band {:?} of {:?} · {:?}",
            band.dims,
            a.dims,
            b.dims
        );
        for (at, rows, cols) in band.packed().filter(|(_, r, c)| !r.is_empty() && !c.is_empty()) {
            // SAFETY: the block's `rows × cols` elements start at `at` of
            // the band's entries (`band.packed`), all at `ptr` (the
            // caller's promise), and no other block's.
            let mut dst = MatMut {
                ptr: unsafe { ptr.add(at) },
                dims: [rows.len(), cols.len()],
                rs: cols.len(),
                life: PhantomData,
            };
            self.product(&mut dst, None, a.block(rows.clone(), 0..k), b.block(0..k, cols.clone()));
        }
    }

    /// `out ← a · b` on `band` alone, stored by the band (see [`Banded`]):
    /// the matrix, written, and the proof.
    pub fn into_banded<'a>(&self, out: Out<'a>, a: Mat<'_>, b: Mat<'_>, band: &'a Band) -> (BandedMut<'a>, Written) {
        let (data, proof) = out.into_raw();
        assert_eq!(data.len(), band.entries(), "an output of the band's entries");
        // SAFETY: `data` is the band's entries, this `Out`'s alone.
        unsafe { self.banded_product(data.as_mut_ptr().cast(), band, a, b) };
        // SAFETY: the blocks cover the band's entries (`band.packed`: each
        // after the one before), each written whole by its product (gemm
        // writes every element of its output without `add`).
        let data = unsafe { &mut *(std::ptr::from_mut(data) as *mut [f32]) };
        (BandedMut { data, band }, proof)
    }

    /// `dst ← a · b` on `dst`'s band, every entry of it rewritten.
    pub fn product_banded(&self, dst: &mut BandedMut<'_>, a: Mat<'_>, b: Mat<'_>) {
        // SAFETY: `dst.data` holds the band's entries, borrowed mutably.
        unsafe { self.banded_product(dst.data.as_mut_ptr(), dst.band, a, b) };
    }

    /// `dst ← a · b`, or with `add = Some(s)` `dst ← dst + s · a · b`, for
    /// a banded `a`: each block of rows from its block's columns alone
    /// (the rows of a block with no columns zero, or as they were when
    /// adding).
    pub fn product_from_banded(&self, dst: &mut MatMut<'_>, add: Option<f32>, a: Banded<'_>, b: Mat<'_>) {
        let n = b.dims[1];
        assert!(a.band.dims == [dst.dims[0], b.dims[0]] && dst.dims[1] == n, "a band {:?} · {:?}", a.band.dims, b.dims);
        for (rows, cols, block) in a.blocks() {
            let mut dst = dst.sub(rows.clone(), 0..n);
            match cols.is_empty() {
                // No term: the sum is nothing, the added term zero.
                true if add.is_none() => dst.zero(0..rows.len(), 0..n),
                true => {}
                false => self.product(&mut dst, add, block, b.block(cols, 0..n)),
            }
        }
    }

    /// `out ← a · b` for a banded `a` (see [`Gemm::product_from_banded`]):
    /// the matrix, written, and the proof.
    pub fn into_from_banded<'a>(&self, out: MatOut<'a>, a: Banded<'_>, b: Mat<'_>) -> (MatMut<'a>, Written) {
        let MatOut { mut view, proof } = out;
        // Every row is in one block, each written whole (no `add`).
        self.product_from_banded(&mut view, None, a, b);
        (view, proof)
    }

    /// `dst ← aᵀ · b`, or with `add = Some(s)` `dst ← dst + s · aᵀ · b`,
    /// for a banded `a`: block by block, each adding its rows' part into
    /// the rows of `dst` that its columns name.
    pub fn product_from_banded_t(&self, dst: &mut MatMut<'_>, add: Option<f32>, a: Banded<'_>, b: Mat<'_>) {
        let ([m, k], n) = (a.band.dims, b.dims[1]);
        assert!(dst.dims == [k, n] && b.dims[0] == m, "a band {:?}ᵀ · {:?} into {:?}", a.band.dims, b.dims, dst.dims);
        if add.is_none() {
            dst.zero(0..k, 0..n);
        }
        let s = add.unwrap_or(1.0);
        for (rows, cols, block) in a.blocks().filter(|(r, c, _)| !r.is_empty() && !c.is_empty()) {
            self.product(&mut dst.sub(cols, 0..n), Some(s), block.t(), b.block(rows, 0..n));
        }
    }

    /// `out ← aᵀ · b` for a banded `a` (see
    /// [`Gemm::product_from_banded_t`]): the matrix, written, and the
    /// proof.
    pub fn into_from_banded_t<'a>(&self, out: MatOut<'a>, a: Banded<'_>, b: Mat<'_>) -> (MatMut<'a>, Written) {
        let MatOut { mut view, proof } = out;
        // Zeros first, then every block added (see above).
        self.product_from_banded_t(&mut view, None, a, b);
        (view, proof)
    }

    /// `out ← a · b`: the matrix, written, and the proof.
    pub fn into<'a>(&self, out: MatOut<'a>, a: Mat<'_>, b: Mat<'_>) -> (MatMut<'a>, Written) {
        let MatOut { mut view, proof } = out;
        // `dst` not yet written: gemm writes every element and reads none
        // without `add`.
        self.product(&mut view, None, a, b);
        (view, proof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers from a seed, spread about zero.
    fn numbers(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `a · b` (`m × k`, `k × n`, row-major), the plain way.
    fn product(a: &[f32], b: &[f32], [m, k, n]: [usize; 3]) -> Vec<f32> {
        (0..m * n).map(|c| (0..k).map(|l| a[c / n * k + l] * b[l * n + c % n]).sum()).collect()
    }

    fn inside(band: &Band, r: usize, c: usize) -> bool {
        band.blocks().iter().any(|(rows, cols)| rows.contains(&r) && cols.contains(&c))
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: entry {i}: {x} vs {y}");
        }
    }

    /// A band's blocks are its rows in order, each with its columns.
    #[test]
    fn a_band_partitions_its_rows() {
        let band = Band::new([10, 6], 4, |r| r.start / 2..r.end.min(6));
        let blocks: Vec<_> = band.blocks().to_vec();
        assert_eq!(blocks, vec![(0..4, 0..4), (4..8, 2..6), (8..10, 4..6)]);
        assert_eq!(band.entries(), 16 + 16 + 4);
        // Stored by the band: the blocks one after another, each row-major
        // over its own columns.
        let rows: Vec<_> = band.rows().collect();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[0], (0, 0..4, 0..4));
        assert_eq!(rows[3], (3, 0..4, 12..16));
        assert_eq!(rows[4], (4, 2..6, 16..20));
        assert_eq!(rows[9], (9, 4..6, 34..36));
        let whole = Band::new([3, 5], 7, |_| 0..5);
        assert_eq!(whole.blocks().to_vec(), vec![(0..3, 0..5)]);
    }

    /// The banded products equal the plain product masked to the band:
    /// into the band (stored by it), over an output not yet written and
    /// over a written one; from a banded left operand and from its
    /// transpose, fresh and added into; blocks whose columns are none
    /// among them.
    #[test]
    fn banded_products_are_the_masked_product() {
        let (m, k, n) = (23, 5, 19);
        let cols = |r: std::ops::Range<usize>| match r.start {
            8 => 3..3,
            s => s.saturating_sub(4).min(n)..(r.end + 2).min(n),
        };
        let band = Band::new([m, n], 4, cols);
        let e = band.entries();
        let (a, b) = (numbers(m * k, 1), numbers(k * n, 2));
        let full = product(&a, &b, [m, k, n]);
        let masked: Vec<f32> = (0..m * n).map(|c| if inside(&band, c / n, c % n) { full[c] } else { 0.0 }).collect();
        let gemm = Gemm { nanos: AtomicU64::new(0), inside: false };
        let (am, bm) = (Mat::rows(&a, m, k), Mat::rows(&b, k, n));
        // Into the band, over an output not written before.
        let mut out = Fresh::new(e);
        let (_, proof) = gemm.into_banded(out.parts(e).remove(0), am, bm, &band);
        let packed = out.finish([proof]);
        let mut whole = vec![0.0f32; m * n];
        Banded::new(&packed, &band).unpack_into(&mut whole);
        close(&whole, &masked, "into_banded");
        // Over a written one: every entry rewritten.
        let mut x = numbers(e, 3);
        gemm.product_banded(&mut BandedMut::new(&mut x, &band), am, bm);
        close(&x, &packed, "product_banded");
        // From the banded `masked` (`m × n`) times `n × k`, and from its
        // transpose (`n × m`) times `m × k`: fresh, and added into.
        let pb = Banded::new(&packed, &band);
        let masked_t: Vec<f32> = (0..n * m).map(|c| masked[(c % m) * n + c / m]).collect();
        for (transposed, left, [rows, inner], seed) in [(false, &masked, [m, n], 4), (true, &masked_t, [n, m], 6)] {
            let c = numbers(inner * k, seed);
            let (cm, want) = (Mat::rows(&c, inner, k), product(left, &c, [rows, inner, k]));
            let mut out = Fresh::new(rows * k);
            let fresh = out.matrices(1, [rows, k]).remove(0);
            let (_, proof) = match transposed {
                false => gemm.into_from_banded(fresh, pb, cm),
                true => gemm.into_from_banded_t(fresh, pb, cm),
            };
            close(&out.finish([proof]), &want, &format!("fresh, transposed {transposed}"));
            let mut y = numbers(rows * k, seed + 1);
            let added: Vec<f32> = y.iter().zip(&want).map(|(y, w)| y + 0.5 * w).collect();
            let dst = &mut MatMut::rows(&mut y, rows, k);
            match transposed {
                false => gemm.product_from_banded(dst, Some(0.5), pb, cm),
                true => gemm.product_from_banded_t(dst, Some(0.5), pb, cm),
            }
            close(&y, &added, &format!("added, transposed {transposed}"));
        }
    }
}
