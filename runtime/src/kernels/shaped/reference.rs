//! The shaped attention from the attention family's reference maths (its
//! weights kept, whatever a backend's own attention keeps), the gains
//! family and burn's primitive ops.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata};

use super::{MixAddend, Shaped, ShapedGrads, ShapedOps};
use crate::kernels::attention::reference as attention;
use crate::kernels::attention::Keys;
use crate::kernels::tensor::{merge_heads, primitive, split_heads};

/// The forward, the weights, and the softmax term `o` (`[batch, heads,
/// tokens, d]`), which [`shaped_attention_backward_with`] can take instead
/// of recomputing it.
pub fn shaped_attention_forward<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let heads = a.q.shape()[1];
    let (v4, scores) = (split_heads::<B>(a.v.clone(), heads), a.scores());
    let (o, p) = attention::attention_forward::<B>(a.q, a.k, v4, a.bq, scores);
    let y = B::mix(a.v, merge_heads::<B>(o.clone()), a.gains, a.keys);
    let y = match add {
        Some(m) => B::scaled_sum(y, m.b, m.beta_sa, m.beta_ff),
        None => y,
    };
    (y, p, o)
}

pub fn shaped_attention_backward<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
    p: FloatTensor<B>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> ShapedGrads<FloatTensor<B>> {
    shaped_attention_backward_with::<B>(a, add, p, None, dy, acc)
}

/// The backward from the weights `p`, and the softmax term `o` when the
/// forward kept it (else recomputed as `p · v`).
pub fn shaped_attention_backward_with<B: ShapedOps>(
    a: Shaped<FloatTensor<B>>,
    add: Option<MixAddend<FloatTensor<B>>>,
    p: FloatTensor<B>,
    o: Option<FloatTensor<B>>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> ShapedGrads<FloatTensor<B>> {
    let heads = a.q.shape()[1];
    let v4 = split_heads::<B>(a.v.clone(), heads);
    let o = merge_heads::<B>(o.unwrap_or_else(|| B::matmul_token_major(p.clone(), v4.clone())));
    // With an addend, the gained sum's backward first: `dy` at the mix.
    let (dy, addend) = match add {
        Some(m) => {
            let y = B::mix(a.v.clone(), o.clone(), a.gains.clone(), a.keys);
            let [dmix, db, dbeta_sa, dbeta_ff] = B::scaled_sum_backward(y, m.b, m.beta_sa, m.beta_ff, dy);
            (dmix, Some([db, dbeta_sa, dbeta_ff]))
        }
        None => (dy, None),
    };
    let scores = a.scores();
    let (dv, d_o, dgains) = B::mix_backward(a.v, o, a.gains, dy, a.keys, acc);
    let d_o = split_heads::<B>(d_o, heads);
    let [dq, dk, dv, dbq] =
        attention::attention_backward::<B>([a.q, a.k, v4], a.bq, p, d_o, (scores, Some(dv)), [true; 3]);
    let [dq, dk, dv] = [dq, dk, dv].map(|g| g.expect("every gradient was wanted"));
    ShapedGrads { dq, dk, dv: merge_heads::<B>(dv), dgains, addend, dbq }
}

pub fn mix<B: ShapedOps>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    keys: Keys,
) -> FloatTensor<B> {
    let [alpha, beta, gamma] = gains;
    let c = B::centre(v.clone(), keys);
    let sum = B::float_add(B::scale_groups(v, alpha), B::scale_groups(o, beta));
    B::float_add(sum, B::scale_groups(c, gamma))
}

pub fn mix_backward<B: ShapedOps>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    dy: FloatTensor<B>,
    keys: Keys,
    acc: Option<FloatTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3]) {
    let [alpha, beta, gamma] = gains;
    let n = |g: &FloatTensor<B>| g.shape().num_elements();
    let (ni, ns, nc) = (n(&alpha), n(&beta), n(&gamma));
    let c = B::centre(v.clone(), keys);
    let dalpha = B::scale_groups_grad(v, dy.clone(), ni);
    let dbeta = B::scale_groups_grad(o, dy.clone(), ns);
    let dgamma = B::scale_groups_grad(c, dy.clone(), nc);
    let dv =
        B::float_add(B::scale_groups(dy.clone(), alpha), B::centre_backward(B::scale_groups(dy.clone(), gamma), keys));
    let dv = match acc {
        Some(a) => B::float_add(a, dv),
        None => dv,
    };
    (dv, B::scale_groups(dy, beta), [dalpha, dbeta, dgamma])
}

/// `[1, tokens, 1]`: 1, 2, …, tokens.
fn counts<B: Backend>(x: &FloatTensor<B>) -> FloatTensor<B> {
    let t = x.shape()[1];
    let c = Tensor::<B, 1, burn::tensor::Int>::arange(1..t as i64 + 1, &B::float_device(x)).float();
    B::float_reshape(primitive(c), [1, t, 1].into())
}

/// The rows `from..from + n` of the `[t, t]` matrix `C` that averages the
/// keys each query sees (row `i` is `1 / |keys.range(i, t)|` on those
/// keys, 0 elsewhere), row-major.
pub fn averages((from, n): (usize, usize), t: usize, keys: Keys) -> Vec<f32> {
    let mut out = vec![0.0; n * t];
    for (i, row) in out.chunks_mut(t.max(1)).enumerate().take(n) {
        let seen = keys.range(from + i, t);
        let share = 1.0 / seen.len() as f32;
        row[seen].fill(share);
    }
    out
}

/// `C · x` (`transpose`: `Cᵀ · x`) for `x: [batch, t, width]`, with `C`
/// written out: the reference under a window.
fn averaged<B: Backend>(x: FloatTensor<B>, keys: Keys, transpose: bool) -> FloatTensor<B> {
    let [b, t] = [x.shape()[0], x.shape()[1]];
    let c = Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(averages((0, t), t, keys), [t, t]),
        &B::float_device(&x),
    );
    let c = if transpose { c.transpose() } else { c };
    B::float_matmul(primitive(c.unsqueeze::<3>().expand([b, t, t])), x)
}

/// The `centre` term (see [`ShapedOps::centre`]): a cumulative sum over a
/// count (causal), the mean (no mask), the averaging matrix (a window).
pub fn centre<B: Backend>(x: FloatTensor<B>, keys: Keys) -> FloatTensor<B> {
    let t = x.shape()[1];
    if keys.windowed(t) {
        return averaged::<B>(x, keys, false);
    }
    if keys.causal {
        let c = counts::<B>(&x);
        B::float_div(B::float_cumsum(x, 1), c)
    } else {
        let shape = x.shape();
        B::float_expand(B::float_mean_dim(x, 1), shape)
    }
}

/// The gradient of [`centre`].
pub fn centre_backward<B: Backend>(dy: FloatTensor<B>, keys: Keys) -> FloatTensor<B> {
    let t = dy.shape()[1];
    if keys.windowed(t) {
        return averaged::<B>(dy, keys, true);
    }
    if !keys.causal {
        let shape = dy.shape();
        return B::float_expand(B::float_mean_dim(dy, 1), shape);
    }
    // Σ_{i ≥ s} z[i] = Σ_i z[i] − Σ_{i < s} z[i], with z = dy / (i + 1).
    let c = counts::<B>(&dy);
    let z = B::float_div(dy, c);
    let total = B::float_sum_dim(z.clone(), 1);
    let before = B::float_sub(B::float_cumsum(z.clone(), 1), z);
    B::float_sub(total, before)
}

#[cfg(test)]
mod tests {
    use super::averages;
    use crate::kernels::attention::Keys;

    #[test]
    fn each_row_averages_what_its_query_sees() {
        let keys = |causal, w| Keys { causal, window: Some(w) };
        // t = 5, window 2, causal: itself and the one before.
        let c = averages((0, 5), 5, keys(true, 2));
        assert_eq!(&c[..5], [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&c[15..20], [0.0, 0.0, 0.5, 0.5, 0.0]);
        // Bidirectional: one either side.
        let c = averages((0, 5), 5, keys(false, 2));
        assert_eq!(&c[..5], [0.5, 0.5, 0.0, 0.0, 0.0]);
        let third = 1.0 / 3.0;
        assert_eq!(&c[10..15], [0.0, third, third, third, 0.0]);
        // Rows of a decoded token: the last of the same matrix.
        assert_eq!(averages((4, 1), 5, keys(true, 3)), averages((0, 5), 5, keys(true, 3))[20..]);
        // A window past the context: no window.
        let all = averages((0, 4), 4, keys(true, 9));
        assert_eq!(&all[12..], [0.25; 4]);
        assert_eq!(all, averages((0, 4), 4, Keys::all(true)));
    }
}
