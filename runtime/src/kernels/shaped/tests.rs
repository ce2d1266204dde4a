//! The shaped attention against its composition from the attention and
//! burn's ops, and the CPU kernels against the reference maths, under
//! every mask the attention family's tests try (windows included).

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Tensor, TensorData, Tolerance};

use super::{reference, MixAddend, Shaped, ShapedOps};
use crate::kernels::testing::*;
use crate::kernels::*;

/// The `centre` term of `v: [batch, t, width]` from the definition: the
/// matrix averaging the keys that [`hides`] does not hide, written out.
fn centre_by_matrix(v: Tensor<Ad, 3>, keys: Keys) -> Tensor<Ad, 3> {
    let [b, t, _] = v.dims();
    let mut c = vec![0.0f32; t * t];
    for (i, row) in c.chunks_mut(t).enumerate() {
        let seen: Vec<usize> = (0..t).filter(|&j| !hides(keys, i, j)).collect();
        seen.iter().for_each(|&j| row[j] = 1.0 / seen.len() as f32);
    }
    let c = Tensor::<Ad, 2>::from_data(TensorData::new(c, [t, t]), &Default::default());
    c.unsqueeze::<3>().expand([b, t, t]).matmul(v)
}

/// The fused shaped mix is its composition from burn's ops, under every
/// mask, with per-head, single and negated gains: value and the
/// gradients of v, o and all three gains.
#[test]
fn mix_matches_its_composition() {
    for keys in masks() {
        let (v, o) = (random([2, 5, 12]), random([2, 5, 12]));
        let (alpha, beta, gamma) = (random([3]), random([1]), random([3]));
        let centre = |v: Tensor<Ad, 3>| centre_by_matrix(v, keys);
        let heads = |x: Tensor<Ad, 3>, g: Tensor<Ad, 1>| {
            let n = g.dims()[0];
            (x.reshape([2, 5, n, 12 / n]) * g.reshape([1, 1, n, 1])).reshape([2, 5, 12])
        };
        let theirs = heads(v.clone(), alpha.clone())
            + heads(o.clone(), beta.clone())
            + heads(centre(v.clone()), gamma.clone().neg());
        let ours = mix(v.clone(), o.clone(), [alpha.clone(), beta.clone(), gamma.clone().neg()], keys);
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        // `v` also read by a product made after the mix: its gradient
        // is registered first, and the mix's `dv` is added into it.
        let w = random([12, 12]);
        let ours = ours + linear(v.clone(), w.clone(), None, false);
        let theirs = theirs + v.clone().matmul(w.clone().unsqueeze());
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[v, o], &g1, &g2);
        grads_agree(&[alpha, beta, gamma], &g1, &g2);
        grads_agree(&[w], &g1, &g2);
    }
}

/// The shaped attention through its mix in one kernel (and summed with
/// another branch) is the attention, then the mix (then the gained
/// sum): value and every gradient, under every mask, `v` also read by a
/// product made after it, with the query's bias or without (and, with
/// it, theirs with a key bias, which changes nothing); 5 tokens and 150
/// (several blocks of the weights' band).
#[test]
fn shaped_attention_matches_attention_then_mix() {
    let masks = masks();
    for (t, i) in [5, 150].into_iter().flat_map(|t| (0..8 * masks.len()).map(move |i| (t, i))) {
        let (addend, shared, biased) = (i & 1 == 0, i & 2 == 0, i & 4 == 0);
        let keys = masks[i / 8];
        let (q, k, v) = (random([2, 3, t, 4]), random([2, 3, t, 4]), random([2, t, 12]));
        let gains = [random([3]), random([1]), random([3])];
        let (b, beta_sa, beta_ff, w) = (random([2, t, 12]), random([1]), random([3]), random([12, 12]));
        let (bq, bk) = (random([12]), random([12]));
        let add = addend.then(|| (b.clone(), beta_sa.clone(), beta_ff.clone()));
        // `v` also read by a product (its gradient added into), or not.
        let extra = |v: Tensor<Ad, 3>| match shared {
            true => linear(v, w.clone(), None, false),
            false => v.zeros_like(),
        };
        let bias = biased.then(|| bq.clone());
        let ours = shaped_attention([q.clone(), k.clone()], bias, v.clone(), gains.clone(), (0.5, keys), add)
            + extra(v.clone());
        let (q1, k1) = match biased {
            true => (q.clone() + bq.clone().reshape([1, 3, 1, 4]), k.clone() + bk.clone().reshape([1, 3, 1, 4])),
            false => (q.clone(), k.clone()),
        };
        let o = attention(q1, k1, v.clone(), None, Scores::new(0.5, keys));
        let mixed = mix(v.clone(), o, gains.clone(), keys);
        let theirs = match addend {
            true => scaled_sum(mixed, b.clone(), beta_sa.clone(), beta_ff.clone()),
            false => mixed,
        } + extra(v.clone());
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[q, k], &g1, &g2);
        grads_agree(&[v], &g1, &g2);
        grads_agree(&gains, &g1, &g2);
        if addend {
            grads_agree(&[b], &g1, &g2);
            grads_agree(&[beta_sa, beta_ff], &g1, &g2);
        }
        if biased {
            // The key's bias (theirs only) changes nothing and has a
            // zero gradient.
            grads_agree(&[bq], &g1, &g2);
            let dbk = bk.grad(&g2).expect("burn gradient");
            dbk.to_data().assert_approx_eq::<f32>(&dbk.zeros_like().to_data(), Tolerance::absolute(1e-4));
        }
    }
}

/// The mix alone (its `dv` written fresh) has burn's gradients.
#[test]
fn mix_alone_has_the_composed_gradients() {
    let (v, o) = (random([2, 6, 8]), random([2, 6, 8]));
    let gains = [random([2]), random([2]), random([2])];
    for keys in masks() {
        let ours = mix(v.clone(), o.clone(), gains.clone(), keys);
        let p = |t: &Tensor<Ad, 3>| t.clone().into_primitive().tensor();
        let theirs = Tensor::<Ad, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(reference::mix::<Ad>(
            p(&v),
            p(&o),
            gains.clone().map(|g| g.into_primitive().tensor()),
            keys,
        )));
        ours.to_data().assert_approx_eq::<f32>(&theirs.to_data(), Tolerance::absolute(1e-4));
        let (g1, g2) = backward_both(ours, theirs);
        grads_agree(&[v.clone(), o.clone()], &g1, &g2);
        grads_agree(&gains, &g1, &g2);
    }
}

/// The `centre` term is the average of what each token sees, under
/// every mask: value and gradient against the matrix written out; the
/// running mean (causal, no window) starts at the first token and ends at
/// the mean of all.
#[test]
fn centre_averages_what_each_token_sees() {
    for keys in masks() {
        let x = random::<3>([2, 6, 5]);
        same_gradients(std::slice::from_ref(&x), centre(x.clone(), keys), centre_by_matrix(x.clone(), keys));
    }
    let x = random::<3>([2, 6, 5]);
    let ours = centre(x.clone(), Keys::all(true));
    let first = ours.clone().slice([0..2, 0..1, 0..5]);
    first.to_data().assert_approx_eq::<f32>(&x.clone().slice([0..2, 0..1, 0..5]).to_data(), Tolerance::absolute(1e-6));
    let last = ours.slice([0..2, 5..6, 0..5]);
    last.to_data().assert_approx_eq::<f32>(&x.mean_dim(1).to_data(), Tolerance::absolute(1e-5));
}

/// The CPU's `centre` and its backward against the reference, under
/// every mask.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    let x = r([21, 24]);
    let x3 = C::float_reshape(x.clone(), [3, 7, 24].into());
    let t3 = |p| tensor::<C, 3>(p).reshape([21, 24]);
    for keys in masks() {
        let (m1, m2) = (C::centre(x3.clone(), keys), reference::centre::<C>(x3.clone(), keys));
        same(primitive(t3(m1)), primitive(t3(m2)));
        let (m1, m2) = (C::centre_backward(x3.clone(), keys), reference::centre_backward::<C>(x3.clone(), keys));
        same(primitive(t3(m1)), primitive(t3(m2)));
    }
}

/// The CPU's shaped attention alone (inference's: no weights kept) and
/// through the forward that keeps them equal the reference, under every
/// mask, with the query's bias or not, summed with another branch or
/// not; 5 tokens and 150 (several blocks of the weights' band).
#[test]
fn the_cpu_forward_equals_the_reference() {
    for t in [5, 150] {
        let seq = |p| C::float_reshape(p, [2, t, 12].into());
        let heads = |p| C::float_reshape(p, [2, 3, t, 4].into());
        let vector = |n: usize| C::float_reshape(r([1, n]), [n].into());
        for (keys, case) in masks().into_iter().flat_map(|keys| (0..4).map(move |case| (keys, case))) {
            let a = Shaped {
                q: heads(r([1, 24 * t])),
                k: heads(r([1, 24 * t])),
                v: seq(r([1, 24 * t])),
                gains: [vector(3), vector(1), vector(3)],
                scale: 0.5,
                keys,
                bq: (case & 1 == 1).then(|| vector(12)),
            };
            let add =
                (case & 2 == 2).then(|| MixAddend { b: seq(r([1, 24 * t])), beta_sa: vector(1), beta_ff: vector(3) });
            let flat = |y| C::float_reshape(y, [2 * t, 12].into());
            let theirs = flat(reference::shaped_attention_forward::<C>(a.clone(), add.clone()).0);
            same(flat(C::shaped_attention(a.clone(), add.clone())), theirs.clone());
            same(flat(C::shaped_attention_forward(a, add).0), theirs);
        }
    }
}
