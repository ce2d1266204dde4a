//! A finite-width forward pass of a block graph with sampled weights, in
//! plain Rust (nalgebra), written independently of the kernel rules so the
//! two can be compared: the infinite-width prediction must match the mean
//! over seeds of the measured token statistics (docs/theory.md §5).

use blkc::eval::{eval, eval_const, Env};
use blkc::graph::{AttentionSpec, BlockIr, Graph, Init, Linear, Mask, MatrixTerm, MlpSpec, NormKind, Op};
use blkc::signal::duals::apply;
use blkc::signal::kernel::{mean_cosine, scale};
use blkc::signal::rng::Rng;
use blkc::signal::Mat;

/// Model dimensions of a simulation.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub width: usize,
    pub heads: usize,
    pub mask: Mask,
    pub rope: Option<blkc::graph::Rope>,
    pub alibi: bool,
}

/// Rotary positions with GPT-J's interleaved pairs `(2p, 2p + 1)` (the
/// model and the analysis use GPT-NeoX's halves; the statistics agree).
fn rotate(x: &mut Mat, rope: blkc::graph::Rope) {
    let r = rope.dims(x.ncols());
    for i in 0..x.nrows() {
        for p in 0..r / 2 {
            let theta = i as f64 * rope.base.powf(-2.0 * p as f64 / r as f64);
            let (a, b) = (x[(i, 2 * p)], x[(i, 2 * p + 1)]);
            x[(i, 2 * p)] = a * theta.cos() - b * theta.sin();
            x[(i, 2 * p + 1)] = b * theta.cos() + a * theta.sin();
        }
    }
}

/// Per-layer (mean cosine, scale) of the stack, from `x0` (T×d).
pub fn run(block: &BlockIr, depth: u64, dims: Dims, x0: &Mat, seed: u64) -> Vec<(f64, f64)> {
    let mut rng = Rng::new(seed);
    let mut x = x0.clone();
    let mut out = Vec::new();
    for l in 0..depth {
        let env =
            Env { depth: depth as f64, width: dims.width as f64, heads: dims.heads as f64, layer: l as f64, head: 0.0 };
        x = forward(block.graph_at(l, depth), &x, &env, dims, &mut rng);
        let k = &x * x.transpose() / dims.width as f64;
        out.push((mean_cosine(&k), scale(&k)));
    }
    out
}

/// Tokens with kernel Σ₀ at width d: L·Z with L = chol(Σ₀).
pub fn tokens(sigma0: &Mat, d: usize, rng: &mut Rng) -> Mat {
    let l = blkc::signal::attention::cholesky(sigma0);
    let z = Mat::from_fn(sigma0.nrows(), d, |_, _| rng.normal());
    l * z
}

fn forward(g: &Graph, x: &Mat, env: &Env, dims: Dims, rng: &mut Rng) -> Mat {
    let params = blkc::eval::param_values(&g.params, env);
    let at = |i: usize| params[i];
    let mut vals: Vec<Mat> = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let v = match &n.op {
            Op::Input => x.clone(),
            Op::Norm { norm, input } => normalise(&vals[*input], norm.kind, norm.eps),
            Op::Attention { spec, input } => attention(spec, &vals[*input], env, dims, rng),
            Op::Mlp { spec, input } => mlp(spec, &vals[*input], env, dims, rng),
            Op::Sum { terms } => {
                let mut acc = Mat::zeros(x.nrows(), x.ncols());
                for t in terms {
                    acc += &vals[t.input] * eval(&t.gain, env, &at).unwrap_or(0.0);
                }
                acc
            }
        };
        vals.push(v);
    }
    vals.swap_remove(g.out)
}

fn normalise(x: &Mat, kind: NormKind, eps: f64) -> Mat {
    let mut y = x.clone();
    for mut row in y.row_iter_mut() {
        if kind == NormKind::LayerNorm {
            let mean = row.mean();
            row.add_scalar_mut(-mean);
        }
        let rms = (row.norm_squared() / row.len() as f64 + eps).sqrt();
        row /= rms;
    }
    y
}

/// A weight (fan_in × fan_out) drawn from `init`; `None` for identity.
fn weight(init: &Init, fan_in: usize, fan_out: usize, env: &Env, rng: &mut Rng) -> Option<Mat> {
    let v = |s| eval_const(s, env).unwrap_or(0.0);
    Some(match init {
        Init::Identity => return None,
        Init::Zeros => Mat::zeros(fan_in, fan_out),
        Init::Normal { std } => Mat::from_fn(fan_in, fan_out, |_, _| v(std) * rng.normal()),
        Init::FanIn { gain } => Mat::from_fn(fan_in, fan_out, |_, _| v(gain) / (fan_in as f64).sqrt() * rng.normal()),
        Init::Orthogonal { gain } => orthogonal(fan_in, fan_out, rng) * v(gain),
    })
}

/// Haar-random matrix with orthonormal columns (or rows, if wide).
fn orthogonal(n: usize, m: usize, rng: &mut Rng) -> Mat {
    let (r, c) = (n.max(m), n.min(m));
    let g = Mat::from_fn(r, c, |_, _| rng.normal());
    let qr = g.qr();
    let (q, rr) = (qr.q(), qr.r());
    // Sign correction makes the distribution Haar.
    let mut q = q;
    for j in 0..c {
        if rr[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
    if n >= m {
        q
    } else {
        q.transpose()
    }
}

fn linear(l: &Linear, x: &Mat, fan_out: usize, env: &Env, rng: &mut Rng) -> Mat {
    match l {
        Linear::Identity => x.clone(),
        Linear::Dense { init, .. } => weight(init, x.ncols(), fan_out, env, rng).map_or_else(|| x.clone(), |w| x * w),
        Linear::Reparam { skip, init, .. } => {
            let a = eval_const(skip, env).unwrap_or(0.0);
            weight(init, x.ncols(), fan_out, env, rng).map_or_else(|| x * a, |w| x * w * a)
        }
    }
}

/// Whether query `i` sees key `j`: the mask, and the window when there is
/// one (the `window` latest tokens; bidirectional, those less than
/// `window` away).
fn sees(i: usize, j: usize, mask: Mask, window: Option<u64>) -> bool {
    let near = window.is_none_or(|w| (i.abs_diff(j) as u64) < w);
    near && (mask == Mask::Bidirectional || j <= i)
}

/// The uniform average over the keys each query sees.
fn centre(t: usize, mask: Mask, window: Option<u64>) -> Mat {
    let mut c = Mat::from_fn(t, t, |i, j| if sees(i, j, mask, window) { 1.0 } else { 0.0 });
    for mut row in c.row_iter_mut() {
        let n = row.sum();
        row /= n;
    }
    c
}

fn attention(spec: &AttentionSpec, h: &Mat, env: &Env, dims: Dims, rng: &mut Rng) -> Mat {
    let (t, d) = (h.nrows(), dims.width);
    let hd = spec.head_dim.map_or(d / dims.heads, |v| v as usize);
    let inner = hd * dims.heads;
    // The matrix's gains in one head (a per-head param may start at a
    // value that depends on `head`).
    let terms_of = |head: usize| -> Vec<(f64, MatrixTerm)> {
        let env = Env { head: head as f64, ..*env };
        let params = blkc::eval::param_values(&spec.params, &env);
        let at = |i: usize| params[i];
        spec.matrix.iter().map(|(c, m)| (eval(c, &env, &at).unwrap_or(0.0), *m)).collect()
    };
    let c = centre(t, dims.mask, spec.window);
    // ALiBi: −m_h·(i − j) on head h's scores (|i − j| without a causal mask).
    let slopes = blkc::graph::alibi_slopes(dims.heads);
    let distance_bias = |head: usize| {
        Mat::from_fn(t, t, |i, j| {
            let d = (i as f64 - j as f64).abs();
            if dims.alibi {
                -slopes[head] * d
            } else {
                0.0
            }
        })
    };
    // Grouped-query attention: `kv` heads of keys and values, head `h`
    // reading those of group h / (heads / kv).
    let kv = spec.kv_heads.map_or(dims.heads, |k| k as usize);
    let group = |head: usize| head / (dims.heads / kv);
    let v = linear(&spec.value, h, hd * kv, env, rng);
    let random = spec.uses(MatrixTerm::Softmax) && spec.query != Init::Zeros && spec.key != Init::Zeros;
    let (q, k) = if random {
        let wq = weight(&spec.query, d, inner, env, rng).unwrap_or_else(|| Mat::identity(d, inner));
        let wk = weight(&spec.key, d, hd * kv, env, rng).unwrap_or_else(|| Mat::identity(d, hd * kv));
        (h * wq, h * wk)
    } else {
        (Mat::zeros(t, inner), Mat::zeros(t, hd * kv))
    };
    let mut o = Mat::zeros(t, inner);
    for head in 0..dims.heads {
        let cols = head * hd..(head + 1) * hd;
        let soft = if random {
            let mut qh = q.columns(cols.start, hd).into_owned();
            let mut kh = k.columns(group(head) * hd, hd).into_owned();
            if spec.qk_norm.is_some() {
                qh = normalise(&qh, NormKind::RmsNorm, 1e-12);
                kh = normalise(&kh, NormKind::RmsNorm, 1e-12);
            }
            if let Some(rope) = dims.rope {
                rotate(&mut qh, rope);
                rotate(&mut kh, rope);
            }
            let mut logits = qh * kh.transpose() / (hd as f64).sqrt();
            if let Some(cap) = spec.softcap {
                logits.apply(|x| *x = cap * (*x / cap).tanh());
            }
            softmax(&(logits + distance_bias(head)), dims.mask, spec.window)
        } else if dims.alibi {
            softmax(&distance_bias(head), dims.mask, spec.window)
        } else {
            c.clone()
        };
        let mut a = Mat::zeros(t, t);
        for (coef, term) in &terms_of(head) {
            match term {
                MatrixTerm::Identity => a += Mat::identity(t, t) * *coef,
                MatrixTerm::Softmax => a += &soft * *coef,
                MatrixTerm::Centre => a += &c * *coef,
            }
        }
        let vh = v.columns(group(head) * hd, hd);
        o.columns_mut(cols.start, hd).copy_from(&(a * vh));
    }
    linear(&spec.proj, &o, d, env, rng)
}

fn softmax(g: &Mat, mask: Mask, window: Option<u64>) -> Mat {
    let t = g.nrows();
    let mut out = Mat::zeros(t, t);
    for i in 0..t {
        let seen: Vec<usize> = (0..t).filter(|&j| sees(i, j, mask, window)).collect();
        let max = seen.iter().map(|&j| g[(i, j)]).fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = seen.iter().map(|&j| (g[(i, j)] - max).exp()).sum();
        for &j in &seen {
            out[(i, j)] = (g[(i, j)] - max).exp() / z;
        }
    }
    out
}

fn mlp(spec: &MlpSpec, h: &Mat, env: &Env, dims: Dims, rng: &mut Rng) -> Mat {
    let d = dims.width;
    let hidden = spec.hidden(d as u128) as usize;
    let w1 = weight(&spec.up, d, hidden, env, rng).unwrap_or_else(|| Mat::identity(d, hidden));
    let mut pre = h * w1;
    pre.apply(|x| *x = apply(spec.activation, *x));
    if spec.gated {
        // act(h W_gate) ⊙ (h W_up), the second matrix drawn independently.
        let w_up = weight(&spec.up, d, hidden, env, rng).unwrap_or_else(|| Mat::identity(d, hidden));
        pre.component_mul_assign(&(h * w_up));
    }
    let w2 = weight(&spec.down, hidden, d, env, rng).unwrap_or_else(|| Mat::identity(hidden, d));
    pre * w2
}
