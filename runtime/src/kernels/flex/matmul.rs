//! Matrix products through `gemm`, into outputs that are not zeroed, and
//! the clock of the time spent in them.

use super::*;

/// `dst ← a · b`, or with `add = Some(s)` `dst ← dst + s · a · b`, for one
/// `[m, n, k]` product on this thread, `dst` row-major with row stride
/// `dst_rs`; the time inside gemm is added to `clock` (nanoseconds).
///
/// # Safety
/// `a`'s `m × k` and `b`'s `k × n` elements (at `ptr + r·rs + c·cs`) lie in
/// live f32 memory; `dst`'s `m × n` elements (at `dst + r·dst_rs + c`) are
/// writable, touched by no other thread meanwhile, and initialised with
/// `add`.
pub(super) unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    add: Option<f32>,
    a: Operand,
    b: Operand,
    clock: &AtomicU64,
) {
    let read_dst = add.is_some();
    let start = Instant::now();
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            if read_dst { 1.0f32 } else { 0.0f32 },
            add.unwrap_or(1.0),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    clock.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Adds the products' time of a kernel whose heads ran on `threads`
/// threads to the product clock: their summed time divided by the
/// threads, the wall time they took when the threads' products overlap
/// (exact on one thread).
pub(super) fn commit(clock: &AtomicU64, threads: usize) {
    PRODUCT_NANOS.fetch_add(clock.load(Ordering::Relaxed) / threads.max(1) as u64, Ordering::Relaxed);
}

/// What a product's output starts as.
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
