//! The shaped attention's mix on its own, when the attention runs as
//! products (`kernels/attention/route.rs`): `y = alpha ⊙ v + beta ⊙ o +
//! gamma ⊙ centre(v)` and its backward, one unit per (sequence, vector of
//! columns) walking the tokens, so that the running mean `centre` is a
//! running sum in a register (the reference: a cumulative sum, a division,
//! three scalings and two additions each way).

use cubecl::prelude::*;

use super::kernels::gain;

/// Unit `pos` of `units = batch · w` (`w` vectors a token, `hw` a head):
/// its column's `y` for every token.
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
    if !causal {
        for t in 0..tokens {
            sum += v[base + t * w];
        }
        sum *= Vector::new(F::new(1.0) / F::cast_from(tokens));
    }
    for t in 0..tokens {
        let at = base + t * w;
        let x = v[at];
        let mut centre = sum;
        if causal {
            sum += x;
            centre = sum * Vector::new(F::new(1.0) / F::cast_from(t + 1));
        }
        y[at] = ga * x + gb * o[at] + gg * centre;
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
    // Without a mask, every token's centre is the mean, and every token's
    // share of the centre's gradient the mean of `dy`.
    let mut mean_v = zero;
    let mut mean_dy = zero;
    if !causal {
        for t in 0..tokens {
            mean_v += v[base + t * w];
            mean_dy += dy[base + t * w];
        }
        let inv = Vector::new(F::new(1.0) / F::cast_from(tokens));
        mean_v *= inv;
        mean_dy *= inv;
    }
    let (mut pv, mut po, mut pc) = (zero, zero, zero);
    let mut sum = zero;
    for t in 0..tokens {
        let at = base + t * w;
        let (x, g) = (v[at], dy[at]);
        let mut centre = mean_v;
        if causal {
            sum += x;
            centre = sum * Vector::new(F::new(1.0) / F::cast_from(t + 1));
        }
        pv += x * g;
        po += o[at] * g;
        pc += centre * g;
        d_o[at] = gb * g;
    }
    // `dv[s] = alpha · dy[s] + gamma · Σ_{i ≥ s} dy[i] / (i + 1)` (causal).
    let mut later = zero;
    for r in 0..tokens {
        let t = tokens - 1 - r;
        let at = base + t * w;
        let g = dy[at];
        let mut share = mean_dy;
        if causal {
            later += g * Vector::new(F::new(1.0) / F::cast_from(t + 1));
            share = later;
        }
        let mut d = ga * g + gg * share;
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
