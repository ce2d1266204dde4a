//! Multi-head attention with the attention matrix of the IR:
//! `A = Σ gain_h · term`, terms `I`, `softmax(QKᵀ/√d_k + M)` and `centre`
//! (the softmax at zero logits under the mask). The softmax term is blkc's
//! attention kernel (`kernels::attention`: one graph node, the mask never
//! built, a soft-cap and ALiBi's bias in it); any other term
//! is computed apart, the centre
//! as the mean of the values each token sees (`kernels::centre`: a sum slid
//! along the tokens) — never as a T×T matrix. Identity value/projection
//! maps cost no matmul.

use super::Build;
use blkc::eval::Env;
use blkc::graph::{AttentionSpec, Mask, MatrixTerm, Norm as NormIr, NormKind, Scalar};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::{self, Kernels, Keys, Scores};
use burn::tensor::{Bool, Tensor, TensorData};

use super::dropout::Noise;
use super::init::param;
use super::linear;
use super::map::{Kind, Map};
use super::norm::Norm;
use super::scalar::{self, Slot};
use super::tables::Tables;

/// How the attention's matrix is computed, decided when it is built.
#[derive(Debug, Clone)]
pub enum Form {
    /// Exactly `softmax`: blkc's attention kernel.
    Softmax,
    /// `I`, `softmax` and `centre`, each once (in any order), with these
    /// coefficients: the shaped attention's kernel (or, with a soft-cap,
    /// the softmax term apart and the mix's kernel).
    Shaped([Scalar; 3]),
    /// Any other matrix, term by term.
    Terms,
}

impl Form {
    fn of(terms: &[(Scalar, MatrixTerm)]) -> Self {
        if matches!(terms, [(Scalar::Const(c), MatrixTerm::Softmax)] if *c == 1.0) {
            return Form::Softmax;
        }
        let find = |t: MatrixTerm| {
            let mut it = terms.iter().filter(|(_, term)| *term == t);
            let first = it.next();
            first.filter(|_| it.next().is_none()).map(|(c, _)| c.clone())
        };
        let coefs = [find(MatrixTerm::Identity), find(MatrixTerm::Softmax), find(MatrixTerm::Centre)];
        match coefs {
            [Some(i), Some(s), Some(c)] if terms.len() == 3 => Form::Shaped([i, s, c]),
            _ => Form::Terms,
        }
    }
}

/// The parts of an attention sub-block that are not parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub heads: usize,
    /// Heads of keys and values (grouped-query attention when below `heads`).
    pub kv_heads: usize,
    pub head_dim: usize,
    pub terms: Vec<(Scalar, MatrixTerm)>,
    pub slots: Vec<Slot>,
    pub softcap: Option<f64>,
    /// Sliding-window attention: the keys each query sees
    /// (`layers/window.rs`).
    pub window: Option<usize>,
    pub mask: Mask,
    /// Rotary positions of queries and keys.
    pub rope: Option<blkc::graph::Rope>,
    /// ALiBi's distance bias on the scores.
    pub alibi: bool,
    pub env: Env,
    /// Names of the trainable gains, in the order of `Attention::gains`.
    pub gain_names: Vec<String>,
    pub form: Form,
    /// Dropout in training.
    pub dropout: blkc::graph::Dropout,
    /// The constant gains as tensors, once made.
    pub constants: scalar::Constants,
    /// The model's tables of positions (rotary angles).
    pub tables: Tables,
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Option<Param<Tensor<B, 2>>>,
    pub key: Option<Param<Tensor<B, 2>>>,
    pub query_bias: Option<Param<Tensor<B, 1>>>,
    pub key_bias: Option<Param<Tensor<B, 1>>>,
    pub query_norm: Option<Norm<B>>,
    pub key_norm: Option<Norm<B>>,
    pub value: Map<B>,
    pub proj: Map<B>,
    /// Trainable gains of the matrix (`[heads]` when per head).
    pub gains: Vec<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub plan: Plan,
}

impl<B: Kernels> Attention<B> {
    pub fn build(spec: &AttentionSpec, b: &mut Build<'_, B>) -> Self {
        let (width, heads, device, env) = (b.width, b.heads, b.device, b.env);
        let head_dim = spec.head_dim.map_or(width / heads, |h| h as usize);
        let inner = head_dim * heads;
        let kv_heads = spec.kv_heads.map_or(heads, |k| k as usize);
        let kv_inner = head_dim * kv_heads;
        let softmax = spec.uses(MatrixTerm::Softmax);
        // Drawn in this order: query, key, value, projection.
        let query = softmax.then(|| param(b.weight(&spec.query, width, inner)));
        let key = softmax.then(|| param(b.weight(&spec.key, width, kv_inner)));
        let value = Map::build(&spec.value, width, kv_inner, b);
        let proj = Map::build(&spec.proj, inner, width, b);
        let bias = |n: usize| (softmax && spec.qk_bias).then(|| param(Tensor::zeros([n], device)));
        let qk_norm = |k: Option<NormKind>| {
            k.filter(|_| softmax).map(|kind| Norm::build(&NormIr { kind, eps: 1e-6 }, head_dim, device))
        };
        let (gains, slots) = scalar::gains(&spec.params, heads, &env, device);
        Attention {
            query,
            key,
            query_bias: bias(inner),
            key_bias: bias(kv_inner),
            query_norm: qk_norm(spec.qk_norm),
            key_norm: qk_norm(spec.qk_norm),
            value,
            proj,
            gains,
            plan: Plan {
                heads,
                kv_heads,
                head_dim,
                terms: spec.matrix.clone(),
                slots,
                softcap: spec.softcap,
                window: spec.window.map(|w| w as usize),
                mask: b.mask,
                rope: spec.rope(b.rope),
                alibi: b.alibi,
                env,
                gain_names: scalar::trainable_names(&spec.params),
                form: Form::of(&spec.matrix),
                dropout: spec.dropout,
                constants: Default::default(),
                tables: b.tables.clone(),
            },
        }
    }

    /// Keys or values of `kv_heads` heads, `[batch, tokens, kv_heads ·
    /// head_dim]`, repeated for the query heads of each group →
    /// `[batch, tokens, heads · head_dim]` (the identity without groups).
    fn widen(&self, y: Tensor<B, 3>) -> Tensor<B, 3> {
        let (heads, kv, hd) = (self.plan.heads, self.plan.kv_heads, self.plan.head_dim);
        let [b, t, w] = y.dims();
        if kv == heads || w != kv * hd {
            return y;
        }
        y.reshape([b, t, kv, 1, hd]).repeat_dim(3, heads / kv).reshape([b, t, heads * hd])
    }

    /// The value, one head per query head.
    pub(crate) fn values(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.widen(self.value.forward(x))
    }

    /// `[batch, tokens, inner]` → `[batch, heads, tokens, head_dim]`.
    pub(crate) fn split(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        x.reshape([b, t, self.plan.heads, self.plan.head_dim]).swap_dims(1, 2)
    }

    pub(crate) fn projected(
        &self,
        x: &Tensor<B, 3>,
        w: &Option<Param<Tensor<B, 2>>>,
        b: &Option<Param<Tensor<B, 1>>>,
        n: &Option<Norm<B>>,
    ) -> Tensor<B, 4> {
        let bias = b.as_ref().map(Param::val);
        let y = match w {
            Some(w) => linear(x.clone(), w.val(), bias),
            None => bias.map_or_else(|| x.clone(), |b| x.clone() + b.unsqueeze()),
        };
        // QK-norm over each head's entries before the heads are split out
        // (each row then whole in memory, one pass of the norm's kernel; a
        // split view's rows are strided, and gathering them cost 11× the
        // norm) and before grouped keys are repeated (the norm of a
        // repeated head is the repeat of its norm).
        let y = match n {
            Some(n) => {
                let ([b, t, w], hd) = (y.dims(), self.plan.head_dim);
                n.forward(y.reshape([b, t, w / hd, hd])).reshape([b, t, w])
            }
            None => y,
        };
        self.split(self.widen(y))
    }

    /// `x: [batch, tokens, width]` → `[batch, tokens, width]`, as at
    /// evaluation (no dropout).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, None)
    }

    /// The attention, with the spec's dropout drawn from `noise` when it is
    /// given (a training forward). Every term is formed in the `[batch,
    /// tokens, heads · head_dim]` layout, per-head gains applied per group
    /// of the last dimension.
    pub fn forward_with(&self, x: Tensor<B, 3>, noise: Option<Noise>) -> Tensor<B, 3> {
        let device = x.device();
        let causal = self.plan.mask == Mask::Causal;
        // Dropout on the softmax weights needs them written out: the
        // composed path.
        let weights = noise.filter(|_| self.plan.dropout.inner > 0.0).map(|n| n.at(0));
        let out = match &self.plan.form {
            // The three terms and their gains in one kernel.
            Form::Shaped(_) if self.mixed_in_kernel() && weights.is_none() => self.mix_parts(x).apply(None),
            Form::Shaped(_) => {
                let v = self.values(x.clone());
                let o = self.softmax_times(&x, v.clone(), causal, weights);
                kernels::mix(v, o, self.mix_gains(&device), self.keys(causal))
            }
            Form::Softmax => {
                let v = self.values(x.clone());
                self.softmax_times(&x, v, causal, weights)
            }
            Form::Terms => self.terms(x, causal, weights),
        };
        let out = self.proj.forward(out);
        match noise {
            Some(n) => n.at(1).drop(out, self.plan.dropout.branch),
            None => out,
        }
    }

    /// Whether the shaped attention's kernel computes the whole matrix
    /// (its softmax neither soft-capped nor biased by ALiBi: such a one is
    /// the attention's kernel, then the mix's).
    fn mixed_in_kernel(&self) -> bool {
        self.plan.softcap.is_none() && !self.plan.alibi
    }

    /// How the softmax makes logits of its scores, as blkc's attention
    /// kernels take them: times `1/√d_k`, soft-capped with the spec's cap,
    /// less ALiBi's distance with the model's positions, over the keys of
    /// [`Attention::keys`].
    pub(crate) fn scores(&self, causal: bool) -> Scores {
        let scale = 1.0 / (self.plan.head_dim as f64).sqrt();
        Scores::new(scale, self.keys(causal)).capped(self.plan.softcap).with_alibi(self.plan.alibi)
    }

    /// The keys each query sees, as blkc's attention kernels take them.
    pub(crate) fn keys(&self, causal: bool) -> Keys {
        Keys { causal, window: self.plan.window }
    }

    /// The matrix's terms one by one, each with its gain, summed.
    fn terms(&self, x: Tensor<B, 3>, causal: bool, weights: Option<Noise>) -> Tensor<B, 3> {
        let v = self.values(x.clone());
        let mut soft = None;
        let softmax = || soft.get_or_insert_with(|| self.softmax_times(&x, v.clone(), causal, weights)).clone();
        let centre = || kernels::centre(v.clone(), self.keys(causal));
        self.summed(v.clone(), centre, softmax)
    }

    /// The matrix's terms, each with its gain, summed, given the values
    /// (the identity term), the centre term and the softmax term.
    pub(crate) fn summed(
        &self,
        v: Tensor<B, 3>,
        mut centre: impl FnMut() -> Tensor<B, 3>,
        mut softmax: impl FnMut() -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let device = v.device();
        let mut acc: Option<Tensor<B, 3>> = None;
        for (coef, term) in &self.plan.terms {
            let part = match term {
                MatrixTerm::Identity => v.clone(),
                MatrixTerm::Centre => centre(),
                MatrixTerm::Softmax => softmax(),
            };
            let part = match scalar::constant(coef, &self.plan.slots, &self.plan.env) {
                Some(1.0) => part,
                Some(c) => part * c,
                None => {
                    let g = self.plan.constants.value(coef, &self.plan.slots, &self.gains, &self.plan.env, &device);
                    kernels::scale_groups(part, g)
                }
            };
            acc = Some(match acc {
                Some(a) => a + part,
                None => part,
            });
        }
        acc.unwrap_or_else(|| v.zeros_like())
    }

    /// Whether the attention ends in the shaped mix with nothing after it
    /// (an identity projection): a block may then take its
    /// [`Attention::mix_parts`] and sum the mix with another branch in one
    /// kernel ([`kernels::shaped_attention`]).
    pub fn ends_in_mix(&self) -> bool {
        matches!(self.plan.form, Form::Shaped(_)) && self.proj.kind == Kind::Identity && self.mixed_in_kernel()
    }

    /// The gains of the shaped mix's `I`, `softmax` and `centre` terms.
    fn mix_gains(&self, device: &B::Device) -> [Tensor<B, 1>; 3] {
        let Form::Shaped(coefs) = &self.plan.form else { unreachable!("the mix of a shaped attention's matrix") };
        coefs.each_ref().map(|c| self.plan.constants.value(c, &self.plan.slots, &self.gains, &self.plan.env, device))
    }

    /// The operands of a shaped attention (matrix `I`, `softmax` and
    /// `centre`, no soft-cap) before its products: queries and keys split
    /// into heads (see `Attention::queries_keys`), the value, the gains.
    pub fn mix_parts(&self, x: Tensor<B, 3>) -> MixParts<B> {
        let device = x.device();
        let gains = self.mix_gains(&device);
        let v = self.values(x.clone());
        let (q, k, bq) = self.queries_keys(&x);
        let scores = self.scores(self.plan.mask == Mask::Causal);
        MixParts { q, k, bq, v, gains, scale: scores.scale, keys: scores.keys }
    }

    /// Queries and keys split into heads for blkc's attention kernels,
    /// and the query's bias when the kernel is to add it. Without QK-norm
    /// the kernel takes the query's bias where it forms the scores (no
    /// pass over the queries to add it, none over their gradient to sum
    /// it), and the key's bias is left out: it adds `(q_i + bq) · bk` to
    /// every score of row `i`, which the softmax does not see, so the
    /// function is the same and its gradient is zero (it keeps its value).
    /// With QK-norm, both are added before the norm.
    /// With rotary positions, too: the biases are rotated with the rest.
    /// With a soft-cap, too: the tanh bends the constant the key's bias
    /// adds to a row of scores, so the softmax does see it.
    fn queries_keys(&self, x: &Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>) {
        let apart = self.query_norm.is_none()
            && self.key_norm.is_none()
            && self.plan.rope.is_none()
            && self.plan.softcap.is_none();
        let (bq, bk) = match apart {
            true => (&None, &None),
            false => (&self.query_bias, &self.key_bias),
        };
        let (q, k) = self.rotated(
            self.projected(x, &self.query, bq, &self.query_norm),
            self.projected(x, &self.key, bk, &self.key_norm),
            0,
        );
        (q, k, self.query_bias.as_ref().filter(|_| apart).map(Param::val))
    }

    /// Rotary positions on queries and keys `[batch, heads, tokens,
    /// head_dim]`: the first `r` dimensions of each head in pairs
    /// `(p, p + r/2)` (GPT-NeoX's and Llama's layout) turned by
    /// `position · base^(−2p/r)`; the rest pass. One table of angles for both,
    /// whose tokens are at positions `from`, `from + 1`, ….
    pub(crate) fn rotated(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, from: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let Some(rope) = self.plan.rope else { return (q, k) };
        let [_, _, t, hd] = q.dims();
        let r = rope.dims(hd);
        let device = q.device();
        // Keyed by the base too: attentions of another `rope_base` turn by
        // other angles.
        let kind = ("rotary", r, rope.base.to_bits() as usize);
        let [cos, sin] = self.plan.tables.rows(kind, from..from + t, &device, |n| {
            let half = r / 2;
            let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
            for i in 0..n {
                for p in 0..half {
                    let (s, c) = rope.angle(i, p, r).sin_cos();
                    cos.push(c as f32);
                    sin.push(s as f32);
                }
            }
            let table = |v: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(v, [n, half]), &device);
            [table(cos), table(sin)]
        });
        (kernels::rope(q, cos.clone(), sin.clone()), kernels::rope(k, cos, sin))
    }

    /// `softmax(q·kᵀ/√d_k + M) · v` for `v: [batch, tokens, inner]`: blkc's
    /// attention kernel (under a window, soft-capped, with ALiBi's bias,
    /// too), or, with dropout on the weights (`weights`, in training), the
    /// weights written out.
    fn softmax_times(&self, x: &Tensor<B, 3>, v: Tensor<B, 3>, causal: bool, weights: Option<Noise>) -> Tensor<B, 3> {
        let Some(noise) = weights else {
            let (q, k, bq) = self.queries_keys(x);
            return kernels::attention(q, k, v, bq, self.scores(causal));
        };
        let [b, t, inner] = v.dims();
        let (q, k) = self.rotated(
            self.projected(x, &self.query, &self.query_bias, &self.query_norm),
            self.projected(x, &self.key, &self.key_bias, &self.key_norm),
            0,
        );
        let bias = self.plan.alibi.then(|| {
            // The whole window's bias, kept: the same at every layer (the
            // model's heads) and step.
            let device = x.device();
            let kind = (if causal { "alibi-causal" } else { "alibi" }, t, 0);
            let heads = self.plan.heads;
            self.plan.tables.kept::<B, _>(kind, &device, || kernels::alibi_bias((0, t), t, heads, causal, &device))
        });
        let w = self.weights(q, k, bias, causal, 0);
        let out = noise.drop(w, self.plan.dropout.inner).matmul(self.split(v));
        out.swap_dims(1, 2).reshape([b, t, inner])
    }

    /// The softmax weights `[batch, heads, n, t]` of queries (at positions
    /// `from` to `from + n`) and keys (at positions 0 to `t`) split into
    /// heads, in the order of burn's attention: scale, soft-cap, mask, bias,
    /// softmax.
    pub(crate) fn weights(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        bias: Option<Tensor<B, 4>>,
        causal: bool,
        from: usize,
    ) -> Tensor<B, 4> {
        let [b, h, n, _] = q.dims();
        let t = k.dims()[2];
        let scores = self.scores(causal);
        let mut s = q.matmul(k.swap_dims(2, 3)).mul_scalar(scores.scale);
        if let Some(c) = scores.cap {
            s = kernels::softcap(s, c);
        }
        if causal {
            let future = Tensor::<B, 2, Bool>::tril_mask([n, t], from as i64, &s.device())
                .reshape([1, 1, n, t])
                .expand([b, h, n, t]);
            s = s.mask_fill(future, f32::NEG_INFINITY);
        }
        if let Some(hidden) = self.outside_window((from, n), t, causal, &s.device()) {
            s = s.mask_fill(hidden.reshape([1, 1, n, t]).expand([b, h, n, t]), f32::NEG_INFINITY);
        }
        if let Some(bias) = bias {
            s = s + bias;
        }
        burn::tensor::activation::softmax(s, 3)
    }
}

/// The operands of a shaped attention, before its products and mix.
#[derive(Debug)]
pub struct MixParts<B: Backend> {
    pub q: Tensor<B, 4>,
    pub k: Tensor<B, 4>,
    /// The query's bias, when not added to `q`.
    pub bq: Option<Tensor<B, 1>>,
    pub v: Tensor<B, 3>,
    pub gains: [Tensor<B, 1>; 3],
    pub scale: f64,
    pub keys: Keys,
}

impl<B: Kernels> MixParts<B> {
    /// The attention through its mix (one kernel), summed with `(b, beta_sa,
    /// beta_ff)` when given.
    pub fn apply(self, add: Option<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)>) -> Tensor<B, 3> {
        kernels::shaped_attention([self.q, self.k], self.bq, self.v, self.gains, (self.scale, self.keys), add)
    }
}
