//! The loops of the CPU kernels, on slices, each compiled for three
//! instruction sets — AVX-512, AVX2 + FMA, and baseline x86-64 — with the
//! widest this CPU runs chosen at run time ([`multiversion!`]). The crate
//! is built for baseline x86-64, where these loops would be 4-lane SSE and
//! a float-to-int cast, element by element; here they are 16-lane.
//!
//! Reductions keep [`LANES`] partial sums (vectors of independent chains
//! instead of one chain of dependent additions, which no compiler may
//! reorder); their order is fixed by the source, so every instruction set
//! gives the same result, bit for bit.

use std::mem::MaybeUninit;

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
            Level::Avx512
        } else if has!("avx2") && has!("fma") {
            Level::Avx2
        } else {
            Level::Baseline
        }
    })
}

/// `fn name(args) -> ret { body }`, the body compiled once per [`Level`]
/// (inlined into a function with that level's target features) and the
/// widest this CPU runs called.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match level() {
                    // SAFETY: `level` found these features on this CPU.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

mod mix;
pub use mix::*;

/// Partial sums of the reductions.
const LANES: usize = 32;

/// `Σ f(x)` over `xs`, in [`LANES`] partial sums.
#[inline(always)]
fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    tail + fold_lanes(acc, |a, b| a + b)
}

/// The [`LANES`] partial results folded pairwise, the upper half onto the
/// lower five times over: a fixed order (the same bits on every instruction
/// set) of a few vector operations, rather than a chain of 31 dependent
/// scalar ones, which dominated short rows (attention's).
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] = f(acc[i], acc[i + n]);
        }
    }
    acc[0]
}

/// `Σ f(a, b)` over pairs, in [`LANES`] partial sums.
#[inline(always)]
fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += f(x, y);
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    tail + fold_lanes(acc, |a, b| a + b)
}

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    sum_map(xs, |x| x)
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_zip(a, b, |x, y| x * y)
}

/// The largest element (−∞ for none).
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.max(x);
        }
    }
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    tail.max(fold_lanes(acc, f32::max))
}

/// `eˣ` in operations that vectorise: `x` clamped to [−87.3, 88] (2ⁿ stays
/// a normal number), split as `x = n·ln 2 + r` with |r| ≤ ln 2 / 2 (ln 2 in
/// two parts), `eʳ = 1 + r + r²·P(r)` with `P` the degree-5 minimax
/// polynomial of Cephes' `expf` (two multiply-adds fewer than the Taylor
/// polynomial of the same accuracy), `2ⁿ` written into the exponent bits
/// with integer operations. Within 2 ulp of `f32::exp`; below −87.3 it
/// returns ≈ 1.2·10⁻³⁸.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer, held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    // The exponent field n + 127 (in 1..=254 after the clamp): `t`'s bits
    // are those of 1.5·2²³ plus n, and the shift drops all but n + 127.
    let bits = t.to_bits().wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

/// Asks the processor to bring the cache lines of `xs` in ahead of use: a
/// hint, without effect on any result. For streams the hardware prefetcher
/// does not follow, such as rows taken last to first.
#[inline(always)]
pub fn prefetch(xs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in xs.chunks(16) {
        // SAFETY: a prefetch reads nothing architecturally and cannot
        // fault; the address lies within `xs`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xs;
}

/// Copies `src` into `dst` (the shorter's length) with stores that bypass
/// the cache: no read of the destination's lines first (the
/// read-for-ownership a plain store makes), for an output written once
/// here and read by another kernel later. [`fence`] before it is read.
pub fn stream(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        // Plain stores up to a 16-byte boundary and after the last whole
        // group of four.
        let head = dst.as_ptr().align_offset(16).min(n);
        let body = head + (n - head) / 4 * 4;
        for (d, &s) in dst[..head].iter_mut().zip(&src[..head]) {
            d.write(s);
        }
        for i in (head..body).step_by(4) {
            // SAFETY: `i + 3 < n`; `dst + i` is 16-byte aligned (`head`
            // aligns it, steps of four f32 keep it so).
            unsafe { _mm_stream_ps(dst.as_mut_ptr().add(i).cast(), _mm_loadu_ps(src.as_ptr().add(i))) };
        }
        for (d, &s) in dst[body..].iter_mut().zip(&src[body..]) {
            d.write(s);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Orders the [`stream`] stores of this thread before its later stores:
/// what makes them visible to a thread that learns of them afterwards.
pub fn fence() {
    // SAFETY: SSE, which `_mm_sfence` needs, is part of x86-64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

multiversion! {
    /// `out ← row (+ pos)`, every element of `out` written (`row` and
    /// `pos` are at least as long).
    pub fn embed_row(out: &mut [MaybeUninit<f32>], row: &[f32], pos: Option<&[f32]>) {
        match pos {
            Some(pos) => {
                for ((o, &a), &b) in out.iter_mut().zip(row).zip(pos) {
                    o.write(a + b);
                }
            }
            None => {
                for (o, &a) in out.iter_mut().zip(row) {
                    o.write(a);
                }
            }
        }
    }
}

multiversion! {
    /// `dst ← dst + src`.
    pub fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// `dst ← dst + s · x`.
    pub fn add_scaled(dst: &mut [f32], s: f32, x: &[f32]) {
        for (d, &x) in dst.iter_mut().zip(x) {
            *d += s * x;
        }
    }
}

multiversion! {
    /// `row ← row ⊙ g` (gains per column).
    pub fn scale_in_place(row: &mut [f32], g: &[f32]) {
        for (y, &g) in row.iter_mut().zip(g) {
            *y *= g;
        }
    }
}

multiversion! {
    /// One row of a gained sum: `out ← ga ⊙ a + gb ⊙ b` (gains per column;
    /// every element of `out` written).
    pub fn sum2_row(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], ga: &[f32], gb: &[f32]) {
        for ((y, (&a, &b)), (&p, &q)) in out.iter_mut().zip(a.iter().zip(b)).zip(ga.iter().zip(gb)) {
            y.write(p * a + q * b);
        }
    }
}

multiversion! {
    /// `acc[j] += a[j] · b[j]`.
    pub fn add_products(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
            *s += x * y;
        }
    }
}

multiversion! {
    /// `out ← g ⊙ dy` (gains per column; every element of `out` written).
    pub fn scale_cols(out: &mut [MaybeUninit<f32>], dy: &[f32], g: &[f32]) {
        for ((o, &d), &g) in out.iter_mut().zip(dy).zip(g) {
            o.write(g * d);
        }
    }
}

multiversion! {
    /// `max(v, 0)` in place.
    pub fn relu(row: &mut [f32]) {
        row.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

multiversion! {
    /// `max(v + b, 0)` in place (`b` per column).
    pub fn bias_relu(row: &mut [f32], b: &[f32]) {
        for (v, &b) in row.iter_mut().zip(b) {
            *v = (*v + b).max(0.0);
        }
    }
}

/// One word of a ReLU row (see [`relu_bits`]): up to 32 values, the bias
/// as `b(i)`; returns the mask's bits.
#[inline(always)]
fn relu_word(c: &mut [f32], b: impl Fn(usize) -> f32) -> u32 {
    let mut m = 0u32;
    for (i, v) in c.iter_mut().enumerate() {
        let x = *v + b(i);
        let on = x > 0.0;
        *v = if on { x } else { 0.0 };
        m |= u32::from(on) << i;
    }
    m
}

/// One ReLU row (see [`relu_bits`]), the bias as `b(column)`: whole words
/// as fixed-size loops, then the rest.
#[inline(always)]
fn relu_bits_with(row: &mut [f32], bits: &mut [u32], b: impl Fn(usize) -> f32) {
    let full = row.len() / 32;
    let mut words = row.chunks_exact_mut(32);
    for (w, (c, word)) in (&mut words).zip(bits.iter_mut()).enumerate() {
        let c: &mut [f32; 32] = c.try_into().expect("chunks of 32");
        *word = relu_word(c, |i| b(w * 32 + i));
    }
    if let Some(word) = bits.get_mut(full) {
        *word = relu_word(words.into_remainder(), |i| b(full * 32 + i));
    }
}

multiversion! {
    /// `max(v (+ b), 0)` in place (`b` per column), and bit `j % 32` of
    /// `bits[j / 32]` set where column `j`'s result is positive: the mask
    /// of its gradient (`bits` holds `row.len().div_ceil(32)` words).
    pub fn relu_bits(row: &mut [f32], b: Option<&[f32]>, bits: &mut [u32]) {
        match b {
            Some(b) => relu_bits_with(row, bits, |j| b[j]),
            None => relu_bits_with(row, bits, |_| 0.0),
        }
    }
}

/// Up to 32 values of a ReLU's gradient masked by the word `m`, each
/// result passed to `keep(i, value)`.
#[inline(always)]
fn grad_word(c: &mut [f32], m: u32, mut keep: impl FnMut(usize, f32)) {
    for (i, x) in c.iter_mut().enumerate() {
        *x = if (m >> i) & 1 != 0 { *x } else { 0.0 };
        keep(i, *x);
    }
}

/// One row of a ReLU's gradient from its mask (see [`relu_grad_bits`]),
/// each result passed to `keep(column, value)`: whole words as fixed-size
/// loops, then the rest.
#[inline(always)]
fn grad_bits_with(d: &mut [f32], bits: &[u32], mut keep: impl FnMut(usize, f32)) {
    let full = d.len() / 32;
    let mut words = d.chunks_exact_mut(32);
    for (w, (c, &m)) in (&mut words).zip(bits).enumerate() {
        let c: &mut [f32; 32] = c.try_into().expect("chunks of 32");
        grad_word(c, m, |i, x| keep(w * 32 + i, x));
    }
    if let Some(&m) = bits.get(full) {
        grad_word(words.into_remainder(), m, |i, x| keep(full * 32 + i, x));
    }
}

multiversion! {
    /// `d ← d` where the mask's bit is set (see [`relu_bits`]), else 0.
    pub fn relu_grad_bits(d: &mut [f32], bits: &[u32]) {
        grad_bits_with(d, bits, |_, _| {});
    }
}

multiversion! {
    /// [`relu_grad_bits`], the result also added into `sums` (per column).
    pub fn relu_grad_bits_sum(d: &mut [f32], bits: &[u32], sums: &mut [f32]) {
        let sums = &mut sums[..d.len()];
        grad_bits_with(d, bits, |j, x| sums[j] += x);
    }
}

multiversion! {
    /// `d ← d` where `y > 0`, else 0.
    pub fn relu_grad(d: &mut [f32], y: &[f32]) {
        for (d, &v) in d.iter_mut().zip(y) {
            *d = if v > 0.0 { *d } else { 0.0 };
        }
    }
}

multiversion! {
    /// [`relu_grad`], the result also added into `sums` (per column).
    pub fn relu_grad_sum(d: &mut [f32], y: &[f32], sums: &mut [f32]) {
        for ((d, &v), s) in d.iter_mut().zip(y).zip(sums) {
            *d = if v > 0.0 { *d } else { 0.0 };
            *s += *d;
        }
    }
}

multiversion! {
    /// Group `i` of `row` (groups of `inner`) times `gains[i]`, in place.
    pub fn scale_groups(row: &mut [f32], gains: &[f32], inner: usize) {
        for (part, &gain) in row.chunks_mut(inner.max(1)).zip(gains) {
            part.iter_mut().for_each(|v| *v *= gain);
        }
    }
}

multiversion! {
    /// `acc[i] += Σ a ⊙ b` over group `i` of every row (rows of `width`,
    /// groups of `inner`).
    pub fn group_dots(a: &[f32], b: &[f32], width: usize, inner: usize, acc: &mut [f64]) {
        for (ra, rb) in a.chunks(width.max(1)).zip(b.chunks(width.max(1))) {
            for (i, (pa, pb)) in ra.chunks(inner.max(1)).zip(rb.chunks(inner.max(1))).enumerate() {
                acc[i] += dot(pa, pb) as f64;
            }
        }
    }
}

multiversion! {
    /// The running mean over the rows (of `width`) of one sequence, in place.
    pub fn running_mean(seq: &mut [f32], width: usize) {
        let mut acc = vec![0.0f32; width];
        for (i, row) in seq.chunks_mut(width.max(1)).enumerate() {
            let inv = 1.0 / (i + 1) as f32;
            for (a, v) in acc.iter_mut().zip(row.iter_mut()) {
                *a += *v;
                *v = *a * inv;
            }
        }
    }
}

multiversion! {
    /// The gradient of [`running_mean`] in place: row `s` becomes
    /// `Σ_{i ≥ s} row[i] / (i + 1)`.
    pub fn running_mean_backward(seq: &mut [f32], width: usize) {
        let mut acc = vec![0.0f32; width];
        for (i, row) in seq.chunks_mut(width.max(1)).enumerate().rev() {
            let inv = 1.0 / (i + 1) as f32;
            for (a, v) in acc.iter_mut().zip(row.iter_mut()) {
                *a += *v * inv;
                *v = *a;
            }
        }
    }
}

/// The constants of an Adam(W) update, in f32 (see `kernels::AdamStep`).
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    /// `lr / (1 − β₁ᵗ)`.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// `1 / (1 − β₂ᵗ)`.
    pub inv_bc2: f32,
    pub grad_scale: f32,
    pub l2: f32,
    /// `1 − decay`.
    pub keep: f32,
}

multiversion! {
    /// One Adam(W) update of the parameters `p` and moments `m`, `v` from
    /// the gradient `g`, in place.
    pub fn adam(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: Adam) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = g * k.grad_scale + k.l2 * *p;
            *m = k.beta1 * *m + (1.0 - k.beta1) * g;
            *v = k.beta2 * *v + (1.0 - k.beta2) * g * g;
            *p = *p * k.keep - k.lr * *m / ((*v * k.inv_bc2).sqrt() + k.eps);
        }
    }
}

multiversion! {
    /// RMSNorm (`centred = false`) or LayerNorm of one row `x` into `out`
    /// (every element written): `(x − mean?) · rstd ⊙ gamma (+ beta)`;
    /// returns `rstd`.
    pub fn norm(
        out: &mut [MaybeUninit<f32>],
        x: &[f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
        centred: bool,
    ) -> f32 {
        let width = x.len().max(1) as f32;
        let mean = if centred { sum(x) / width } else { 0.0 };
        let r = 1.0 / (sum_map(x, |v| (v - mean) * (v - mean)) / width + eps).sqrt();
        match beta {
            Some(beta) => {
                for (((y, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                    y.write((v - mean) * r * g + b);
                }
            }
            None => {
                for ((y, &v), &g) in out.iter_mut().zip(x).zip(gamma) {
                    y.write((v - mean) * r * g);
                }
            }
        }
        r
    }
}

multiversion! {
    /// The gradients of [`norm`] for one row, `dx` in place over `dy`: with
    /// `g = dy ⊙ gamma`, `dx = r · (g − mean(g)? − x̂ · mean(g ⊙ x̂))`, plus
    /// `acc` when given. First adds `dy ⊙ x̂` and `dy` into the column sums
    /// `ds` and `db` (the scale's and the shift's gradients), in the pass
    /// that reads the row for `Σ g ⊙ x̂`.
    pub fn norm_backward(
        dy: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        r: f32,
        centred: bool,
        acc: Option<&[f32]>,
        sums: (&mut [f32], &mut [f32]),
    ) {
        let (ds, db) = sums;
        let width = x.len().max(1) as f32;
        let mean = if centred { sum(x) / width } else { 0.0 };
        let sum_g = if centred { dot(dy, gamma) } else { 0.0 };
        let n = dy.len().min(x.len()).min(gamma.len()).min(ds.len()).min(db.len());
        let (d, x, gamma, ds, db) = (&dy[..n], &x[..n], &gamma[..n], &mut ds[..n], &mut db[..n]);
        // Σ g ⊙ x̂ in [`LANES`] partial sums, the tail after them.
        let mut lanes = [0.0f32; LANES];
        let whole = n - n % LANES;
        let rows = d[..whole].chunks_exact(LANES).zip(x[..whole].chunks_exact(LANES)).zip(gamma[..whole].chunks_exact(LANES));
        for (((d, x), g), (s, b)) in rows.zip(ds[..whole].chunks_exact_mut(LANES).zip(db[..whole].chunks_exact_mut(LANES))) {
            for (k, a) in lanes.iter_mut().enumerate() {
                let xhat = (x[k] - mean) * r;
                *a += d[k] * g[k] * xhat;
                s[k] += d[k] * xhat;
                b[k] += d[k];
            }
        }
        let mut tail = 0.0f32;
        for j in whole..n {
            let xhat = (x[j] - mean) * r;
            tail += d[j] * gamma[j] * xhat;
            ds[j] += d[j] * xhat;
            db[j] += d[j];
        }
        let sum_gx = tail + fold_lanes(lanes, |a, b| a + b);
        let (mean_g, mean_gx) = (sum_g / width, sum_gx / width);
        match acc {
            Some(acc) => {
                for (((d, &g), &v), &a) in dy.iter_mut().zip(gamma).zip(x).zip(acc) {
                    let xhat = (v - mean) * r;
                    *d = r * (*d * g - mean_g - xhat * mean_gx) + a;
                }
            }
            None => {
                for ((d, &g), &v) in dy.iter_mut().zip(gamma).zip(x) {
                    let xhat = (v - mean) * r;
                    *d = r * (*d * g - mean_g - xhat * mean_gx);
                }
            }
        }
    }
}

multiversion! {
    /// `log Σ exp(row)`, shifted by the row's maximum.
    pub fn log_sum_exp(row: &[f32]) -> f32 {
        let m = max(row);
        m + sum_map(row, |x| exp(x - m)).ln()
    }
}

multiversion! {
    /// One row of the mean cross-entropy with its gradient, in place: the
    /// row becomes `(softmax(row) − onehot(target)) · inv_n`; returns the
    /// row's cross-entropy `log Σ exp(row) − row[target]`. One pass reads
    /// the row for its maximum; the others run in cache.
    pub fn cross_entropy_grad_row(row: &mut [f32], target: usize, inv_n: f32) -> f32 {
        let xt = row[target];
        let m = max(row);
        let mut sums = [0.0f32; LANES];
        for c in row.chunks_mut(LANES) {
            for (s, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp(*x - m);
                *s += *x;
            }
        }
        let total = fold_lanes(sums, |a, b| a + b);
        let k = inv_n / total;
        row.iter_mut().for_each(|x| *x *= k);
        row[target] -= inv_n;
        m + total.ln() - xt
    }
}

multiversion! {
    /// `row ← scale · exp(row − shift)` (softmax times `scale`, given the
    /// row's log-sum-exp as `shift`).
    pub fn scaled_exp(row: &mut [f32], shift: f32, scale: f32) {
        row.iter_mut().for_each(|a| *a = scale * exp(*a - shift));
    }
}

multiversion! {
    /// The softmax of `scale · row[..seen]` in place, and zeros after.
    /// The passes run over `seen` rounded up to [`LANES`], in whole chunks
    /// of [`LANES`] (a fixed-size loop each, so no scalar remainder), the
    /// columns past `seen` masked by a select; a row whose length is not a
    /// multiple of [`LANES`] ends in a short masked chunk.
    pub fn softmax(row: &mut [f32], seen: usize, scale: f32) {
        let (row, zeros) = row.split_at_mut(seen.div_ceil(LANES).saturating_mul(LANES).min(row.len()));
        zeros.fill(0.0);
        let mut acc = [f32::NEG_INFINITY; LANES];
        for (c, base) in row.chunks(LANES).zip((0..).step_by(LANES)) {
            for (i, (a, &x)) in acc.iter_mut().zip(c).enumerate() {
                *a = a.max(if base + i < seen { x } else { f32::NEG_INFINITY });
            }
        }
        let m = fold_lanes(acc, f32::max);
        let mut sums = [0.0f32; LANES];
        for (c, base) in row.chunks_mut(LANES).zip((0..).step_by(LANES)) {
            for (i, (s, x)) in sums.iter_mut().zip(c.iter_mut()).enumerate() {
                *x = if base + i < seen { exp((*x - m) * scale) } else { 0.0 };
                *s += *x;
            }
        }
        let inv = 1.0 / fold_lanes(sums, |a, b| a + b);
        for c in row.chunks_mut(LANES) {
            c.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

multiversion! {
    /// The gradient of softmax scores from the weights `p` and their
    /// gradient `dp` (in place): `scale · p ⊙ (dp − Σ p ⊙ dp)`.
    /// Returns `Σ p ⊙ dp`.
    pub fn softmax_backward(dp: &mut [f32], p: &[f32], scale: f32) -> f32 {
        let d = dot(p, dp);
        for (g, &w) in dp.iter_mut().zip(p) {
            *g = scale * w * (*g - d);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    /// The polynomial exp is within 2 ulp (relative 2.5·10⁻⁷) of libm's
    /// over the range softmax and cross-entropy use, and saturates below.
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 174.9 * i as f32 / 200_000.0;
            let (ours, libm) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert!(super::exp(-1000.0) < 1e-37);
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(1000.0).is_finite());
    }

    /// Every instruction set computes the same bits (the reductions' order
    /// is the source's); the CPU's widest is compared with the baseline.
    #[test]
    fn the_chosen_instruction_set_gives_the_baseline_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        let wide = super::log_sum_exp(&xs);
        let baseline = {
            let m = super::max(&xs);
            m + super::sum_map(&xs, |x| super::exp(x - m)).ln()
        };
        assert_eq!(wide.to_bits(), baseline.to_bits());
        let reference = xs.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((f64::from(wide) - reference).abs() < 1e-5, "{wide} vs {reference}");
        let mut row = xs.clone();
        super::softmax(&mut row, 700, 0.5);
        assert!((row[..700].iter().map(|&p| f64::from(p)).sum::<f64>() - 1.0).abs() < 1e-5);
        assert!(row[700..].iter().all(|&p| p == 0.0));
    }
}
