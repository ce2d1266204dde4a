//! Token kernels Σ (T×T, Σ_ij = ⟨x_i, x_j⟩/d) and their statistics: mean
//! off-diagonal cosine, effective rank (Roy & Vetterli 2007) and scale.

use nalgebra::{DMatrix, DVector};

/// A T×T kernel.
pub type Mat = DMatrix<f64>;

/// The cosine matrix D^{-1/2} Σ D^{-1/2}, clipped to [−1, 1].
pub fn cosine(k: &Mat) -> Mat {
    let d: DVector<f64> = k.diagonal().map(|q| 1.0 / q.max(1e-300).sqrt());
    let mut c = k.clone();
    for j in 0..c.ncols() {
        for i in 0..c.nrows() {
            c[(i, j)] = (c[(i, j)] * d[i] * d[j]).clamp(-1.0, 1.0);
        }
    }
    c
}

/// Mean off-diagonal cosine ρ̄ (1 when T = 1).
pub fn mean_cosine(k: &Mat) -> f64 {
    let t = k.nrows();
    if t < 2 {
        return 1.0;
    }
    let d: Vec<f64> = k.diagonal().iter().map(|q| q.max(1e-300).sqrt()).collect();
    let mut sum = 0.0;
    for j in 0..t {
        for i in 0..t {
            if i != j {
                sum += (k[(i, j)] / (d[i] * d[j])).clamp(-1.0, 1.0);
            }
        }
    }
    sum / (t * (t - 1)) as f64
}

/// exp(entropy of the normalised eigenvalues of the cosine matrix): 1 for
/// rank one, T for orthogonal tokens.
pub fn effective_rank(k: &Mat) -> f64 {
    let c = cosine(k);
    let eig = c.symmetric_eigenvalues();
    let total: f64 = eig.iter().map(|l| l.max(0.0)).sum();
    if total <= 0.0 {
        return 1.0;
    }
    let h: f64 = eig.iter().map(|l| l.max(0.0) / total).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

/// Mean diagonal (the signal's second moment per feature).
pub fn scale(k: &Mat) -> f64 {
    k.diagonal().mean()
}

/// (Σ + Σᵀ)/2, to keep round-off from breaking symmetry.
pub fn symmetrise(k: &mut Mat) {
    let t = k.nrows();
    for j in 0..t {
        for i in (j + 1)..t {
            let v = 0.5 * (k[(i, j)] + k[(j, i)]);
            k[(i, j)] = v;
            k[(j, i)] = v;
        }
    }
}

/// The input kernels of the analysis, all with unit diagonal (the scale
/// the thresholds of docs/theory.md §3 are calibrated for).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Distinct tokens: Σ₀ = I.
    Distinct,
    /// Uniformly correlated tokens: Σ₀ = (1 − ρ)I + ρ11ᵀ.
    Rho(f64),
    /// A kernel measured from data (see [`token_kernel`]).
    Kernel { name: String, kernel: Mat },
}

impl Input {
    pub fn name(&self) -> String {
        match self {
            Input::Distinct => "distinct".into(),
            Input::Rho(r) => format!("rho={r}"),
            Input::Kernel { name, .. } => name.clone(),
        }
    }

    pub fn kernel(&self, t: usize) -> Mat {
        match self {
            Input::Distinct => Mat::identity(t, t),
            Input::Rho(r) => Mat::from_fn(t, t, |i, j| if i == j { 1.0 } else { *r }),
            Input::Kernel { kernel, .. } => {
                let n = kernel.nrows().min(t);
                let mut k = Mat::identity(t, t);
                k.view_mut((0, 0), (n, n)).copy_from(&kernel.view((0, 0), (n, n)));
                k
            }
        }
    }
}

/// The input kernel of real token sequences at init: random embeddings
/// make two positions' vectors identical when their tokens are equal and
/// orthogonal otherwise (d → ∞); a learned position table adds an
/// independent vector per position. Averaged over `windows`, with unit
/// diagonal.
pub fn token_kernel(windows: &[Vec<u32>], t: usize, positions: bool) -> Mat {
    let mut k = Mat::zeros(t, t);
    let mut n = 0.0;
    for w in windows.iter().filter(|w| w.len() >= t) {
        n += 1.0;
        for i in 0..t {
            for j in 0..t {
                let same = f64::from(u8::from(w[i] == w[j]));
                let pos = f64::from(u8::from(positions && i == j));
                k[(i, j)] += if positions { 0.5 * (same + pos) } else { same };
            }
        }
    }
    if n == 0.0 {
        return Mat::identity(t, t);
    }
    k / n
}
