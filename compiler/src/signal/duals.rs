//! Dual maps ("C-maps") of activations: the kernel of φ(u) for a zero-mean
//! Gaussian u with kernel K (docs/theory.md §2.3). Closed forms for ReLU, leaky
//! ReLU (Cho & Saul 2009), exact GELU (Tsuchida et al. 2020) and erf
//! (Williams 1997); a Hermite (Mehler) series (Daniely et al. 2016) for
//! every other φ, with exact diagonals from 1-D Gauss–Hermite quadrature.

use std::f64::consts::PI;

use super::kernel::Mat;
use crate::graph::Activation;

/// E[φ(u)φ(u)ᵀ] for u ~ N(0, K).
pub fn dual(act: Activation, k: &Mat) -> Mat {
    match act {
        Activation::Relu => ab_relu(k, 0.0, 1.0),
        Activation::LeakyRelu { slope } => ab_relu(k, slope, 1.0),
        Activation::Gelu => gelu(k),
        Activation::Erf => erf(k),
        Activation::Identity => k.clone(),
        Activation::GeluTanh | Activation::Silu | Activation::Tanh => hermite(k, |x| apply(act, x)),
    }
}

/// φ itself, for quadrature and simulation.
pub fn apply(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu { slope } => {
            if x >= 0.0 {
                x
            } else {
                slope * x
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + erf_fn(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => 0.5 * x * (1.0 + ((2.0 / PI).sqrt() * (x + 0.044_715 * x * x * x)).tanh()),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Erf => erf_fn(x),
        Activation::Identity => x,
    }
}

/// φ(x) = a·min(x, 0) + b·max(x, 0) (ReLU: a = 0, b = 1).
pub fn ab_relu(k: &Mat, a: f64, b: f64) -> Mat {
    let t = k.nrows();
    Mat::from_fn(t, t, |i, j| {
        let (qi, qj, kij) = (k[(i, i)], k[(j, j)], k[(i, j)]);
        if i == j {
            return (a * a + b * b) / 2.0 * qi;
        }
        let p = (qi * qj).max(0.0).sqrt();
        if p == 0.0 {
            return 0.0;
        }
        let c = (kij / p).clamp(-1.0, 1.0);
        let theta = c.acos();
        let s = (1.0 - c * c).max(0.0).sqrt() * p;
        (a - b).powi(2) / (2.0 * PI) * s + ((a * a + b * b) / 2.0 - (a - b).powi(2) * theta / (2.0 * PI)) * kij
    })
}

/// Exact GELU x·Φ(x).
pub fn gelu(k: &Mat) -> Mat {
    let t = k.nrows();
    Mat::from_fn(t, t, |i, j| {
        let (qi, qj, kij) = (k[(i, i)], k[(j, j)], k[(i, j)]);
        let prod = qi * qj;
        let prod1 = (1.0 + qi) * (1.0 + qj);
        let delta2 = (prod1 - kij * kij).max(1e-300);
        let delta = delta2.sqrt();
        let ang = kij.atan2(delta);
        ((kij * kij + prod * delta2) / (prod1 * delta) + kij * ang) / (2.0 * PI) + 0.25 * kij
    })
}

/// erf.
pub fn erf(k: &Mat) -> Mat {
    let t = k.nrows();
    Mat::from_fn(t, t, |i, j| {
        let den = ((1.0 + 2.0 * k[(i, i)]) * (1.0 + 2.0 * k[(j, j)])).sqrt();
        2.0 / PI * (2.0 * k[(i, j)] / den).clamp(-1.0, 1.0).asin()
    })
}

/// Terms of the Mehler series: truncation error below 1e-6 for |c| ≤ 0.95
/// and about 1e-5 (relative) at c = 0.999, where c^k decays slowly; more
/// terms make the quadrature of the high-order coefficients unstable.
const HERMITE_TERMS: usize = 30;
/// Nodes of the 1-D Gauss–Hermite rule.
const QUAD_NODES: usize = 96;

/// Any φ by the Hermite series E[φ(u_i)φ(u_j)] = Σ_k a_k(q_i) a_k(q_j) c^k
/// with a_k(q) = E[φ(√q z) He_k(z)]/√k!; the diagonal is E[φ(√q z)²].
pub fn hermite(k: &Mat, phi: impl Fn(f64) -> f64) -> Mat {
    let (nodes, weights) = gauss_hermite(QUAD_NODES);
    let t = k.nrows();
    let mut coef = vec![[0.0; HERMITE_TERMS]; t];
    let mut diag = vec![0.0; t];
    for i in 0..t {
        let s = k[(i, i)].max(0.0).sqrt();
        for (z, w) in nodes.iter().zip(&weights) {
            let f = phi(s * z);
            diag[i] += w * f * f;
            // Normalised Hermite polynomials h_n = He_n/√n! by recurrence.
            let (mut h0, mut h1) = (0.0, 1.0);
            for (n, a) in coef[i].iter_mut().enumerate() {
                *a += w * f * h1;
                let h2 = (z * h1 - (n as f64).sqrt() * h0) / ((n + 1) as f64).sqrt();
                h0 = h1;
                h1 = h2;
            }
        }
    }
    Mat::from_fn(t, t, |i, j| {
        if i == j {
            return diag[i];
        }
        let p = (k[(i, i)] * k[(j, j)]).max(0.0).sqrt();
        let c = if p > 0.0 { (k[(i, j)] / p).clamp(-1.0, 1.0) } else { 0.0 };
        let mut sum = 0.0;
        let mut ck = 1.0;
        for (ai, aj) in coef[i].iter().zip(&coef[j]) {
            sum += ai * aj * ck;
            ck *= c;
        }
        sum
    })
}

/// Probabilists' Gauss–Hermite rule (Golub–Welsch): nodes and weights
/// with Σ w f(z) ≈ E[f(z)], z ~ N(0, 1).
pub fn gauss_hermite(n: usize) -> (Vec<f64>, Vec<f64>) {
    let jacobi = Mat::from_fn(n, n, |i, j| if i.abs_diff(j) == 1 { (i.max(j) as f64).sqrt() } else { 0.0 });
    let eig = jacobi.symmetric_eigen();
    let mut pairs: Vec<(f64, f64)> = (0..n).map(|k| (eig.eigenvalues[k], eig.eigenvectors[(0, k)].powi(2))).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    pairs.into_iter().unzip()
}

/// The error function (Abramowitz & Stegun 7.1.26 is too coarse for
/// quadrature checks; this uses the complementary series / continued
/// fraction split with ~1e-15 accuracy).
pub fn erf_fn(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series: erf x = 2/√π Σ (−1)^n x^{2n+1} / (n! (2n+1)).
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..60 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
            if term.abs() < 1e-17 {
                break;
            }
        }
        2.0 / PI.sqrt() * sum
    } else {
        // Continued fraction for erfc (Lentz), x ≥ 2.5.
        let a = x.abs();
        let mut f = a;
        let (mut c, mut d) = (a, 0.0);
        for n in 1..200 {
            let an = n as f64 / 2.0;
            d = a + an * d;
            d = if d == 0.0 { 1e-300 } else { 1.0 / d };
            c = a + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-a * a).exp() / (f * PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}
