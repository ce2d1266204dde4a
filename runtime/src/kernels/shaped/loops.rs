//! The shaped family's loops: the mix row by row (the `I`, `softmax` and
//! `centre` terms with their per-column gains, and the other branch of a
//! block's sum), its backward, and the running mean over tokens.

use crate::kernels::cpu::raw::multiversion;

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

/// A row of a gradient that a kernel writes (`Set`: a scratch row, every
/// element) or adds into (`Add`: a gradient from elsewhere).
#[derive(Debug)]
pub enum Grad<'a> {
    Add(&'a mut [f32]),
    Set(&'a mut [f32]),
}

/// One row of the shaped mix's inputs: `v`, `o`, and the other branch `b`
/// that a block sums with the mix, if any.
#[derive(Debug, Clone, Copy)]
pub struct MixIn<'a> {
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub b: Option<&'a [f32]>,
}

/// The per-column gains of the shaped mix's three terms (`I`, `softmax`,
/// `centre`, each times the mix's gain in a sum), and of the other branch
/// `b` (empty without one).
#[derive(Debug, Clone, Copy)]
pub struct MixGains<'a> {
    pub alpha: &'a [f32],
    pub beta: &'a [f32],
    pub gamma: &'a [f32],
    pub branch: &'a [f32],
}

/// What the shaped mix's backward carries from row to row: `r`, the
/// centre term's gradient per unit gain (see [`mix_back_row`]), and the
/// column sums of `dy` against `v`, `o`, the centre term, and `b`.
#[derive(Debug)]
pub struct MixSums<'a> {
    pub r: &'a mut [f32],
    pub alpha: &'a mut [f32],
    pub beta: &'a mut [f32],
    pub gamma: &'a mut [f32],
    pub branch: &'a mut [f32],
}

multiversion! {
    /// One row of the shaped mix: `out ← alpha ⊙ v + beta ⊙ o + gamma ⊙ inv · sum
    /// (+ beta_ff ⊙ b)` (every element written). With `running` (the causal
    /// running mean, rows in order), `v` is first added into `sum`;
    /// otherwise `sum` is the sum of all rows.
    pub fn mix_row(out: &mut [f32], x: MixIn<'_>, sum: &mut [f32], g: MixGains<'_>, inv: f32, running: bool) {
        let n = out.len();
        let (v, o, sum, alpha, beta, gamma) = (&x.v[..n], &x.o[..n], &mut sum[..n], &g.alpha[..n], &g.beta[..n], &g.gamma[..n]);
        match x.b {
            Some(b) => {
                let (b, beta_ff) = (&b[..n], &g.branch[..n]);
                for j in 0..n {
                    if running {
                        sum[j] += v[j];
                    }
                    out[j] = alpha[j] * v[j] + beta[j] * o[j] + gamma[j] * (inv * sum[j]) + beta_ff[j] * b[j];
                }
            }
            None => {
                for j in 0..n {
                    if running {
                        sum[j] += v[j];
                    }
                    out[j] = alpha[j] * v[j] + beta[j] * o[j] + gamma[j] * (inv * sum[j]);
                }
            }
        }
    }
}

/// One row of a shaped attention's mix, backward (see
/// [`shaped_back_row`]).
#[inline(always)]
fn shaped_back<const ADD: bool>(
    dv: &mut [f32],
    dy: &[f32],
    v: &[f32],
    b: Option<(&[f32], &mut [f32])>,
    g: MixGains<'_>,
    sums: &mut MixSums<'_>,
    inv: f32,
) {
    let n = dv.len();
    let (dy, v) = (&dy[..n], &v[..n]);
    if let Some((b, db)) = b {
        let (b, db, beta_ff, sb) = (&b[..n], &mut db[..n], &g.branch[..n], &mut sums.branch[..n]);
        for j in 0..n {
            db[j] = beta_ff[j] * dy[j];
            sb[j] += dy[j] * b[j];
        }
    }
    let (alpha, gamma) = (&g.alpha[..n], &g.gamma[..n]);
    let (r, si, sc) = (&mut sums.r[..n], &mut sums.alpha[..n], &mut sums.gamma[..n]);
    for j in 0..n {
        let d = dy[j];
        r[j] += inv * d;
        let x = alpha[j] * d + gamma[j] * r[j];
        dv[j] = if ADD { dv[j] + x } else { x };
        si[j] += d * v[j];
        sc[j] += v[j] * r[j];
    }
}

multiversion! {
    /// One row of a shaped attention's mix, backward, rows taken last to
    /// first: with a branch `(b, db)`, `db ← beta_ff ⊙ dy` and the sum `dy ⊙ b`;
    /// `r ← r + inv · dy` (`inv` is 1/(i+1) for the causal running mean, so
    /// that `r` is the centre term's gradient per unit gain; for the plain
    /// mean `r` is set once to `Σ dy / t` and `inv` is 0), `dv ← alpha ⊙ dy + gamma ⊙ r`
    /// (written or added into), and the sums `dy ⊙ v`, `v ⊙ r`. The softmax
    /// term's part is the attention's.
    pub fn shaped_back_row(
        dv: Grad<'_>,
        dy: &[f32],
        v: &[f32],
        b: Option<(&[f32], &mut [f32])>,
        g: MixGains<'_>,
        sums: &mut MixSums<'_>,
        inv: f32,
    ) {
        match dv {
            Grad::Add(d) => shaped_back::<true>(d, dy, v, b, g, sums, inv),
            Grad::Set(d) => shaped_back::<false>(d, dy, v, b, g, sums, inv),
        }
    }
}

multiversion! {
    /// One row of the shaped mix's backward, rows taken last to first: the
    /// shaped attention's row ([`shaped_back_row`], `dv` added into), then
    /// the softmax term's gain's sum `dy ⊙ o` and `do = beta ⊙ dy` in place
    /// over `dy`.
    pub fn mix_back_row(
        dv: &mut [f32],
        dy: &mut [f32],
        vo: [&[f32]; 2],
        g: MixGains<'_>,
        sums: &mut MixSums<'_>,
        inv: f32,
    ) {
        let n = dv.len();
        shaped_back::<true>(dv, dy, vo[0], None, g, sums, inv);
        let (dy, o, beta, ss) = (&mut dy[..n], &vo[1][..n], &g.beta[..n], &mut sums.beta[..n]);
        for j in 0..n {
            ss[j] += dy[j] * o[j];
            dy[j] *= beta[j];
        }
    }
}
