//! A block graph lowered: the modules of its nodes and a plan that runs
//! them in order, summing with gains where the graph sums.

use super::Build;
use blkc::eval::Env;
use blkc::graph::{Graph, NodeId, Op, Scalar};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::{self, Kernels};
use burn::tensor::Tensor;

use super::attention::{Attention, MixParts};
use super::dropout::Noise;
use super::mlp::Mlp;
use super::norm::Norm;
use super::scalar::{self, Slot};
use crate::decode::Cache;

/// One step of the plan, fused where the build found it can be.
#[derive(Debug, Clone)]
pub enum Step {
    Input,
    Norm(usize, NodeId),
    Attention(usize, NodeId),
    /// A shaped attention whose mix is done by the sum that reads it: its
    /// operands only.
    MixParts(usize, NodeId),
    Mlp(usize, NodeId),
    /// `beta_sa · parts + beta_ff · other` (SAS-P's gains): a shaped
    /// attention's parts, mixed and
    /// summed with the other term in one kernel.
    MixedSum {
        parts: (Scalar, NodeId),
        other: (Scalar, NodeId),
    },
    /// Two terms and a trainable gain: one kernel.
    GainedSum([(Scalar, NodeId); 2]),
    /// Any other sum, term by term (constant gains folded in).
    Sum(Vec<(Scalar, NodeId)>),
}

impl Step {
    /// The nodes this step reads (a node read twice is listed twice).
    fn inputs(&self) -> Vec<NodeId> {
        match self {
            Step::Input => Vec::new(),
            Step::Norm(_, n) | Step::Attention(_, n) | Step::MixParts(_, n) | Step::Mlp(_, n) => vec![*n],
            Step::MixedSum { parts, other } => vec![parts.1, other.1],
            Step::GainedSum(terms) => terms.iter().map(|(_, n)| *n).collect(),
            Step::Sum(terms) => terms.iter().map(|(_, n)| *n).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The steps unfused: run when a sub-block drops values in training
    /// (its dropout sits inside what the fused steps compute in one
    /// kernel), and when decoding a token at a time.
    pub unfused: Vec<Step>,
    /// Whether a sub-block drops values in training.
    pub dropout: bool,
    pub out: NodeId,
    pub slots: Vec<Slot>,
    pub env: Env,
    /// Names of the trainable gains, in the order of `Block::gains`.
    pub gain_names: Vec<String>,
    /// How many times each node is read (the output once more, so that it
    /// is kept).
    pub reads: Vec<usize>,
    /// The constant gains as tensors, once made.
    pub constants: scalar::Constants,
}

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norms: Vec<Norm<B>>,
    pub attention: Vec<Attention<B>>,
    pub mlp: Vec<Mlp<B>>,
    /// The block's trainable gains.
    pub gains: Vec<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub plan: Plan,
}

impl<B: Kernels> Block<B> {
    /// Lowers `g` (the graph of one layer) at `env` (which fixes `layer`).
    pub fn build(g: &Graph, ctx: &mut Build<'_, B>) -> Self {
        let (gains, slots) = scalar::gains(&g.params, ctx.heads, &ctx.env, ctx.device);
        let mut b = Block {
            norms: Vec::new(),
            attention: Vec::new(),
            mlp: Vec::new(),
            gains,
            plan: Plan {
                steps: Vec::new(),
                unfused: Vec::new(),
                dropout: false,
                out: g.out,
                slots,
                env: ctx.env,
                gain_names: scalar::trainable_names(&g.params),
                reads: Vec::new(),
                constants: Default::default(),
            },
        };
        for n in &g.nodes {
            let step = match &n.op {
                Op::Input => Step::Input,
                Op::Norm { norm, input } => {
                    b.norms.push(Norm::build(norm, ctx.width, ctx.device));
                    Step::Norm(b.norms.len() - 1, *input)
                }
                Op::Attention { spec, input } => {
                    b.attention.push(Attention::build(spec, ctx));
                    Step::Attention(b.attention.len() - 1, *input)
                }
                Op::Mlp { spec, input } => {
                    b.mlp.push(Mlp::build(spec, ctx));
                    Step::Mlp(b.mlp.len() - 1, *input)
                }
                Op::Sum { terms } => Step::Sum(terms.iter().map(|t| (t.gain.clone(), t.input)).collect()),
            };
            b.plan.steps.push(step);
        }
        b.plan.reads = b.reads();
        b.plan.unfused = b.plan.steps.clone();
        b.plan.dropout = g.nodes.iter().any(|n| !n.op.dropout().is_off());
        b.fuse();
        b
    }

    /// How many times each node is read, the output once more.
    fn reads(&self) -> Vec<usize> {
        let steps = &self.plan.steps;
        let mut reads = vec![0usize; steps.len()];
        for input in steps.iter().flat_map(Step::inputs) {
            reads[input] += 1;
        }
        if let Some(r) = reads.get_mut(self.plan.out) {
            *r += 1;
        }
        reads
    }

    /// The fused steps: a sum of two terms with a trainable gain is one
    /// kernel; when one term is a shaped attention that ends in its mix
    /// and nothing else reads (a parallel block's attention branch), the
    /// attention yields its operands and the sum's kernel mixes them (its
    /// output is never written on its own). At most one per sum.
    fn fuse(&mut self) {
        let reads = self.plan.reads.clone();
        for i in 0..self.plan.steps.len() {
            let Step::Sum(terms) = &self.plan.steps[i] else { continue };
            if terms.len() != 2 || self.constant_gains(terms) {
                continue;
            }
            let pair = [terms[0].clone(), terms[1].clone()];
            let mixable = |n: NodeId| match self.plan.steps[n] {
                Step::Attention(k, _) => reads[n] == 1 && self.attention[k].ends_in_mix(),
                _ => false,
            };
            self.plan.steps[i] = match pair.iter().position(|(_, n)| mixable(*n)) {
                Some(j) => {
                    let (parts, other) = (pair[j].clone(), pair[1 - j].clone());
                    if let Step::Attention(k, input) = self.plan.steps[parts.1] {
                        self.plan.steps[parts.1] = Step::MixParts(k, input);
                    }
                    Step::MixedSum { parts, other }
                }
                None => Step::GainedSum(pair),
            };
        }
    }

    /// Whether every gain of a sum is a constant.
    fn constant_gains(&self, terms: &[(Scalar, NodeId)]) -> bool {
        terms.iter().all(|(g, _)| scalar::constant(g, &self.plan.slots, &self.plan.env).is_some())
    }

    /// The block's output at evaluation (no dropout).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_with(x, None)
    }

    /// The block's output, with the sub-blocks' dropout drawn from `noise`
    /// when it is given (a training forward).
    pub fn forward_with(&self, x: Tensor<B, 3>, noise: Option<Noise>) -> Tensor<B, 3> {
        match noise {
            Some(n) if self.plan.dropout => {
                let n = n.at(self.plan.env.layer as u64);
                let attend = |k: usize, x, noise| self.attention[k].forward_with(x, noise);
                self.run(&self.plan.unfused, x, Some(n), attend)
            }
            _ => self.run(&self.plan.steps, x, None, |k, x, _| self.attention[k].forward(x)),
        }
    }

    /// The block's output for the tokens that follow those of `caches`
    /// (one per attention, see [`Attention::decode`]), which then hold
    /// them too: as at evaluation, causal only.
    pub fn decode(&self, x: Tensor<B, 3>, caches: &mut [Cache<B>]) -> Tensor<B, 3> {
        self.run(&self.plan.unfused, x, None, |k, x, _| self.attention[k].decode(x, &mut caches[k]))
    }

    /// `steps` in order on `x`, each attention's output from `attend(k,
    /// input, noise)`, with the sub-blocks' dropout drawn from `noise` when
    /// it is given. Each node's output is dropped after its last read, so
    /// that tensors are freed (and updated in place) as early as in a block
    /// written by hand.
    fn run(
        &self,
        steps: &[Step],
        x: Tensor<B, 3>,
        noise: Option<Noise>,
        mut attend: impl FnMut(usize, Tensor<B, 3>, Option<Noise>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let device = x.device();
        let mut remaining = self.plan.reads.clone();
        let mut out: Vec<Option<Tensor<B, 3>>> = Vec::with_capacity(steps.len());
        // The operands of the attentions mixed inside a sum.
        let mut parts: Vec<Option<MixParts<B>>> = (0..steps.len()).map(|_| None).collect();
        let mut x = Some(x);
        let gain = |g: &Scalar| self.plan.constants.value(g, &self.plan.slots, &self.gains, &self.plan.env, &device);
        for (i, step) in steps.iter().enumerate() {
            let mut read = |n: NodeId| -> Tensor<B, 3> {
                remaining[n] -= 1;
                let t = if remaining[n] == 0 { out[n].take() } else { out[n].clone() };
                t.expect("a node is read after it is computed and before its last use")
            };
            let noise = noise.map(|n| n.at(i as u64));
            let y = match step {
                Step::Input => x.take().expect("one input step"),
                Step::Norm(k, input) => self.norms[*k].forward(read(*input)),
                Step::Attention(k, input) => attend(*k, read(*input), noise),
                Step::MixParts(k, input) => {
                    parts[i] = Some(self.attention[*k].mix_parts(read(*input)));
                    out.push(None);
                    continue;
                }
                Step::Mlp(k, input) => self.mlp[*k].forward_with(read(*input), noise),
                Step::MixedSum { parts: (beta_sa, a), other: (beta_ff, b) } => {
                    let p = parts[*a].take().expect("the parts of a mixed attention");
                    p.apply(Some((read(*b), gain(beta_sa), gain(beta_ff))))
                }
                Step::GainedSum([(ga, a), (gb, b)]) => {
                    let (b, a) = (read(*b), read(*a));
                    kernels::scaled_sum(b, a, gain(gb), gain(ga))
                }
                Step::Sum(terms) => {
                    let mut acc: Option<Tensor<B, 3>> = None;
                    // Last term first: it is usually a branch's fresh output,
                    // which the additions then update in place.
                    for (g, input) in terms.iter().rev() {
                        let t = read(*input);
                        let t = match scalar::constant(g, &self.plan.slots, &self.plan.env) {
                            Some(1.0) => t,
                            Some(c) => t * c,
                            None => kernels::scale_groups(t, gain(g)),
                        };
                        acc = Some(match acc {
                            Some(a) => a + t,
                            None => t,
                        });
                    }
                    acc.expect("a sum has at least one term")
                }
            };
            out.push(Some(y));
        }
        out.swap_remove(self.plan.out).expect("the output node is kept")
    }
}
