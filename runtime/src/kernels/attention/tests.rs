//! Softmax attention against burn's own, and the CPU kernels against the
//! reference maths.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Bool, Tensor, TensorData, Tolerance};

use super::{reference, AttentionOps, Keys, Scores};
use crate::kernels::cpu::raw::Band;
use crate::kernels::tensor::{merge_heads, split_heads};
use crate::kernels::testing::*;
use crate::kernels::*;

/// What `keys` hides of `[t, t]`, true where hidden, from the definition
/// (not from [`Keys::range`]): later keys under a causal mask, keys
/// `window` or more positions away; burn's attention takes it.
fn hidden_by(keys: Keys, t: usize) -> Tensor<Ad, 4, Bool> {
    let cells: Vec<bool> = (0..t * t).map(|c| hides(keys, c / t, c % t)).collect();
    Tensor::<Ad, 2, Bool>::from_data(TensorData::new(cells, [t, t]), &Default::default()).reshape([1, 1, t, t])
}

/// The keys a query sees are those the definition does not hide: every
/// query, length, window and mask.
#[test]
fn a_query_sees_the_keys_of_its_window() {
    for t in 1..9 {
        for window in [None, Some(1), Some(2), Some(3), Some(t), Some(t + 1)] {
            for causal in [true, false] {
                let keys = Keys { causal, window };
                for i in 0..t {
                    let seen: Vec<usize> = (0..t).filter(|&j| !hides(keys, i, j)).collect();
                    assert_eq!(keys.range(i, t).collect::<Vec<_>>(), seen, "{keys:?}, query {i} of {t}");
                    let seeing: Vec<usize> = (0..t).filter(|&q| keys.range(q, t).contains(&i)).collect();
                    assert_eq!(keys.queries(i, t).collect::<Vec<_>>(), seeing, "{keys:?}, key {i} of {t}");
                }
                let narrowed = (0..t).any(|i| keys.range(i, t).len() < if causal { i + 1 } else { t });
                assert_eq!(keys.windowed(t), narrowed, "{keys:?} of {t}");
            }
        }
    }
}

/// A head's band holds every key each query sees, for every mask and
/// lengths about the band's blocks; masks that hide keys of long
/// sequences skip some of them (a causal mask about half).
#[test]
fn a_band_holds_every_key_a_query_sees() {
    let inside = |band: &Band, r: usize, c: usize| band.blocks().iter().any(|(x, y)| x.contains(&r) && y.contains(&c));
    for t in [1, 5, 63, 64, 65, 130, 200] {
        for window in [None, Some(1), Some(3), Some(64), Some(100), Some(t + 1)] {
            for causal in [true, false] {
                let keys = Keys { causal, window };
                let band = super::cpu::band(keys, t);
                for (i, j) in (0..t * t).map(|c| (c / t, c % t)).filter(|&(i, j)| !hides(keys, i, j)) {
                    assert!(inside(&band, i, j), "{keys:?} of {t}: query {i}, key {j}");
                }
                let hiding = t >= 130 && (causal || window.is_some_and(|w| w <= 64));
                let most = if causal { t * (t + 1) / 2 + 64 * t } else { t * t - 1 };
                assert!(!hiding || band.entries() <= most, "{keys:?} of {t}: {} of {} entries", band.entries(), t * t);
            }
        }
    }
}

/// Every mask, soft-capped (at 1.5, which large scores reach) or not,
/// with ALiBi's bias or not.
fn logit_cases() -> Vec<(Keys, Option<f64>, bool)> {
    let kinds = [(None, false), (Some(1.5), false), (None, true), (Some(1.5), true)];
    masks().into_iter().flat_map(|keys| kinds.map(|(cap, alibi)| (keys, cap, alibi))).collect()
}

/// ALiBi's bias as burn's attention takes it, from the definition: `−m_h
/// · |i − j|` (`m` the slopes of 3 heads: 2⁻⁴ and 2⁻⁸, the two of 2 heads,
/// then 2⁻², the first of the odd ones of 4), expanded to `[batch, 3, t,
/// t]`.
fn alibi_of(batch: usize, t: usize) -> Tensor<Ad, 4> {
    let slopes = [2f32.powi(-4), 2f32.powi(-8), 2f32.powi(-2)];
    let cells: Vec<f32> = (0..3 * t * t).map(|c| -slopes[c / (t * t)] * ((c / t) % t).abs_diff(c % t) as f32).collect();
    Tensor::<Ad, 4>::from_data(TensorData::new(cells, [1, 3, t, t]), &Default::default()).expand([batch, 3, t, t])
}

/// The attention kernel and burn's attention (its autodiff composition)
/// agree on value and on the gradients of q, k and v, for every mask
/// (burn's given what the window hides), soft-capped or not, with ALiBi's
/// bias or not (burn's given it); and with
/// the query's bias given to the kernel, with burn's on `q + bq` and `k +
/// bk`: uncapped, the key's bias changes nothing, and its gradient is
/// zero (so the kernel is not given it); capped, it does change the
/// weights (the tanh bends the constant it adds to a row), so the kernel
/// is given `k + bk`.
#[test]
fn softmax_attention_matches_burn() {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    for (keys, softcap, alibi) in logit_cases() {
        let scores = Scores::new(0.5, keys).capped(softcap).with_alibi(alibi);
        let bias = || alibi.then(|| alibi_of(2, 7));
        let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
        let (bq, bk) = (random([12]), random([12]));
        // Each graph its own `k + bk` (a backward consumes the nodes it
        // walks).
        let k1 = || k.clone() + bk.clone().reshape([1, 3, 1, 4]);
        let kernel_k = if softcap.is_some() { k1() } else { k.clone() };
        let ours = super::attention(q.clone(), kernel_k, v.clone(), Some(bq.clone()), scores);
        let options = AttentionModuleOptions { scale: Some(0.5), softcap, is_causal: false };
        let hidden = || Some(hidden_by(keys, 7).expand([2, 3, 7, 7]));
        let q1 = q.clone() + bq.clone().reshape([1, 3, 1, 4]);
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q1, k1(), v4, hidden(), bias(), options).swap_dims(1, 2).reshape([2, 7, 12]);
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        let dbq = (bq.grad(&g1).expect("kernel gradient"), bq.grad(&g2).expect("burn gradient"));
        dbq.0.to_data().assert_approx_eq::<f32>(&dbq.1.to_data(), Tolerance::absolute(1e-3));
        let dbk = (bk.grad(&g1), bk.grad(&g2).expect("burn gradient"));
        match dbk {
            (None, dbk) => {
                dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4))
            }
            (Some(ours), theirs) => {
                ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-3))
            }
        }
        assert_eq!(bk.grad(&g1).is_some(), softcap.is_some());
    }
    for (keys, softcap, alibi) in logit_cases() {
        let scores = Scores::new(0.5, keys).capped(softcap).with_alibi(alibi);
        let bias = || alibi.then(|| alibi_of(2, 7));
        let [q, k] = [0, 1].map(|_| random([2, 3, 7, 4]));
        // Large logits, so that a missing max shift would overflow.
        let q = (q * 30.0).detach().require_grad();
        // `v` (and the output) with the heads merged: `[2, 7, 3 · 4]`;
        // `v` also read by a product made after the attention, so that
        // the attention's `dv` is added into that product's.
        let v = random([2, 7, 12]);
        let w = random([12, 12]);
        let ours =
            super::attention(q.clone(), k.clone(), v.clone(), None, scores) + linear(v.clone(), w.clone(), None, false);
        let options = AttentionModuleOptions { scale: Some(0.5), softcap, is_causal: false };
        let hidden = || Some(hidden_by(keys, 7).expand([2, 3, 7, 7]));
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q.clone(), k.clone(), v4, hidden(), bias(), options).swap_dims(1, 2).reshape([2, 7, 12])
            + v.clone().matmul(w.clone().unsqueeze());
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q.clone(), k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        // Alone, `dv` is written fresh.
        let (q, k, v) = (random([2, 3, 7, 4]), random([2, 3, 7, 4]), random([2, 7, 12]));
        let ours = super::attention(q.clone(), k.clone(), v.clone(), None, scores);
        let v4 = v.clone().reshape([2, 7, 3, 4]).swap_dims(1, 2);
        let theirs = attention(q.clone(), k.clone(), v4, hidden(), bias(), options).swap_dims(1, 2).reshape([2, 7, 12]);
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
    }
}

/// The CPU's attention on heads split from `[batch, tokens, heads · d]`
/// (the layers' strided views), forward and backward, and its weights'
/// softmax and backward, against the reference.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    // Heads split from `[batch, tokens, heads · d]` (the layers' strided
    // views), forward and backward, for every mask, `dv` fresh and added
    // into a gradient from elsewhere; 5 tokens, and 150 (the band's blocks
    // of queries and of keys several, and windows of 9 and 100 among
    // them).
    heads_equal_the_reference(5, logit_cases());
    let long = [Keys { causal: true, window: Some(100) }, Keys { causal: false, window: Some(100) }];
    heads_equal_the_reference(150, logit_cases().into_iter().chain(long.map(|keys| (keys, Some(1.5), true))).collect());
    // Attention weights: [2, 3, 6, 6] scores, every mask, capped or not,
    // with ALiBi's bias or not.
    let (s4, dp) = (r([6, 36]), r([6, 36]));
    let four = |p| C::float_reshape(p, [2, 3, 6, 6].into());
    let flat = |p| C::float_reshape(p, [6, 36].into());
    for (keys, cap, alibi) in logit_cases() {
        let scores = Scores::new(0.7, keys).capped(cap).with_alibi(alibi);
        let p1 = C::softmax_scores(four(s4.clone()), scores);
        let p2 = reference::softmax_scores::<C>(four(s4.clone()), scores);
        same(flat(p1.clone()), flat(p2));
        let d1 = C::softmax_scores_backward(p1.clone(), four(dp.clone()), 0.7);
        let d2 = reference::softmax_scores_backward::<C>(p1, four(dp.clone()), 0.7);
        same(flat(d1), flat(d2));
    }
}

/// The CPU's attention of `t` tokens (2 sequences, 3 heads of 4) on heads
/// split from `[2, t, 12]`, forward and backward, against the reference:
/// with a query bias or not, every gradient or only `dk`, `dv` fresh or
/// added into another gradient.
fn heads_equal_the_reference(t: usize, cases: Vec<(Keys, Option<f64>, bool)>) {
    let heads = |p| split_heads::<C>(C::float_reshape(p, [2, t, 12].into()), 3);
    let [q, k, v, g] = [0, 1, 2, 3].map(|_| heads(r([1, 24 * t])));
    let merged = |p| C::float_reshape(merge_heads::<C>(p), [2 * t, 12].into());
    let v_merged = C::float_reshape(merge_heads::<C>(v.clone()), [2, t, 12].into());
    let bias = C::float_reshape(r([1, 12]), [12].into());
    let cases = cases.into_iter().flat_map(|c| [(c, None), (c, Some(bias.clone()))]);
    for ((keys, cap, alibi), bq) in cases {
        let scores = Scores::new(0.5, keys).capped(cap).with_alibi(alibi);
        let (o1, p1) = C::attention_forward(q.clone(), k.clone(), v.clone(), bq.clone(), scores);
        let (o2, p2) = reference::attention_forward::<C>(q.clone(), k.clone(), v.clone(), bq.clone(), scores);
        // The forward alone (inference's: no weights kept), the same.
        let alone = C::softmax_attention(q.clone(), k.clone(), v_merged.clone(), bq.clone(), scores);
        same(C::float_reshape(alone, [2 * t, 12].into()), merged(o2.clone()));
        same(merged(o1), merged(o2));
        // The weights kept by their band alone, the rest zero.
        assert_eq!(p1.layout().num_dims(), 3, "the band's entries of each head");
        let whole = super::cpu::whole_weights(p1.clone(), keys, &q);
        same(C::float_reshape(whole.clone(), [6 * t, t].into()), C::float_reshape(p2, [6 * t, t].into()));
        let accs = [None, Some(C::float_reshape(r([1, 24 * t]), [2, t, 12].into()))];
        for (acc, wants) in accs.into_iter().flat_map(|a| [(a.clone(), [true; 3]), (a, [false, true, false])]) {
            let qkv = [q.clone(), k.clone(), v.clone()];
            let (p, go) = (p1.clone(), g.clone());
            let ours = C::attention_backward(qkv.clone(), bq.clone(), (p, None), go, (scores, acc.clone()), wants);
            let theirs =
                reference::attention_backward::<C>(qkv, bq.clone(), whole.clone(), g.clone(), (scores, acc), wants);
            for (i, (a, b)) in ours.into_iter().zip(theirs).enumerate() {
                let wanted = if i < 3 { wants[i] } else { bq.is_some() };
                assert_eq!((a.is_some(), b.is_some()), (wanted, wanted), "gradient {i}");
                match (a, b) {
                    (Some(a), Some(b)) if i < 3 => same(merged(a), merged(b)),
                    (Some(a), Some(b)) => same1(a, b),
                    _ => {}
                }
            }
        }
    }
}
