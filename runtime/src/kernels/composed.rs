//! The kernels' definitions from burn's primitive ops: the default of every
//! backend, and the fallback of the fused ones for other dtypes.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Bool, IndexingUpdateOp, Int, Tensor, TensorMetadata};

use super::call::{primitive, tensor};

pub fn embed<B: Backend>(
    table: FloatTensor<B>,
    tokens: IntTensor<B>,
    positions: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let x = B::float_select(table, 0, tokens);
    let Some(p) = positions else { return x };
    let (xs, ps) = (x.shape(), p.shape());
    let (n, t, d) = (xs[0], ps[0], ps[1]);
    let x = B::float_reshape(x, [n / t.max(1), t, d].into());
    let sum = B::float_add(x, B::float_reshape(p, [1, t, d].into()));
    B::float_reshape(sum, [n, d].into())
}

pub fn embed_backward<B: Backend>(
    dy: FloatTensor<B>,
    tokens: IntTensor<B>,
    vocab: usize,
    t: Option<usize>,
    acc: Option<FloatTensor<B>>,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let shape = dy.shape();
    let (n, d) = (shape[0], shape[1]);
    let base = match acc {
        Some(a) => B::float_reshape(a, [vocab, d].into()),
        None => primitive(Tensor::<B, 2>::zeros([vocab, d], &B::float_device(&dy))),
    };
    let dtable = B::float_select_add(base, 0, tokens, dy.clone());
    let dpos = t.map(|t| {
        let per_sequence = B::float_reshape(dy, [n / t.max(1), t, d].into());
        B::float_reshape(B::float_sum_dim(per_sequence, 0), [t, d].into())
    });
    (dtable, dpos)
}

/// The `centre` term: running mean over tokens, or the mean.
fn centre<B: super::Kernels>(v: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
    if causal {
        B::causal_mean(v)
    } else {
        let shape = v.shape();
        B::float_expand(B::float_mean_dim(v, 1), shape)
    }
}

fn centre_backward<B: super::Kernels>(dy: FloatTensor<B>, causal: bool) -> FloatTensor<B> {
    if causal {
        B::causal_mean_backward(dy)
    } else {
        let shape = dy.shape();
        B::float_expand(B::float_mean_dim(dy, 1), shape)
    }
}

pub fn scaled_sum<B: super::Kernels>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    ga: FloatTensor<B>,
    gb: FloatTensor<B>,
) -> FloatTensor<B> {
    B::float_add(B::scale_groups(a, ga), B::scale_groups(b, gb))
}

pub fn scaled_sum_backward<B: super::Kernels>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    ga: FloatTensor<B>,
    gb: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> [FloatTensor<B>; 4] {
    let (na, nb) = (ga.shape().num_elements(), gb.shape().num_elements());
    let dga = B::scale_groups_grad(a, dy.clone(), na);
    let dgb = B::scale_groups_grad(b, dy.clone(), nb);
    [B::scale_groups(dy.clone(), ga), B::scale_groups(dy, gb), dga, dgb]
}

/// `q + bq` for `q: [batch, heads, tokens, d]`, `bq: [heads · d]`.
fn biased<B: Backend>(q: FloatTensor<B>, bq: Option<FloatTensor<B>>) -> FloatTensor<B> {
    let Some(bq) = bq else {
        return q;
    };
    let [_, h, _, d] = q.shape().dims();
    super::primitive(super::tensor::<B, 4>(q) + super::tensor::<B, 1>(bq).reshape([1, h, 1, d]))
}

/// The gradient of a bias added to `x: [batch, heads, tokens, d]`
/// from `x`'s: its sums over the batch and the tokens, `[heads · d]`.
fn bias_grad<B: Backend>(dx: &FloatTensor<B>) -> FloatTensor<B> {
    let [_, h, _, d] = dx.shape().dims();
    super::primitive(super::tensor::<B, 4>(dx.clone()).sum_dim(0).sum_dim(2).reshape([h * d]))
}

pub fn attention_forward<B: super::Kernels>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bq: Option<FloatTensor<B>>,
    (scale, causal): (f64, bool),
) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::matmul(biased::<B>(q, bq), B::float_transpose(k));
    let p = B::softmax_scores(s, scale, causal);
    (B::matmul_token_major(p.clone(), v), p)
}

pub fn attention_backward<B: super::Kernels>(
    qkv: [FloatTensor<B>; 3],
    bq: Option<FloatTensor<B>>,
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    (scale, acc): (f64, Option<FloatTensor<B>>),
    wants: [bool; 3],
) -> [Option<FloatTensor<B>>; 4] {
    let [q, k, v] = qkv;
    let with_bias = bq.is_some();
    let q = biased::<B>(q, bq);
    let dv = wants[2].then(|| {
        let pt = B::float_transpose(p.clone());
        match acc {
            Some(c) => B::matmul_token_major_add(c, pt, g.clone()),
            None => B::matmul_token_major(pt, g.clone()),
        }
    });
    if !wants[0] && !wants[1] && !with_bias {
        return [None, None, dv, None];
    }
    let dp = B::matmul(g, B::float_transpose(v));
    let ds = B::softmax_scores_backward(p, dp, scale);
    let dq = (wants[0] || with_bias).then(|| B::matmul_token_major(ds.clone(), k));
    let dk = wants[1].then(|| B::matmul_token_major(B::float_transpose(ds), q));
    let dbq = dq.as_ref().filter(|_| with_bias).map(bias_grad::<B>);
    [dq.filter(|_| wants[0]), dk, dv, dbq]
}

pub fn nll_mean_with_grad<B: super::Kernels>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let n = logits.shape()[0];
    let (nll, lse) = B::cross_entropy(logits.clone(), targets.clone());
    let g = B::float_full([n].into(), (1.0 / n.max(1) as f64).into(), &B::float_device(&nll), nll.dtype().into());
    let grad = B::cross_entropy_backward(logits, lse, targets, g);
    (B::float_div_scalar(B::float_sum(nll), (n.max(1) as f64).into()), grad)
}

pub fn times_scalar<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    let ones = vec![1usize; x.shape().num_dims()];
    B::float_mul(x, B::float_reshape(g, ones.into()))
}

pub fn shaped_attention_forward<B: super::Kernels>(
    a: super::Shaped<FloatTensor<B>>,
    add: Option<super::MixAddend<FloatTensor<B>>>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let heads = a.q.shape()[1];
    let v4 = super::autodiff::split_heads::<B>(a.v.clone(), heads);
    let (o, p) = B::attention_forward(a.q, a.k, v4, a.bq, (a.scale, a.causal));
    let m = super::MixArgs { v: a.v, o: super::autodiff::merge_heads::<B>(o), gains: a.gains, causal: a.causal };
    let y = match add {
        Some(add) => B::mix_sum(m, add),
        None => B::mix(m.v, m.o, m.gains, m.causal),
    };
    (y, p)
}

pub fn shaped_attention_backward<B: super::Kernels>(
    a: super::Shaped<FloatTensor<B>>,
    add: Option<super::MixAddend<FloatTensor<B>>>,
    p: FloatTensor<B>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> super::ShapedGrads<FloatTensor<B>> {
    use super::autodiff::{merge_heads, split_heads};
    let heads = a.q.shape()[1];
    let v4 = split_heads::<B>(a.v.clone(), heads);
    let o = merge_heads::<B>(B::matmul_token_major(p.clone(), v4.clone()));
    let m = super::MixArgs { v: a.v, o, gains: a.gains, causal: a.causal };
    let (dv, d_o, dgains, addend) = match add {
        Some(add) => {
            let g = B::mix_sum_backward(m, add, dy, acc);
            (g.dv, g.d_o, g.dgains, Some([g.db, g.dga, g.dgb]))
        }
        None => {
            let (dv, d_o, dgains) = B::mix_backward(m.v, m.o, m.gains, dy, m.causal, acc);
            (dv, d_o, dgains, None)
        }
    };
    let d_o = split_heads::<B>(d_o, heads);
    let [dq, dk, dv, dbq] = B::attention_backward([a.q, a.k, v4], a.bq, p, d_o, (a.scale, Some(dv)), [true; 3]);
    let [dq, dk, dv] = [dq, dk, dv].map(|g| g.expect("every gradient was wanted"));
    super::ShapedGrads { dq, dk, dv: merge_heads::<B>(dv), dgains, addend, dbq }
}

pub fn mix_sum<B: super::Kernels>(
    m: super::MixArgs<FloatTensor<B>>,
    add: super::MixAddend<FloatTensor<B>>,
) -> FloatTensor<B> {
    B::scaled_sum(B::mix(m.v, m.o, m.gains, m.causal), add.b, add.ga, add.gb)
}

pub fn mix_sum_backward<B: super::Kernels>(
    m: super::MixArgs<FloatTensor<B>>,
    add: super::MixAddend<FloatTensor<B>>,
    dy: FloatTensor<B>,
    acc: Option<FloatTensor<B>>,
) -> super::MixSumGrads<FloatTensor<B>> {
    let a = B::mix(m.v.clone(), m.o.clone(), m.gains.clone(), m.causal);
    let [da, db, dga, dgb] = B::scaled_sum_backward(a, add.b, add.ga, add.gb, dy);
    let (dv, d_o, dgains) = B::mix_backward(m.v, m.o, m.gains, da, m.causal, acc);
    super::MixSumGrads { dv, d_o, dgains, db, dga, dgb }
}

pub fn dense<B: super::Kernels>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    relu: bool,
) -> FloatTensor<B> {
    let shape = x.shape();
    let k = shape[shape.num_dims() - 1];
    let x = B::float_reshape(x, [shape.num_elements() / k.max(1), k].into());
    let y = match (bias, relu) {
        (Some(b), false) => B::matmul_bias(x, w, b),
        (Some(b), true) => B::relu(B::matmul_bias(x, w, b)),
        (None, false) => B::matmul(x, w),
        (None, true) => B::matmul_relu(x, w),
    };
    let mut out = shape;
    let last = out.num_dims() - 1;
    out[last] = y.shape()[1];
    B::float_reshape(y, out)
}

pub fn mix<B: super::Kernels>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    causal: bool,
) -> FloatTensor<B> {
    let [gi, gs, gc] = gains;
    let c = centre::<B>(v.clone(), causal);
    let sum = B::float_add(B::scale_groups(v, gi), B::scale_groups(o, gs));
    B::float_add(sum, B::scale_groups(c, gc))
}

pub fn mix_backward<B: super::Kernels>(
    v: FloatTensor<B>,
    o: FloatTensor<B>,
    gains: [FloatTensor<B>; 3],
    dy: FloatTensor<B>,
    causal: bool,
    acc: Option<FloatTensor<B>>,
) -> (FloatTensor<B>, FloatTensor<B>, [FloatTensor<B>; 3]) {
    let [gi, gs, gc] = gains;
    let n = |g: &FloatTensor<B>| g.shape().num_elements();
    let (ni, ns, nc) = (n(&gi), n(&gs), n(&gc));
    let c = centre::<B>(v.clone(), causal);
    let dgi = B::scale_groups_grad(v, dy.clone(), ni);
    let dgs = B::scale_groups_grad(o, dy.clone(), ns);
    let dgc = B::scale_groups_grad(c, dy.clone(), nc);
    let dv =
        B::float_add(B::scale_groups(dy.clone(), gi), centre_backward::<B>(B::scale_groups(dy.clone(), gc), causal));
    let dv = match acc {
        Some(a) => B::float_add(a, dv),
        None => dv,
    };
    (dv, B::scale_groups(dy, gs), [dgi, dgs, dgc])
}

pub fn matmul_bias<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>, bias: FloatTensor<B>) -> FloatTensor<B> {
    let n = bias.shape().num_elements();
    B::float_add(B::float_matmul(a, b), B::float_reshape(bias, [1, n].into()))
}

pub fn column_sums<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let n = x.shape()[1];
    B::float_reshape(B::float_sum_dim(x, 0), [n].into())
}

pub fn matmul_relu<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    B::relu(B::float_matmul(a, b))
}

pub fn softmax_scores<B: Backend>(s: FloatTensor<B>, scale: f64, causal: bool) -> FloatTensor<B> {
    let s = B::float_mul_scalar(s, scale.into());
    let s = if causal {
        let shape = s.shape();
        let rank = shape.num_dims();
        let (tq, tk) = (shape[rank - 2], shape[rank - 1]);
        let future = Tensor::<B, 2, Bool>::tril_mask([tq, tk], 0, &B::float_device(&s));
        let mut dims = vec![1; rank];
        dims[rank - 2] = tq;
        dims[rank - 1] = tk;
        let future = B::bool_expand(B::bool_reshape(future.into_primitive(), dims.into()), shape);
        B::float_mask_fill(s, future, f32::NEG_INFINITY.into())
    } else {
        s
    };
    primitive(burn::tensor::activation::softmax(tensor::<B, 4>(s), 3))
}

/// `x` as `[outer, n, inner]` (`n` groups of the last dimension).
fn grouped<B: Backend>(x: FloatTensor<B>, n: usize) -> FloatTensor<B> {
    let shape = x.shape();
    let last = shape[shape.num_dims() - 1];
    let outer = shape.num_elements() / last.max(1);
    B::float_reshape(x, [outer, n, last / n].into())
}

pub fn scale_groups<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let n = g.shape().num_elements();
    let g = B::float_reshape(g, [1, n, 1].into());
    B::float_reshape(B::float_mul(grouped::<B>(x, n), g), shape)
}

pub fn scale_groups_grad<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, n: usize) -> FloatTensor<B> {
    let prod = grouped::<B>(B::float_mul(x, dy), n);
    let sums = B::float_sum_dim(B::float_sum_dim(prod, 2), 0);
    B::float_reshape(sums, [n].into())
}

/// `[1, tokens, 1]`: 1, 2, …, tokens.
fn counts<B: Backend>(x: &FloatTensor<B>) -> FloatTensor<B> {
    let t = x.shape()[1];
    let c = Tensor::<B, 1, burn::tensor::Int>::arange(1..t as i64 + 1, &B::float_device(x)).float();
    B::float_reshape(primitive(c), [1, t, 1].into())
}

pub fn causal_mean<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let c = counts::<B>(&x);
    B::float_div(B::float_cumsum(x, 1), c)
}

pub fn causal_mean_backward<B: Backend>(dy: FloatTensor<B>) -> FloatTensor<B> {
    // Σ_{i ≥ s} z[i] = Σ_i z[i] − Σ_{i < s} z[i], with z = dy / (i + 1).
    let c = counts::<B>(&dy);
    let z = B::float_div(dy, c);
    let total = B::float_sum_dim(z.clone(), 1);
    let before = B::float_sub(B::float_cumsum(z.clone(), 1), z);
    B::float_sub(total, before)
}

pub fn adam<B: Backend>(
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    k: super::AdamStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (p, g) = (tensor::<B, 1>(p), tensor::<B, 1>(g).mul_scalar(k.grad_scale));
    let g = if k.l2 > 0.0 { g + p.clone().mul_scalar(k.l2) } else { g };
    let m = tensor::<B, 1>(m).mul_scalar(k.beta1) + g.clone().mul_scalar(1.0 - k.beta1);
    let v = tensor::<B, 1>(v).mul_scalar(k.beta2) + (g.clone() * g).mul_scalar(1.0 - k.beta2);
    let step = m.clone().div(v.clone().div_scalar(k.bc2).sqrt().add_scalar(k.eps)).mul_scalar(k.lr / k.bc1);
    let p = if k.decay > 0.0 { p.mul_scalar(1.0 - k.decay) } else { p };
    (primitive(p - step), primitive(m), primitive(v))
}

/// `x − mean` over the last dimension when `centred`.
fn centre_rows<B: Backend>(x: Tensor<B, 2>, centred: bool) -> Tensor<B, 2> {
    if centred {
        x.clone() - x.mean_dim(1)
    } else {
        x
    }
}

pub fn norm<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    eps: f64,
    centred: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = centre_rows::<B>(tensor(x), centred);
    let rstd = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    let mut y = x * rstd.clone() * tensor::<B, 1>(scale).unsqueeze();
    if let Some(b) = bias {
        y = y + tensor::<B, 1>(b).unsqueeze();
    }
    let n = rstd.dims()[0];
    (primitive(y), primitive(rstd.reshape([n])))
}

pub fn norm_backward<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    rstd: FloatTensor<B>,
    dy: FloatTensor<B>,
    centred: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let x = centre_rows::<B>(tensor(x), centred);
    let n = x.dims()[0];
    let rstd = tensor::<B, 1>(rstd).reshape([n, 1]);
    let dy = tensor::<B, 2>(dy);
    let xhat = x * rstd.clone();
    let g = dy.clone() * tensor::<B, 1>(scale).unsqueeze();
    let g = if centred { g.clone() - g.mean_dim(1) } else { g };
    // mean(g ⊙ x̂) is unchanged by centring g, since Σ x̂ = 0 then.
    let dx = (g.clone() - xhat.clone() * (g * xhat.clone()).mean_dim(1)) * rstd;
    let dscale = (dy.clone() * xhat).sum_dim(0).squeeze_dim(0);
    let dbias = dy.sum_dim(0).squeeze_dim(0);
    (primitive(dx), primitive::<B, 1>(dscale), primitive::<B, 1>(dbias))
}

pub fn cross_entropy<B: Backend>(logits: FloatTensor<B>, targets: IntTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = tensor::<B, 2>(logits);
    let n = x.dims()[0];
    let max = x.clone().max_dim(1).detach();
    let lse = (x.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([n, 1]);
    let nll = (lse.clone() - x.gather(1, targets)).reshape([n]);
    (primitive(nll), primitive(lse.reshape([n])))
}

pub fn cross_entropy_backward<B: Backend>(
    logits: FloatTensor<B>,
    lse: FloatTensor<B>,
    targets: IntTensor<B>,
    g: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = tensor::<B, 2>(logits);
    let n = x.dims()[0];
    let p = (x - tensor::<B, 1>(lse).reshape([n, 1])).exp();
    let targets = Tensor::<B, 1, Int>::from_primitive(targets).reshape([n, 1]);
    let minus_one = Tensor::<B, 2>::full([n, 1], -1.0, &p.device());
    let d = p.scatter(1, targets, minus_one, IndexingUpdateOp::Add);
    primitive(d * tensor::<B, 1>(g).reshape([n, 1]))
}

pub fn softmax_scores_backward<B: Backend>(p: FloatTensor<B>, dp: FloatTensor<B>, scale: f64) -> FloatTensor<B> {
    let rank = p.shape().num_dims();
    let dot = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), rank - 1);
    let ds = B::float_mul(p, B::float_sub(dp, dot));
    B::float_mul_scalar(ds, scale.into())
}
