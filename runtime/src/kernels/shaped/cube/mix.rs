//! The shaped attention's mix on its own, when the attention runs as
//! products (`kernels/attention/route.rs`): `y = alpha ⊙ v + beta ⊙ o +
//! gamma ⊙ centre(v)` and its backward, one unit per (sequence, vector of
//! columns) walking the tokens, so that the `centre` term's mean is a sum
//! slid along them in a register (the reference: a cumulative sum, a
//! division, three scalings and two additions each way; under a window,
//! the averaging matrix).

use cubecl::prelude::*;

use super::kernels::gain;
use crate::kernels::cube::{first_key, keys_end};

/// The share of each of query `i`'s keys in its `centre`: one over how
/// many it sees.
#[cube]
fn share<F: Float>(i: usize, tokens: usize, reach: usize, #[comptime] causal: bool) -> F {
    F::new(1.0) / F::cast_from(keys_end(i, tokens, reach, causal) - first_key(i, reach))
}

/// A column's sum over the keys token `t` sees (`first_key .. keys_end`),
/// from `sum`, its sum over those of token `t − 1` (zero before the
/// first): the rows that enter at its end added, those that leave at its
/// start (under a window) taken off. The column's rows are `w` apart from
/// `base`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn slid<F: Float, N: Size>(
    v: &Tensor<Vector<F, N>>,
    base: usize,
    w: usize,
    sum: Vector<F, N>,
    t: usize,
    tokens: usize,
    reach: usize,
    #[comptime] causal: bool,
) -> Vector<F, N> {
    let mut s = sum;
    let mut lo = 0;
    let mut hi = 0;
    if t > 0 {
        lo = first_key(t - 1, reach);
        hi = keys_end(t - 1, tokens, reach, causal);
    }
    for j in hi..keys_end(t, tokens, reach, causal) {
        s += v[base + j * w];
    }
    for j in lo..first_key(t, reach) {
        s -= v[base + j * w];
    }
    s
}

/// Unit `pos` of `units = batch · w` (`w` vectors a token, `hw` a head):
/// its column's `y` for every token, the centre's sum slid along the
/// tokens (the keys `first_key .. keys_end` of each, `reach` as the
/// attention kernels take it: rows enter at its end and, under a window,
/// leave at its start).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn mix_forward<F: Float, N: Size>(
    v: &Tensor<Vector<F, N>>,
    o: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    y: &mut Tensor<Vector<F, N>>,
    units: usize,
    tokens: usize,
    w: usize,
    hw: usize,
    reach: usize,
    #[comptime] causal: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let h = (pos % w) / hw;
    let base = (pos / w) * tokens * w + pos % w;
    let (ga, gb, gg) = (Vector::new(gain(alpha, h)), Vector::new(gain(beta, h)), Vector::new(gain(gamma, h)));
    let mut sum = Vector::new(F::new(0.0));
    for t in 0..tokens {
        sum = slid(v, base, w, sum, t, tokens, reach, causal);
        let at = base + t * w;
        let centre = sum * Vector::new(share::<F>(t, tokens, reach, causal));
        y[at] = ga * v[at] + gb * o[at] + gg * centre;
    }
}

/// Unit `pos` as in [`mix_forward`]: its column's `dv` (plus `acc` when
/// `accumulate`) and `do` for every token, and its shares of the gains'
/// gradients, `part[3, units]`: `Σ v ⊙ dy`, `Σ o ⊙ dy`, `Σ centre ⊙ dy`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn mix_backward<F: Float, N: Size>(
    v: &Tensor<Vector<F, N>>,
    o: &Tensor<Vector<F, N>>,
    dy: &Tensor<Vector<F, N>>,
    acc: &Tensor<Vector<F, N>>,
    alpha: &Tensor<F>,
    beta: &Tensor<F>,
    gamma: &Tensor<F>,
    dv: &mut Tensor<Vector<F, N>>,
    d_o: &mut Tensor<Vector<F, N>>,
    part: &mut Tensor<F>,
    units: usize,
    tokens: usize,
    w: usize,
    hw: usize,
    reach: usize,
    #[comptime] causal: bool,
    #[comptime] accumulate: bool,
) {
    let pos = ABSOLUTE_POS;
    if pos >= units {
        terminate!();
    }
    let h = (pos % w) / hw;
    let base = (pos / w) * tokens * w + pos % w;
    let (ga, gb, gg) = (Vector::new(gain(alpha, h)), Vector::new(gain(beta, h)), Vector::new(gain(gamma, h)));
    let zero = Vector::new(F::new(0.0));
    let (mut pv, mut po, mut pc) = (zero, zero, zero);
    let mut sum = zero;
    for t in 0..tokens {
        sum = slid(v, base, w, sum, t, tokens, reach, causal);
        let at = base + t * w;
        let (x, g) = (v[at], dy[at]);
        let centre = sum * Vector::new(share::<F>(t, tokens, reach, causal));
        pv += x * g;
        po += o[at] * g;
        pc += centre * g;
        d_o[at] = gb * g;
    }
    // `dv[s] = alpha · dy[s] + gamma · Σ dy[i] / |keys of i|` over the
    // queries `i` that see `s` (`s ..` under a causal mask, `reach` either
    // side of it otherwise, within `reach` after it), slid from the last
    // token: queries enter at the start and, under a window, leave at the
    // end.
    let mut later = zero;
    let mut qlo = tokens;
    let mut qhi = tokens;
    for r in 0..tokens {
        let s = tokens - 1 - r;
        let mut first = first_key(s, reach);
        if causal {
            first = s;
        }
        let end = keys_end(s, tokens, reach, false);
        for i in first..qlo {
            later += dy[base + i * w] * Vector::new(share::<F>(i, tokens, reach, causal));
        }
        for i in end..qhi {
            later -= dy[base + i * w] * Vector::new(share::<F>(i, tokens, reach, causal));
        }
        qlo = first;
        qhi = end;
        let at = base + s * w;
        let mut d = ga * dy[at] + gg * later;
        if accumulate {
            d += acc[at];
        }
        dv[at] = d;
    }
    let one = Vector::new(F::new(1.0));
    part[pos] = pv.dot(one);
    part[units + pos] = po.dot(one);
    part[2 * units + pos] = pc.dot(one);
}
