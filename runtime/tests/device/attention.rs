//! The attention families' CubeCL kernels against their reference maths
//! on the same device: the shaped attention (by rows and as products), the
//! softmax attention, and the products route's softmax and mix kernels.
//! Part of the device kernels test (`device/kernels.rs`, which runs them).

use super::kernels::{gap_of_scale, values, Draws};
use blkc_runtime::kernels::{Keys, Scores};

/// The shaped attention's CubeCL kernels (`kernels/shaped/cube/`)
/// against the reference maths on the same device: the output and every
/// gradient, causal or not, with a window or not, with the query's bias
/// or not, summed with another branch or not, per-head or single gains,
/// `v` read elsewhere;
/// and the route of products (its kept softmax term read by its backward).
pub(super) fn shaped_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::attention::Route;
    use blkc_runtime::kernels::shaped::reference;
    use blkc_runtime::kernels::{MixAddend, Shaped};
    let draws = Draws::new(18);
    let random = |shape: &[usize]| draws.normal::<B>(device, shape);
    // `q` and `k` as the products leave them (`[batch, tokens, heads, d]`
    // in memory, seen as `[batch, heads, tokens, d]`), or contiguous.
    let heads_view = |token_major: bool, [b, h, t, d]: [usize; 4]| match token_major {
        true => B::float_swap_dims(random(&[b, t, h, d]), 1, 2),
        false => random(&[b, h, t, d]),
    };
    let mut worst = (0.0f32, 0, "");
    for case in 0..32 {
        let (causal, biased, added, per_head) = (case & 1 == 0, case & 2 == 0, case & 4 == 0, case & 8 == 0);
        let token_major = case & 16 == 0;
        // Windows of 3, 1 and 2 of the 7 tokens, or none.
        let window = [None, Some(3), Some(1), None, Some(2)][case % 5];
        // Heads of 8 entries are read as vectors of 4, of 6 one by one.
        let d = if case % 3 == 1 { 6 } else { 8 };
        let (batch, heads, tokens) = (2, 3, 7);
        let n = if per_head { heads } else { 1 };
        let shaped = Shaped {
            q: heads_view(token_major, [batch, heads, tokens, d]),
            k: heads_view(token_major, [batch, heads, tokens, d]),
            v: random(&[batch, tokens, heads * d]),
            gains: [random(&[n]), random(&[1]), random(&[n])],
            scale: 1.0 / (d as f64).sqrt(),
            keys: Keys { causal, window },
            bq: biased.then(|| random(&[heads * d])),
        };
        let add = added.then(|| MixAddend {
            b: random(&[batch, tokens, heads * d]),
            beta_sa: random(&[n]),
            beta_ff: random(&[heads]),
        });
        let (ours, kept, o) = B::shaped_attention_forward(shaped.clone(), add.clone());
        let rank = burn::tensor::TensorMetadata::shape(&kept).num_dims();
        assert_eq!(rank, 3, "case {case}: the kernels ran (they keep row statistics, not the weights)");
        assert!(o.is_none(), "case {case}: by rows, no softmax term is kept");
        let (theirs, p, _) = reference::shaped_attention_forward::<B>(shaped.clone(), add.clone());
        let theirs = values::<B>(theirs);
        let forward = gap_of_scale(&values::<B>(ours), &theirs);
        assert!(forward < 1e-5, "case {case}: outputs differ by {forward:e}");
        if forward > worst.0 {
            worst = (forward, case, "the output");
        }
        // Under a window of one each query's softmax weighs its own key
        // alone: the scores' gradients (`dq`, `dk`, `dbq`) are zero in
        // exact arithmetic, and what is left is round-off, measured
        // against the scale of the values instead (1 here).
        let gap = |name: &str, a: &[f32], b: &[f32]| match window == Some(1) && ["dq", "dk", "dbq"].contains(&name) {
            true => a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())),
            false => gap_of_scale(a, b),
        };
        let dy = random(&[batch, tokens, heads * d]);
        let acc = (case % 3 == 0).then(|| random(&[batch, tokens, heads * d]));
        // The route of products too (the weights kept, and the softmax
        // term, which its backward then does not recompute).
        let (as_products, weights, o) =
            Route::Products.scope(|| B::shaped_attention_forward(shaped.clone(), add.clone()));
        let rank = burn::tensor::TensorMetadata::shape(&weights).num_dims();
        assert_eq!(rank, 4, "case {case}: as products, the weights are kept");
        let o = o.unwrap_or_else(|| panic!("case {case}: as products, the softmax term is kept"));
        let e = gap_of_scale(&values::<B>(as_products), &theirs);
        assert!(e < 1e-5, "case {case}: as products, the output differs by {e:e}");
        let g2 = Route::Products.scope(|| {
            B::shaped_attention_backward(shaped.clone(), add.clone(), (weights, Some(o)), dy.clone(), acc.clone())
        });
        let r2 =
            reference::shaped_attention_backward::<B>(shaped.clone(), add.clone(), p.clone(), dy.clone(), acc.clone());
        for (name, a, b) in [("dq", g2.dq, r2.dq), ("dk", g2.dk, r2.dk), ("dv", g2.dv, r2.dv)] {
            let e = gap(name, &values::<B>(a), &values::<B>(b));
            assert!(e < 1e-5, "case {case}: as products, {name} differs by {e:e} of its largest");
        }
        for (a, b) in g2.dgains.into_iter().zip(r2.dgains) {
            let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
            assert!(e < 1e-4, "case {case}: as products, a gain's gradient differs by {e:e} of its largest");
        }
        let g = B::shaped_attention_backward(shaped.clone(), add.clone(), (kept, None), dy.clone(), acc.clone());
        let r = reference::shaped_attention_backward::<B>(shaped, add, p, dy, acc);
        let mut pairs = vec![("dq", g.dq, r.dq), ("dk", g.dk, r.dk), ("dv", g.dv, r.dv)];
        for (name, (a, b)) in ["dalpha", "dbeta", "dgamma"].into_iter().zip(g.dgains.into_iter().zip(r.dgains)) {
            pairs.push((name, a, b));
        }
        if let (Some(a), Some(b)) = (g.addend, r.addend) {
            for (name, (x, y)) in ["db", "dbeta_sa", "dbeta_ff"].into_iter().zip(a.into_iter().zip(b)) {
                pairs.push((name, x, y));
            }
        }
        if let (Some(a), Some(b)) = (g.dbq, r.dbq) {
            pairs.push(("dbq", a, b));
        }
        assert_eq!(pairs.len(), 6 + 3 * usize::from(added) + usize::from(biased), "case {case}: every gradient");
        for (name, a, b) in pairs {
            let shapes = (burn::tensor::TensorMetadata::shape(&a), burn::tensor::TensorMetadata::shape(&b));
            assert_eq!(shapes.0, shapes.1, "case {case}: {name}'s shape");
            let e = gap(name, &values::<B>(a), &values::<B>(b));
            if e > worst.0 {
                worst = (e, case, name);
            }
            // A gain's (or the bias's) gradient is a sum over batch, tokens
            // and a head's entries (all heads' for a single gain: 336 terms
            // here), in another order than the reference's; it may cancel
            // to well below its terms, so its round-off is measured against
            // less.
            let reduced = ["dalpha", "dbeta", "dgamma", "dbeta_sa", "dbeta_ff", "dbq"].contains(&name);
            let tolerance = if reduced { 1e-4 } else { 1e-5 };
            assert!(e < tolerance, "case {case}: {name} differs by {e:e} of its largest");
        }
    }
    println!(
        "shaped kernels against the reference: largest gap {:.1e} of scale ({} of case {})",
        worst.0, worst.2, worst.1
    );
}

/// The softmax attention's CubeCL kernels (`kernels/attention/cube.rs`,
/// the shaped kernels with a plain softmax's gains) against the reference:
/// the output, and every gradient wanted or some, causal or not, with a
/// sliding window or not, soft-capped or not, with ALiBi's bias or not,
/// with the query's bias or not, `dv` added into a gradient from elsewhere
/// or not, with the heads split from the layers' strided views.
pub(super) fn attention_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::attention::reference;
    use blkc_runtime::kernels::tensor::split_heads;
    let draws = Draws::new(19);
    let (batch, heads, tokens, d) = (2, 3, 9, 8);
    let split = |x| split_heads::<B>(x, heads);
    let mut worst = 0.0f32;
    let mut kept_ran = false;
    for case in 0..24 {
        let (causal, biased, added) = (case & 1 == 0, case & 2 == 0, case & 4 == 0);
        // Windows of 4 and of 1 (a token sees itself only) of the 9
        // tokens; then soft-capped at 1 (which the logits pass), with a
        // window of 3 or none; then with ALiBi's bias (3 heads: slopes of
        // both kinds), capped and windowed from 20.
        let window = match case {
            8..12 => Some(if biased { 4 } else { 1 }),
            12..16 | 20.. => biased.then_some(3),
            _ => None,
        };
        let keys = Keys { causal, window };
        let capped = (12..16).contains(&case) || case >= 20;
        let scores = Scores::new(0.35, keys).capped(capped.then_some(1.0)).with_alibi(case >= 16);
        let [q, k, v] = [0; 3].map(|_| split(draws.normal::<B>(device, &[batch, tokens, heads * d])));
        let bq = biased.then(|| draws.normal::<B>(device, &[heads * d]));
        let (o, kept) = B::attention_forward(q.clone(), k.clone(), v.clone(), bq.clone(), scores);
        let rank = burn::tensor::TensorMetadata::shape(&kept).num_dims();
        assert_eq!(rank, 3, "case {case}: the kernels ran (they keep row statistics, not the weights)");
        let (o2, p) = reference::attention_forward::<B>(q.clone(), k.clone(), v.clone(), bq.clone(), scores);
        let merged = |x| blkc_runtime::kernels::tensor::merge_heads::<B>(x);
        let e = gap_of_scale(&values::<B>(merged(o.clone())), &values::<B>(merged(o2)));
        assert!(e < 1e-5, "case {case}: outputs differ by {e:e} of scale");
        worst = worst.max(e);
        let g = split(draws.normal::<B>(device, &[batch, tokens, heads * d]));
        let wants = if !(4..12).contains(&case) { [true; 3] } else { [false, true, true] };
        let acc = added.then(|| draws.normal::<B>(device, &[batch, tokens, heads * d]));
        let qkv = [q, k, v];
        let mask = (scores, acc.clone());
        // From the row statistics alone, and with the output kept (the
        // rows' kernel then reads `D_i` from it, which rounds otherwise:
        // `dq` and `dk` differ from the first in their last bits).
        let ours = B::attention_backward(qkv.clone(), bq.clone(), (kept.clone(), None), g.clone(), mask.clone(), wants);
        let from_o = B::attention_backward(qkv.clone(), bq.clone(), (kept, Some(o)), g.clone(), mask, wants);
        let theirs = reference::attention_backward::<B>(qkv, bq.clone(), p, g, (scores, acc), wants);
        for (i, ((a, a2), b)) in ours.into_iter().zip(from_o).zip(theirs).enumerate() {
            let wanted = if i < 3 { wants[i] } else { biased };
            assert_eq!((a.is_some(), a2.is_some(), b.is_some()), (wanted, wanted, wanted), "case {case}: gradient {i}");
            if let (Some(a), Some(a2), Some(b)) = (a, a2, b) {
                let (a, a2, b) = if i < 3 { (merged(a), merged(a2), merged(b)) } else { (a, a2, b) };
                let (a, a2, b) = (values::<B>(a), values::<B>(a2), values::<B>(b));
                let (e, e2) = (gap_of_scale(&a, &b), gap_of_scale(&a2, &b));
                // The query bias's gradient sums over batch and tokens.
                let tolerance = if i == 3 { 1e-4 } else { 1e-5 };
                assert!(e < tolerance, "case {case}: gradient {i} differs by {e:e} of scale");
                assert!(e2 < tolerance, "case {case}: gradient {i} from the kept output differs by {e2:e} of scale");
                if i == 0 {
                    kept_ran |= a != a2;
                }
                worst = worst.max(e).max(e2);
            }
        }
    }
    assert!(kept_ran, "the rows' kernel read the kept output");
    println!("attention kernels against the reference: largest gap {worst:.1e} of scale");
}

/// The softmax's row kernels (`kernels/attention/cube.rs`, what the
/// attention runs as products) against the reference: the weights of
/// scores `[batch, heads, t_q, t_k]` causal or not, with a window of 3 or
/// none, soft-capped at 4 or not, with ALiBi's bias or not (rows wider
/// and narrower than a cube, `t_q` ≠ `t_k`, large scores), and the
/// scores' gradient, over a `dp` held elsewhere (left as it was) and over
/// one held nowhere else.
pub(super) fn softmax_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::attention::reference;
    let draws = Draws::new(48);
    let mut worst = 0.0f32;
    for (shape, scale) in
        [([2usize, 3, 9, 9], 0.35), ([1, 2, 5, 7], 1.0), ([1, 1, 300, 300], 0.125), ([2, 1, 1, 3], 2.0)]
    {
        let masks = [false, true].map(|causal| [None, Some(3)].map(|window| Keys { causal, window }));
        let logits = [(None, false), (Some(4.0), false), (None, true), (Some(4.0), true)];
        let cases = masks.into_iter().flatten().flat_map(|keys| logits.map(|(cap, alibi)| (keys, cap, alibi)));
        for (keys, cap, alibi) in cases {
            let scores = Scores::new(scale, keys).capped(cap).with_alibi(alibi);
            let s = B::float_mul_scalar(draws.normal::<B>(device, &shape), 6.0.into());
            let p = B::softmax_scores(s.clone(), scores);
            let p2 = reference::softmax_scores::<B>(s, scores);
            let dp = draws.normal::<B>(device, &shape);
            let before = values::<B>(dp.clone());
            let ds = B::softmax_scores_backward(p2.clone(), dp.clone(), scale);
            assert_eq!(values::<B>(dp.clone()), before, "{shape:?}: a dp held elsewhere is unchanged");
            let ds2 = reference::softmax_scores_backward::<B>(p2.clone(), dp.clone(), scale);
            let alone = B::float_add_scalar(dp, 0.0.into());
            let ds3 = B::softmax_scores_backward(p2.clone(), alone, scale);
            for (name, a, b) in [("p", p, p2), ("ds", ds, ds2.clone()), ("ds in place", ds3, ds2)] {
                let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
                assert!(e < 1e-5, "{shape:?}, {keys:?}, cap {cap:?}, ALiBi {alibi}: {name} differs by {e:e} of scale");
                worst = worst.max(e);
            }
        }
    }
    assert!(worst > 0.0, "the softmax kernels ran");
    println!("softmax kernels against the reference: largest gap {worst:.1e} of scale");
}

/// The shaped mix's kernels (`kernels/shaped/cube/mix.rs`) against the
/// reference: the mix and its backward, causal or not, with a window of
/// 4, 3 or 1 or none, gains one per head
/// or one in all (mixed), heads read as vectors of 4 and one by one, `dv`
/// added into a gradient from elsewhere or not.
pub(super) fn mix_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::shaped::reference;
    let draws = Draws::new(49);
    let mut worst = 0.0f32;
    for (batch, tokens, heads, d) in [(2usize, 9usize, 3usize, 8usize), (3, 5, 2, 6), (1, 40, 4, 4)] {
        let width = heads * d;
        let cases = [
            ([heads, heads, heads], Keys::all(true), false),
            ([1, heads, 1], Keys::all(false), true),
            ([heads, 1, heads], Keys::all(true), true),
            ([heads, heads, heads], Keys { causal: true, window: Some(4) }, true),
            ([1, heads, 1], Keys { causal: false, window: Some(3) }, false),
            ([heads, 1, heads], Keys { causal: true, window: Some(1) }, false),
        ];
        for (lengths, keys, with_acc) in cases {
            let gains = lengths.map(|n| draws.normal::<B>(device, &[n]));
            let v = draws.normal::<B>(device, &[batch, tokens, width]);
            let o = draws.normal::<B>(device, &[batch, tokens, width]);
            let dy = draws.normal::<B>(device, &[batch, tokens, width]);
            let acc = with_acc.then(|| draws.normal::<B>(device, &[batch, tokens, width]));
            let y = B::mix(v.clone(), o.clone(), gains.clone(), keys);
            let y2 = reference::mix::<B>(v.clone(), o.clone(), gains.clone(), keys);
            let (dv, d_o, dg) = B::mix_backward(v.clone(), o.clone(), gains.clone(), dy.clone(), keys, acc.clone());
            let (dv2, d_o2, dg2) = reference::mix_backward::<B>(v, o, gains, dy, keys, acc);
            let [da, db, dc] = dg;
            let [da2, db2, dc2] = dg2;
            let pairs = [
                ("y", y, y2),
                ("dv", dv, dv2),
                ("do", d_o, d_o2),
                ("dalpha", da, da2),
                ("dbeta", db, db2),
                ("dgamma", dc, dc2),
            ];
            for (name, a, b) in pairs {
                let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
                // A gain's gradient sums up to 640 products here (a single
                // gain: every token and column), in another order than the
                // reference's: measured against less, as the shaped
                // kernels' are.
                let tolerance = if name.starts_with("d") && !["dv", "do"].contains(&name) { 1e-4 } else { 1e-5 };
                assert!(
                    e < tolerance,
                    "{batch}×{tokens}×{heads}×{d}, gains {lengths:?}, {keys:?}: {name} differs by {e:e} of scale"
                );
                worst = worst.max(e);
            }
        }
    }
    assert!(worst > 0.0, "the mix kernels ran");
    println!("mix kernels against the reference: largest gap {worst:.1e} of scale");
}
