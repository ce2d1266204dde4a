//! One block, one layer: the joint-Gram tracker of docs/theory.md §2.6.
//!
//! Every node of the block graph is a signal with its own kernel G(n, n);
//! cross kernels G(a, b) are computed on demand from the later node's
//! relation to its input (a norm or an identity-valued attention is a
//! linear token map of its input, so it stays correlated with it; a fresh
//! random matrix makes it uncorrelated; a sum is linear in its terms), so
//! a sum keeps exactly the cross terms that do not vanish at init.

use std::collections::HashMap;

use nalgebra::DVector;

use super::attention::{self, Logits};
use super::duals;
use super::kernel::{self, Mat};
use crate::eval::{eval, eval_const, Env};
use crate::graph::{AttentionSpec, Graph, Init, Linear, Mask, MatrixTerm, MlpSpec, NodeId, Op, Var};

/// How the attention matrix is evaluated when queries are not zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMode {
    /// Zero-query approximation while σ_Q·σ_K ≤ 1 (error ≤ 0.02 in ρ̄,
    /// docs/theory.md §6), Monte Carlo above.
    Auto,
    /// Always the zero-query approximation (A_softmax = C).
    ZeroQuery,
    /// Always Monte Carlo for random queries.
    MonteCarlo,
}

/// What a block is propagated under.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub width: u64,
    pub heads: u64,
    pub mask: Mask,
    pub rope: Option<crate::graph::Rope>,
    pub alibi: bool,
    pub mode: AttentionMode,
    pub samples: usize,
    pub seed: u64,
}

/// Counterfactual changes used to find the part of a block responsible for
/// a rejection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ablation {
    /// Every attention matrix replaced by I.
    pub attention_identity: bool,
    /// Every MLP output replaced by zero.
    pub mlp_zero: bool,
}

/// Statistics of one node's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeStat {
    pub node: NodeId,
    pub cosine: f64,
    pub scale: f64,
}

/// The block's output kernel and per-node statistics.
#[derive(Debug, Clone)]
pub struct BlockOut {
    /// The token kernel of the whole width (the mean of the slices').
    pub kernel: Mat,
    /// The kernel of each head's slice of the width (one slice when the
    /// heads start alike).
    pub slices: Vec<Mat>,
    pub nodes: Vec<NodeStat>,
}

/// A token map applied to a node's input to give the node.
#[derive(Debug, Clone)]
enum Map {
    /// The same per-token scaling in every slice (a norm).
    Diag(DVector<f64>),
    /// One token map per slice (an attention with identity value and
    /// projection: head h's matrix on slice h).
    Full(Vec<Mat>),
}

#[derive(Debug, Clone)]
enum Rel {
    Input,
    /// Independent of every other signal (a fresh random matrix last).
    Fresh,
    /// `map · input`.
    Linear(NodeId, Map),
    Sum(Vec<(f64, NodeId)>),
}

/// A kernel per slice of the width.
type Slices = Vec<Mat>;

/// The kernel of the whole width: the mean over its slices.
pub fn mean(slices: &[Mat]) -> Mat {
    let mut acc = slices[0].clone();
    for s in &slices[1..] {
        acc += s;
    }
    acc / slices.len() as f64
}

struct Tracker<'a> {
    rel: Vec<Rel>,
    own: Vec<Option<Slices>>,
    cross: HashMap<(NodeId, NodeId), Option<Slices>>,
    setting: &'a Setting,
}

/// Whether some head of the block starts unlike the others (a `per_head`
/// param whose initial value uses `head`, or ALiBi's slope in a softmax):
/// the heads' slices of the width then carry different kernels, tracked
/// one by one.
pub fn heads_differ(graphs: &[&Graph], alibi: bool) -> bool {
    graphs.iter().flat_map(|g| &g.nodes).any(|n| match &n.op {
        Op::Attention { spec, .. } => {
            spec.params.iter().any(|p| p.per_head && p.init.uses(Var::Head))
                || (alibi && spec.uses(MatrixTerm::Softmax))
        }
        _ => false,
    })
}

/// Propagates the slice kernels `sigma` (one per head's slice of the
/// width, or one for the whole width) through graph `g` at layer `layer`.
pub fn block(g: &Graph, sigma: &[Mat], env: &Env, setting: &Setting, ablation: Ablation) -> BlockOut {
    let params = crate::eval::param_values(&g.params, env);
    let at = |i: usize| params.get(i).copied().unwrap_or(0.0);
    let mut tr = Tracker { rel: Vec::new(), own: Vec::new(), cross: HashMap::new(), setting };
    let mut stats = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        let (rel, own) = match &node.op {
            Op::Input => (Rel::Input, Some(sigma.to_vec())),
            Op::Norm { norm, input } => tr.norm(*input, norm.eps),
            Op::Attention { spec, input } => tr.attention(spec, *input, env, ablation, id as u64),
            Op::Mlp { spec, input } if !ablation.mlp_zero => tr.mlp(spec, *input, env),
            Op::Mlp { .. } => (Rel::Fresh, None),
            Op::Sum { terms } => {
                let terms: Vec<(f64, NodeId)> =
                    terms.iter().map(|t| (eval(&t.gain, env, &at).unwrap_or(0.0), t.input)).collect();
                let own = tr.sum(&terms);
                (Rel::Sum(terms), own)
            }
        };
        if !matches!(node.op, Op::Input) {
            let (cosine, scale) = own.as_ref().map_or((f64::NAN, 0.0), |k| {
                let k = mean(k);
                (kernel::mean_cosine(&k), kernel::scale(&k))
            });
            stats.push(NodeStat { node: id, cosine, scale });
        }
        tr.rel.push(rel);
        tr.own.push(own);
    }
    let t = sigma[0].nrows();
    let mut slices = tr.own.get(g.out).cloned().flatten().unwrap_or_else(|| vec![Mat::zeros(t, t); sigma.len()]);
    slices.iter_mut().for_each(kernel::symmetrise);
    BlockOut { kernel: mean(&slices), slices, nodes: stats }
}

/// Variance factor σ² of a random weight (fan-in convention, docs/theory.md
/// §2.1); `None` for an identity map (correlated with its input).
fn variance(init: &Init, fan_in: f64, fan_out: f64, env: &Env) -> Option<f64> {
    let v = |s: &crate::graph::Scalar| eval_const(s, env).unwrap_or(0.0);
    match init {
        Init::Identity => None,
        Init::Zeros => Some(0.0),
        Init::Normal { std } => Some(v(std).powi(2) * fan_in),
        Init::FanIn { gain } => Some(v(gain).powi(2)),
        Init::Orthogonal { gain } => Some(v(gain).powi(2) * (fan_in / fan_out).min(1.0)),
    }
}

/// A value or projection map at init: `Ok(k)` is k·identity (correlated),
/// `Err(s)` a random map of variance factor s.
fn linear_map(l: &Linear, fan_in: f64, fan_out: f64, env: &Env) -> Result<f64, f64> {
    match l {
        Linear::Identity => Ok(1.0),
        Linear::Dense { init, .. } => variance(init, fan_in, fan_out, env).map_or(Ok(1.0), Err),
        Linear::Reparam { skip, init, .. } => {
            // ΔW is zero at init, so W = skip · W_init (He & Hofmann Eq. 6).
            let a = eval_const(skip, env).unwrap_or(0.0);
            variance(init, fan_in, fan_out, env).map_or(Ok(a), |s| Err(a * a * s))
        }
    }
}

impl Tracker<'_> {
    /// G(a, b) per slice, `None` when it is zero.
    fn gram(&mut self, a: NodeId, b: NodeId) -> Option<Slices> {
        if a == b {
            return self.own[a].clone();
        }
        let (hi, lo, flip) = if a > b { (a, b, false) } else { (b, a, true) };
        let g = match self.cross.get(&(hi, lo)) {
            Some(g) => g.clone(),
            None => {
                let g = self.compute_cross(hi, lo);
                self.cross.insert((hi, lo), g.clone());
                g
            }
        };
        if flip {
            g.map(|m| m.iter().map(|x| x.transpose()).collect())
        } else {
            g
        }
    }

    fn compute_cross(&mut self, hi: NodeId, lo: NodeId) -> Option<Slices> {
        match self.rel[hi].clone() {
            Rel::Input | Rel::Fresh => None,
            Rel::Linear(from, map) => {
                let g = self.gram(from, lo)?;
                Some(match map {
                    Map::Diag(d) => {
                        g.iter().map(|g| Mat::from_fn(g.nrows(), g.ncols(), |i, j| d[i] * g[(i, j)])).collect()
                    }
                    Map::Full(m) => m.iter().zip(&g).map(|(m, g)| m * g).collect(),
                })
            }
            Rel::Sum(terms) => {
                let mut acc: Option<Slices> = None;
                for (c, s) in terms {
                    if let Some(g) = self.gram(s, lo) {
                        acc = Some(match acc {
                            Some(a) => a.iter().zip(&g).map(|(a, g)| a + g * c).collect(),
                            None => g.iter().map(|g| g * c).collect(),
                        });
                    }
                }
                acc
            }
        }
    }

    fn sum(&mut self, terms: &[(f64, NodeId)]) -> Option<Slices> {
        let mut acc: Option<Slices> = None;
        for (i, (ci, si)) in terms.iter().enumerate() {
            for (cj, sj) in &terms[i..] {
                let Some(g) = self.gram(*si, *sj) else { continue };
                let part: Slices = if si == sj {
                    g.iter().map(|g| g * (ci * cj)).collect()
                } else {
                    g.iter().map(|g| (g + g.transpose()) * (ci * cj)).collect()
                };
                acc = Some(match acc {
                    Some(a) => a.iter().zip(&part).map(|(a, p)| a + p).collect(),
                    None => part,
                });
            }
        }
        acc
    }

    fn norm(&mut self, input: NodeId, eps: f64) -> (Rel, Option<Slices>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        // At init, RMSNorm and LayerNorm (zero-mean input) are the per-token
        // rescaling x_i / sqrt(q_i + ε) (docs/theory.md §2.4), q_i over the
        // whole width: the same scaling of every slice.
        let d = mean(&k).diagonal().map(|q| 1.0 / (q.max(0.0) + eps).sqrt());
        let own = k.iter().map(|k| Mat::from_fn(k.nrows(), k.ncols(), |i, j| d[i] * k[(i, j)] * d[j])).collect();
        (Rel::Linear(input, Map::Diag(d)), Some(own))
    }

    /// An attention: head h mixes slice h of its value's output with its
    /// matrix A_h. An identity value reads slice h of the input, a random
    /// one the whole width; an identity projection writes slice h, a random
    /// one mixes every head into every slice (docs/theory.md §2.2).
    fn attention(
        &mut self,
        spec: &AttentionSpec,
        input: NodeId,
        env: &Env,
        ab: Ablation,
        salt: u64,
    ) -> (Rel, Option<Slices>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        let s = self.setting;
        let (d, h) = (s.width as f64, s.heads.max(1));
        let head_dim = spec.head_dim.unwrap_or(s.width / h).max(1);
        let inner = (head_dim * h) as f64;
        let value = linear_map(&spec.value, d, inner, env);
        let proj = linear_map(&spec.proj, inner, d, env);
        // Each slice's head: its matrix moments for what the value gives it.
        let whole = mean(&k);
        let moments: Vec<(Mat, Mat)> = if ab.attention_identity {
            let read = |i: usize| if value.is_ok() { k[i].clone() } else { whole.clone() };
            (0..k.len()).map(|i| (Mat::identity(whole.nrows(), whole.ncols()), read(i))).collect()
        } else {
            self.matrix_moments(spec, &k, &whole, value.is_ok(), env, head_dim as usize, salt)
        };
        let per_slice = |f: f64| -> Slices { moments.iter().map(|(_, second)| second * f).collect() };
        let mixed = |f: f64| -> Slices {
            let all: Vec<Mat> = moments.iter().map(|(_, second)| second.clone()).collect();
            vec![mean(&all) * f; k.len()]
        };
        match (value, proj) {
            (Ok(a), Ok(b)) if a * b != 0.0 => {
                let maps = moments.iter().map(|(m, _)| m * (a * b)).collect();
                (Rel::Linear(input, Map::Full(maps)), Some(per_slice((a * b) * (a * b))))
            }
            (Err(u), Ok(b)) if u * b != 0.0 => (Rel::Fresh, Some(per_slice(u * b * b))),
            (Ok(a), Err(p)) if a * p != 0.0 => (Rel::Fresh, Some(mixed(a * a * p))),
            (Err(u), Err(p)) if u * p != 0.0 => (Rel::Fresh, Some(mixed(u * p))),
            _ => (Rel::Fresh, None),
        }
    }

    /// (E[A_h], E[A_h Σ_h A_hᵀ]) for each slice h (one entry when the
    /// kernel has one slice): Σ_h is slice h's kernel when the value reads
    /// slice h (`own_slice`), the whole width's otherwise.
    #[allow(clippy::too_many_arguments)]
    fn matrix_moments(
        &self,
        spec: &AttentionSpec,
        k: &[Mat],
        whole: &Mat,
        own_slice: bool,
        env: &Env,
        head_dim: usize,
        salt: u64,
    ) -> Vec<(Mat, Mat)> {
        let terms_at = |env: &Env| -> Vec<(f64, MatrixTerm)> {
            let params = crate::eval::param_values(&spec.params, env);
            let at = |i: usize| params.get(i).copied().unwrap_or(0.0);
            spec.matrix.iter().map(|(c, t)| (eval(c, env, &at).unwrap_or(0.0), *t)).collect()
        };
        if k.len() == 1 {
            return vec![self.head_moments(spec, &terms_at(env), whole, (env, 0), head_dim, salt)];
        }
        (0..k.len())
            .map(|head| {
                let terms = terms_at(&Env { head: head as f64, ..*env });
                let input = if own_slice { &k[head] } else { whole };
                let salt = salt ^ (head as u64).wrapping_mul(0x2545_F491);
                self.head_moments(spec, &terms, input, (env, head), head_dim, salt)
            })
            .collect()
    }

    /// (E[A], E[A Σ Aᵀ]) of one head whose matrix has the gains `terms`.
    fn head_moments(
        &self,
        spec: &AttentionSpec,
        terms: &[(f64, MatrixTerm)],
        k: &Mat,
        (env, head): (&Env, usize),
        head_dim: usize,
        salt: u64,
    ) -> (Mat, Mat) {
        let s = self.setting;
        let terms = terms.to_vec();
        let t = k.nrows();
        let seen = attention::Seen { mask: s.mask, window: spec.window.map(|w| w as usize) };
        let c = attention::centre(t, seen);
        // ALiBi's distance bias of this head, in the softmax only.
        let bias = (s.alibi && spec.uses(MatrixTerm::Softmax)).then(|| {
            let slope = crate::graph::alibi_slopes(s.heads.max(1) as usize)[head.min(s.heads.max(1) as usize - 1)];
            attention::alibi(t, slope, s.mask)
        });
        let d = s.width as f64;
        let sq = variance(&spec.query, d, d, env).unwrap_or(1.0);
        let sk = variance(&spec.key, d, d, env).unwrap_or(1.0);
        let sigma_qk = (sq * sk).sqrt();
        let random = spec.uses(MatrixTerm::Softmax) && sigma_qk > 0.0;
        let monte_carlo = random
            && match s.mode {
                AttentionMode::MonteCarlo => true,
                AttentionMode::ZeroQuery => false,
                AttentionMode::Auto => sigma_qk > 1.0 || spec.qk_norm.is_some(),
            };
        if monte_carlo {
            let logits = Logits {
                sigma_qk,
                head_dim,
                qk_norm: spec.qk_norm.is_some(),
                softcap: spec.softcap,
                rope: spec.rope(s.rope),
            };
            let seed = s.seed ^ (env.layer as u64).wrapping_mul(0x9E37_79B9) ^ salt.wrapping_mul(0x85EB_CA6B);
            return attention::mc_moments(&terms, logits, bias.as_ref(), k, seen, s.samples, seed);
        }
        // Zero queries (exact) or small logits (approximate): the softmax of
        // the bias alone, C without one.
        let soft = bias.map_or_else(|| c.clone(), |b| attention::softmax_masked(&b, seen));
        let a = attention::combine(&terms, &soft, &c);
        let second = &a * k * a.transpose();
        (a, second)
    }

    fn mlp(&mut self, spec: &MlpSpec, input: NodeId, env: &Env) -> (Rel, Option<Slices>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        let d = self.setting.width as f64;
        let hidden = spec.hidden(self.setting.width as u128) as f64;
        // An identity init (square only) keeps the pre-activation's kernel.
        let up = variance(&spec.up, d, hidden, env).unwrap_or(1.0);
        let down = variance(&spec.down, hidden, d, env).unwrap_or(1.0);
        if up == 0.0 || down == 0.0 {
            return (Rel::Fresh, None);
        }
        // The first map mixes the whole width; its output is every slice's.
        let pre = mean(&k) * up;
        let mut post = duals::dual(spec.activation, &pre);
        if spec.gated {
            // act(x W_gate) ⊙ (x W_up) with W_gate, W_up independent: the
            // expectation factors into the dual times the linear kernel
            // (docs/theory.md §2.3).
            post.component_mul_assign(&pre);
        }
        (Rel::Fresh, Some(vec![post * down; k.len()]))
    }
}
