//! The shaped family's loops: the mix row by row (the `I`, `softmax` and
//! `centre` terms with their per-column gains, and the other branch of a
//! block's sum), its backward, and the `centre` term's mean over the tokens
//! each token sees.

use crate::kernels::attention::Keys;
use crate::kernels::cpu::raw::multiversion;
use crate::kernels::cpu::simd;

/// The `centre` term of one sequence `x` (rows of `width`) into `out`
/// (every row written): row `i` the mean of the rows `keys.range(i, t)`,
/// a sum slid along the rows (rows enter at its end and, under a window,
/// leave at its start; without one nothing leaves, and the causal sum is
/// the running sum).
pub fn window_mean(out: &mut [f32], x: &[f32], width: usize, keys: Keys) {
    let w = width.max(1);
    let t = x.len() / w;
    let row = |j: usize| &x[j * w..(j + 1) * w];
    let mut sum = vec![0.0f32; w];
    let (mut lo, mut hi) = (0, 0);
    for (i, y) in out.chunks_mut(w).enumerate().take(t) {
        let seen = keys.range(i, t);
        (hi..seen.end).for_each(|j| simd::add_into(&mut sum, row(j)));
        (lo..seen.start).for_each(|j| simd::add_scaled(&mut sum, -1.0, row(j)));
        (lo, hi) = (seen.start, seen.end);
        let inv = 1.0 / (hi - lo) as f32;
        y.iter_mut().zip(&sum).for_each(|(y, s)| *y = s * inv);
    }
}

/// The gradient of [`window_mean`] from `dy` into `out` (every row
/// written): row `j` is `Σ dy[i] / |keys.range(i, t)|` over the queries
/// `i` that see key `j`, a sum slid from the last row to the first (rows
/// enter at its start and, under a window, leave at its end).
pub fn window_mean_backward(out: &mut [f32], dy: &[f32], width: usize, keys: Keys) {
    let w = width.max(1);
    let t = dy.len() / w;
    let share = |acc: &mut [f32], i: usize, sign: f32| {
        let n = keys.range(i, t).len() as f32;
        simd::add_scaled(acc, sign / n, &dy[i * w..(i + 1) * w]);
    };
    let mut acc = vec![0.0f32; w];
    let (mut lo, mut hi) = (t, t);
    for (j, y) in out.chunks_mut(w).enumerate().take(t).rev() {
        let seeing = keys.queries(j, t);
        (seeing.start..lo).rev().for_each(|i| share(&mut acc, i, 1.0));
        (seeing.end..hi).for_each(|i| share(&mut acc, i, -1.0));
        (lo, hi) = (seeing.start, seeing.end);
        y.copy_from_slice(&acc);
    }
}

/// The `centre` term of one sequence (rows of `width`) as the mix reads
/// it row by row, rows in order (see [`mix_row`]): a running sum (causal,
/// no window), the sum of every row (no mask, no window), or under a
/// window every row's mean, formed first ([`window_mean`]).
#[derive(Debug)]
pub struct Centres {
    causal: bool,
    width: usize,
    sum: Vec<f32>,
    means: Vec<f32>,
}

impl Centres {
    pub fn new(v: &[f32], width: usize, keys: Keys) -> Centres {
        let t = v.len() / width.max(1);
        let (mut sum, mut means) = (vec![0.0f32; width], Vec::new());
        if keys.windowed(t) {
            means = vec![0.0f32; v.len()];
            window_mean(&mut means, v, width, keys);
        } else if !keys.causal {
            v.chunks(width.max(1)).for_each(|row| simd::add_into(&mut sum, row));
        }
        Centres { causal: keys.causal, width, sum, means }
    }

    /// What [`mix_row`] takes for row `i` of `t`: the sum, its scale, and
    /// whether the row's value is still to be added to it.
    pub fn row(&mut self, i: usize, t: usize) -> (&mut [f32], f32, bool) {
        if !self.means.is_empty() {
            return (&mut self.means[i * self.width..(i + 1) * self.width], 1.0, false);
        }
        let inv = 1.0 / if self.causal { i + 1 } else { t } as f32;
        (&mut self.sum, inv, self.causal)
    }
}

/// The `centre` term's gradient per unit gain (`r` of [`MixSums`]) as the
/// mix's backward reads it, rows last to first (see [`shaped_back_row`]):
/// a running sum of `dy[i] / (i + 1)` (causal, no window), `Σ dy / t` for
/// every row (no mask, no window), or under a window every row's,
/// formed first from `dy` ([`window_mean_backward`]).
#[derive(Debug)]
pub struct CentreGrads {
    causal: bool,
    width: usize,
    rows: Vec<f32>,
}

impl CentreGrads {
    /// From the sequence's `dy`, with `r` zeros (`width` of them).
    pub fn new(dy: &[f32], width: usize, keys: Keys, r: &mut [f32]) -> CentreGrads {
        let t = dy.len() / width.max(1);
        let mut rows = Vec::new();
        if keys.windowed(t) {
            rows = vec![0.0f32; dy.len()];
            window_mean_backward(&mut rows, dy, width, keys);
        } else if !keys.causal {
            dy.chunks(width.max(1)).for_each(|row| simd::add_into(r, row));
            r.iter_mut().for_each(|x| *x /= t as f32);
        }
        CentreGrads { causal: keys.causal, width, rows }
    }

    /// Row `i`'s `inv` for [`shaped_back_row`] (the share of `dy[i]` that
    /// `r` takes on there), `r` set first under a window.
    pub fn row(&self, i: usize, r: &mut [f32]) -> f32 {
        if !self.rows.is_empty() {
            r.copy_from_slice(&self.rows[i * self.width..(i + 1) * self.width]);
            return 0.0;
        }
        if self.causal {
            1.0 / (i + 1) as f32
        } else {
            0.0
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
