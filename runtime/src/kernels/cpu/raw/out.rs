//! Outputs allocated and not zeroed, filled by kernels that write every
//! element.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::kernels::cpu::parallel;

/// Proof that one part of a [`Fresh`] output (or one row of an [`Out`])
/// was written whole: what the functions that hand out parts ask back,
/// one per part, before the output is read.
#[must_use]
#[derive(Debug)]
pub struct Written {
    id: u64,
    index: usize,
}

/// The source of the ids that tie a proof to its output.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Elements of a fresh output, not yet written, that whoever holds them
/// writes whole: each of its methods writes every element and returns
/// their [`Written`].
#[derive(Debug)]
pub struct Out<'a> {
    data: &'a mut [MaybeUninit<f32>],
    proof: Written,
}

impl<'a> Out<'a> {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Its elements, not yet written, and its proof: for the products of
    /// this module that write them whole.
    pub(super) fn into_raw(self) -> (&'a mut [MaybeUninit<f32>], Written) {
        (self.data, self.proof)
    }

    /// Element `j` ← `f(j)`, for every `j` in order.
    #[inline(always)]
    pub fn each(self, mut f: impl FnMut(usize) -> f32) -> Written {
        for (j, o) in self.data.iter_mut().enumerate() {
            o.write(f(j));
        }
        self.proof
    }

    /// ← `src`, as long.
    #[inline(always)]
    pub fn copy(self, src: &[f32]) -> Written {
        assert_eq!(self.data.len(), src.len(), "a copy of as many elements");
        for (o, &s) in self.data.iter_mut().zip(src) {
            o.write(s);
        }
        self.proof
    }

    /// ← `src`, as long, with stores that bypass the cache (see
    /// [`super::stream`]); [`super::fence`] before another thread reads it.
    pub fn stream(self, src: &[f32]) -> Written {
        assert_eq!(self.data.len(), src.len(), "a copy of as many elements");
        super::stream(self.data, src);
        self.proof
    }

    /// Its rows of `width` (the last may be shorter), each written by
    /// `f(r, row)`: first to last, or last to first with `rev`.
    #[inline(always)]
    pub fn rows(self, width: usize, rev: bool, mut f: impl FnMut(usize, Out<'_>) -> Written) -> Written {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let rows = self.data.chunks_mut(width.max(1)).enumerate();
        let mut one = |(r, row): (usize, &mut [MaybeUninit<f32>])| {
            let w = f(r, Out { data: row, proof: Written { id, index: r } });
            assert!(w.id == id && w.index == r, "row {r} proved by its own");
        };
        match rev {
            true => rows.rev().for_each(&mut one),
            false => rows.for_each(&mut one),
        }
        self.proof
    }

    /// Its rows of `width` (the last may be shorter) as `Out`s of their
    /// own, to write in any order, and what joins their proofs into its.
    pub fn split(self, width: usize) -> (Vec<Out<'a>>, Join<'a>) {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (ptr, len) = (self.data.as_mut_ptr(), self.data.len());
        let rows: Vec<Out<'a>> = self
            .data
            .chunks_mut(width.max(1))
            .enumerate()
            .map(|(index, data)| Out { data, proof: Written { id, index } })
            .collect();
        let join = Join { ptr, len, id, count: rows.len(), proof: self.proof, life: std::marker::PhantomData };
        (rows, join)
    }
}

/// What joins the proofs of an [`Out`]'s rows (see [`Out::split`]) into
/// its own.
#[derive(Debug)]
pub struct Join<'a> {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    id: u64,
    count: usize,
    proof: Written,
    life: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Join<'a> {
    /// The split `Out`'s proof and its elements, now written, once every
    /// row proved it was written.
    pub fn join(self, proofs: impl IntoIterator<Item = Written>) -> (Written, &'a mut [f32]) {
        let mut seen = vec![false; self.count];
        for w in proofs {
            assert!(w.id == self.id && !seen[w.index], "each row proved once");
            seen[w.index] = true;
        }
        assert!(seen.iter().all(|&s| s), "every row proved written");
        // SAFETY: the rows cover the `len` elements at `ptr` (the split
        // `Out`'s, borrowed for `'a`), each proved written whole; the
        // rows' `Out`s are spent (a proof comes from consuming one).
        let data = unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<f32>(), self.len) };
        (self.proof, data)
    }
}

// SAFETY: a `Join` is the only way back to its `Out`'s elements.
unsafe impl Send for Join<'_> {}

/// An output of `len` elements allocated and not zeroed, handed out in
/// parts (once) and read only when every part proved it was written.
#[derive(Debug)]
pub struct Fresh {
    data: Vec<f32>,
    len: usize,
    id: u64,
    parts: Option<usize>,
}

impl Fresh {
    pub fn new(len: usize) -> Self {
        Fresh { data: Vec::with_capacity(len), len, id: NEXT.fetch_add(1, Ordering::Relaxed), parts: None }
    }

    /// The elements, to be split into `n` parts, and the parts' proofs.
    pub(super) fn hand_out(&mut self, n: usize) -> (&mut [MaybeUninit<f32>], Vec<Written>) {
        assert!(self.parts.is_none(), "a fresh output is handed out once");
        self.parts = Some(n);
        let id = self.id;
        (&mut self.data.spare_capacity_mut()[..self.len], (0..n).map(|index| Written { id, index }).collect())
    }

    /// The output as consecutive parts of `chunk` elements (the last may
    /// be shorter).
    pub fn parts(&mut self, chunk: usize) -> Vec<Out<'_>> {
        let n = self.len.div_ceil(chunk.max(1));
        let (data, proofs) = self.hand_out(n);
        data.chunks_mut(chunk.max(1)).zip(proofs).map(|(data, proof)| Out { data, proof }).collect()
    }

    /// The elements, once every part handed out proved it was written.
    pub fn finish(mut self, proofs: impl IntoIterator<Item = Written>) -> Vec<f32> {
        let n = self.parts.expect("the parts were handed out");
        let mut seen = vec![false; n];
        for w in proofs {
            assert!(w.id == self.id && !seen[w.index], "each part of this output proved once");
            seen[w.index] = true;
        }
        assert!(seen.iter().all(|&s| s), "every part of the output proved written");
        // SAFETY: the parts cover the `len` elements, and each proved it
        // was written whole.
        unsafe { self.data.set_len(self.len) };
        self.data
    }
}

/// A fresh output of `len` elements whose consecutive chunks of `chunk`
/// elements `fill(i, chunk, along[i])` writes (on several threads when
/// large), with what each call returned beside its proof. `along` holds
/// one item per chunk (e.g. the chunk's part of another output).
pub fn fresh_along<U, T, F>(len: usize, chunk: usize, along: Vec<U>, fill: F) -> (Vec<f32>, Vec<T>)
where
    U: Send,
    T: Send,
    F: Fn(usize, Out<'_>, U) -> (Written, T) + Sync,
{
    let mut out = Fresh::new(len);
    let parts = out.parts(chunk);
    assert_eq!(along.len(), parts.len(), "one item per chunk");
    let one = |(i, (o, u)): (usize, (Out<'_>, U))| fill(i, o, u);
    let work: Vec<_> = parts.into_iter().zip(along).collect();
    let done: Vec<(Written, T)> = match parallel(len) {
        true => work.into_par_iter().enumerate().map(one).collect(),
        false => work.into_iter().enumerate().map(one).collect(),
    };
    let (proofs, items): (Vec<Written>, Vec<T>) = done.into_iter().unzip();
    (out.finish(proofs), items)
}

/// [`fresh_along`] without the items.
pub fn fresh<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, Out<'_>) -> Written + Sync,
{
    let along = vec![(); len.div_ceil(chunk.max(1))];
    fresh_along(len, chunk, along, |i, out, ()| (fill(i, out), ())).0
}
