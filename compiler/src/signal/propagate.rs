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
use crate::graph::{AttentionSpec, Graph, Init, Linear, Mask, MatrixTerm, MlpSpec, NodeId, Op};

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
    pub kernel: Mat,
    pub nodes: Vec<NodeStat>,
}

/// A token map applied to a node's input to give the node.
#[derive(Debug, Clone)]
enum Map {
    Diag(DVector<f64>),
    Full(Mat),
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

struct Tracker<'a> {
    rel: Vec<Rel>,
    own: Vec<Option<Mat>>,
    cross: HashMap<(NodeId, NodeId), Option<Mat>>,
    setting: &'a Setting,
}

/// Propagates kernel `sigma` through graph `g` at layer `layer`.
pub fn block(g: &Graph, sigma: &Mat, env: &Env, setting: &Setting, ablation: Ablation) -> BlockOut {
    let params = crate::eval::param_values(&g.params, env);
    let at = |i: usize| params.get(i).copied().unwrap_or(0.0);
    let mut tr = Tracker { rel: Vec::new(), own: Vec::new(), cross: HashMap::new(), setting };
    let mut stats = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        let (rel, own) = match &node.op {
            Op::Input => (Rel::Input, Some(sigma.clone())),
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
            let (cosine, scale) = own.as_ref().map_or((f64::NAN, 0.0), |k| (kernel::mean_cosine(k), kernel::scale(k)));
            stats.push(NodeStat { node: id, cosine, scale });
        }
        tr.rel.push(rel);
        tr.own.push(own);
    }
    let t = sigma.nrows();
    let mut out = tr.own.get(g.out).cloned().flatten().unwrap_or_else(|| Mat::zeros(t, t));
    kernel::symmetrise(&mut out);
    BlockOut { kernel: out, nodes: stats }
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
    /// G(a, b), `None` when it is zero.
    fn gram(&mut self, a: NodeId, b: NodeId) -> Option<Mat> {
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
            g.map(|m| m.transpose())
        } else {
            g
        }
    }

    fn compute_cross(&mut self, hi: NodeId, lo: NodeId) -> Option<Mat> {
        match self.rel[hi].clone() {
            Rel::Input | Rel::Fresh => None,
            Rel::Linear(from, map) => {
                let g = self.gram(from, lo)?;
                Some(match map {
                    Map::Diag(d) => Mat::from_fn(g.nrows(), g.ncols(), |i, j| d[i] * g[(i, j)]),
                    Map::Full(m) => m * g,
                })
            }
            Rel::Sum(terms) => {
                let mut acc: Option<Mat> = None;
                for (c, s) in terms {
                    if let Some(g) = self.gram(s, lo) {
                        acc = Some(match acc {
                            Some(a) => a + g * c,
                            None => g * c,
                        });
                    }
                }
                acc
            }
        }
    }

    fn sum(&mut self, terms: &[(f64, NodeId)]) -> Option<Mat> {
        let mut acc: Option<Mat> = None;
        for (i, (ci, si)) in terms.iter().enumerate() {
            for (cj, sj) in &terms[i..] {
                let Some(g) = self.gram(*si, *sj) else { continue };
                let part = if si == sj {
                    g * (ci * cj)
                } else {
                    let gt = g.transpose();
                    (g + gt) * (ci * cj)
                };
                acc = Some(match acc {
                    Some(a) => a + part,
                    None => part,
                });
            }
        }
        acc
    }

    fn norm(&mut self, input: NodeId, eps: f64) -> (Rel, Option<Mat>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        // At init, RMSNorm and LayerNorm (zero-mean input) are the per-token
        // rescaling x_i / sqrt(q_i + ε) (docs/theory.md §2.4).
        let d = k.diagonal().map(|q| 1.0 / (q.max(0.0) + eps).sqrt());
        let own = Mat::from_fn(k.nrows(), k.ncols(), |i, j| d[i] * k[(i, j)] * d[j]);
        (Rel::Linear(input, Map::Diag(d)), Some(own))
    }

    fn attention(
        &mut self,
        spec: &AttentionSpec,
        input: NodeId,
        env: &Env,
        ab: Ablation,
        salt: u64,
    ) -> (Rel, Option<Mat>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        let s = self.setting;
        let (d, h) = (s.width as f64, s.heads.max(1));
        let head_dim = spec.head_dim.unwrap_or(s.width / h).max(1);
        let inner = (head_dim * h) as f64;
        let value = linear_map(&spec.value, d, inner, env);
        let proj = linear_map(&spec.proj, inner, d, env);
        let factor = match (value, proj) {
            (Ok(a), Ok(b)) => Ok(a * b),
            (Ok(a), Err(v)) | (Err(v), Ok(a)) => Err(a * a * v),
            (Err(u), Err(v)) => Err(u * v),
        };
        let t = k.nrows();
        let (mean, second) = if ab.attention_identity {
            (Mat::identity(t, t), k.clone())
        } else {
            self.matrix_moments(spec, &k, env, head_dim as usize, salt)
        };
        match factor {
            Ok(a) if a != 0.0 => (Rel::Linear(input, Map::Full(mean * a)), Some(second * (a * a))),
            Err(v) if v != 0.0 => (Rel::Fresh, Some(second * v)),
            _ => (Rel::Fresh, None),
        }
    }

    /// (E[A], E[A Σ Aᵀ]) of the attention matrix for input kernel `k`.
    fn matrix_moments(&self, spec: &AttentionSpec, k: &Mat, env: &Env, head_dim: usize, salt: u64) -> (Mat, Mat) {
        let s = self.setting;
        let params = crate::eval::param_values(&spec.params, env);
        let at = |i: usize| params.get(i).copied().unwrap_or(0.0);
        let terms: Vec<(f64, MatrixTerm)> =
            spec.matrix.iter().map(|(c, t)| (eval(c, env, &at).unwrap_or(0.0), *t)).collect();
        let t = k.nrows();
        let c = attention::centre(t, s.mask);
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
            let logits = Logits { sigma_qk, head_dim, qk_norm: spec.qk_norm.is_some(), softcap: spec.softcap };
            let seed = s.seed ^ (env.layer as u64).wrapping_mul(0x9E37_79B9) ^ salt.wrapping_mul(0x85EB_CA6B);
            return attention::mc_moments(&terms, logits, k, s.mask, s.samples, seed);
        }
        // Zero queries (exact) or small logits (approximate): softmax = C.
        let a = attention::combine(&terms, &c, &c);
        let second = &a * k * a.transpose();
        (a, second)
    }

    fn mlp(&mut self, spec: &MlpSpec, input: NodeId, env: &Env) -> (Rel, Option<Mat>) {
        let Some(k) = self.own[input].clone() else {
            return (Rel::Fresh, None);
        };
        let d = self.setting.width as f64;
        let hidden = crate::graph::params::hidden(self.setting.width as u128, spec.width) as f64;
        // An identity init (square only) keeps the pre-activation's kernel.
        let up = variance(&spec.up, d, hidden, env).unwrap_or(1.0);
        let down = variance(&spec.down, hidden, d, env).unwrap_or(1.0);
        if up == 0.0 || down == 0.0 {
            return (Rel::Fresh, None);
        }
        let post = duals::dual(spec.activation, &(k * up));
        (Rel::Fresh, Some(post * down))
    }
}
