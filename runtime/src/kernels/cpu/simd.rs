//! The loops every CPU kernel shares, on slices: sums, dot products, `exp`,
//! row updates; each compiled per instruction set (`multiversion!`). An
//! op family's own loops live in its folder (`loops.rs`).
//!
//! Reductions keep [`LANES`] partial sums (vectors of independent chains
//! instead of one chain of dependent additions, which no compiler may
//! reorder); their order is fixed by the source, so every instruction set
//! gives the same result, bit for bit.

use super::raw::multiversion;

/// Partial sums of the reductions.
pub const LANES: usize = 32;

/// `Σ f(x)` over `xs`, in [`LANES`] partial sums.
#[inline(always)]
pub fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
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
pub fn fold_lanes(mut acc: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
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
pub fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
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
pub fn sum(xs: &[f32]) -> f32 {
    sum_map(xs, |x| x)
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_zip(a, b, |x, y| x * y)
}

/// The largest element (−∞ for none).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
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

/// `tanh x` in operations that vectorise, as `t / (t + 2)` with `t = e²ˣ −
/// 1`: from [`exp`] where `|2x| ≥ 0.35` (there `e²ˣ − 1` keeps its
/// relative accuracy), else from its Taylor polynomial to the 8th power
/// (the remainder below 10⁻⁹ of it), so that a small `x` keeps its digits
/// (`1 − 2 / (e²ˣ + 1)` would lose them: a soft-cap far above the logits
/// must leave them as they are). Saturates at ±1: [`exp`] clamps, so `t`
/// stays finite (at most e⁸⁸), and `t / (t + 2)` rounds to 1 long before.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let y = 2.0 * x;
    let small = y.abs() < 0.35;
    let p = y
        * (1.0
            + y * (0.5
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0))))))));
    let t = if small { p } else { exp(y) - 1.0 };
    t / (t + 2.0)
}

/// The error function in operations that vectorise: Abramowitz and
/// Stegun's 7.1.26 (`1 − t · P(t) · e^(−x²)`, `t = 1 / (1 + p · |x|)`, within
/// 1.5·10⁻⁷ of erf in exact arithmetic, 5·10⁻⁷ in f32's), odd in `x`; the
/// polynomial burn's CubeCL backends use, so that the CPU and the GPU
/// round alike. (GELU reads `1 + erf`, where the absolute error is what
/// counts.)
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    (1.0 - p * exp(-a * a)).copysign(x)
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
    /// `acc[j] += a[j] · b[j]`.
    pub fn add_products(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
            *s += x * y;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The vectorising tanh is within 4 ulp of libm's (relative 5·10⁻⁷)
    /// from 10⁻⁶ to where it saturates, of either sign.
    #[test]
    fn tanh_matches_libm() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = 1e-6f32 * (1.0f32 + 2e-4).powi(i / 2);
            if x > 20.0 {
                break;
            }
            for x in [x, -x] {
                let (ours, theirs) = (f64::from(super::tanh(x)), f64::from(x.tanh()));
                worst = worst.max((ours - theirs).abs() / theirs.abs());
            }
        }
        assert!(worst < 5e-7, "relative error {worst:e}");
        assert_eq!((super::tanh(100.0), super::tanh(-100.0), super::tanh(0.0)), (1.0, -1.0, 0.0));
    }

    /// erf is within its bound (1.5·10⁻⁷, plus f32's rounding: 5·10⁻⁷) of
    /// the function's Taylor series summed in f64, and odd.
    #[test]
    fn erf_is_within_its_bound() {
        let series = |x: f64| {
            // 2/√π · Σ (−1)ⁿ x²ⁿ⁺¹ / (n! (2n + 1)), to convergence.
            let (mut term, mut sum) = (x, x);
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * std::f64::consts::FRAC_2_SQRT_PI
        };
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f32 * 1e-3;
            let truth = if x.abs() < 4.0 { series(f64::from(x)) } else { f64::from(x.signum()) };
            worst = worst.max((f64::from(super::erf(x)) - truth).abs());
            assert_eq!(super::erf(-x), -super::erf(x));
        }
        assert!(worst < 5e-7, "absolute error {worst:e}");
    }

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
        let wide = crate::kernels::loss::loops::log_sum_exp(&xs);
        let baseline = {
            let m = super::max(&xs);
            m + super::sum_map(&xs, |x| super::exp(x - m)).ln()
        };
        assert_eq!(wide.to_bits(), baseline.to_bits());
        let reference = xs.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((f64::from(wide) - reference).abs() < 1e-5, "{wide} vs {reference}");
        let mut row = xs.clone();
        crate::kernels::attention::loops::softmax(&mut row, 700, 0.5);
        assert!((row[..700].iter().map(|&p| f64::from(p)).sum::<f64>() - 1.0).abs() < 1e-5);
        assert!(row[700..].iter().all(|&p| p == 0.0));
    }
}
