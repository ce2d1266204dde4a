//! A block graph lowered: the modules of its nodes and a plan that runs
//! them in order, summing with gains where the graph sums.

use blkc::eval::Env;
use blkc::graph::{Graph, Mask, NodeId, Op, Scalar};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::{self, Kernels};
use burn::tensor::Tensor;

use super::attention::{Attention, MixParts};
use super::init::Rng;
use super::mlp::Mlp;
use super::norm::Norm;
use super::scalar::{self, Slot};

/// One step of the plan.
#[derive(Debug, Clone)]
pub enum Step {
    Input,
    Norm(usize, NodeId),
    Attention(usize, NodeId),
    Mlp(usize, NodeId),
    Sum(Vec<(Scalar, NodeId)>),
}

impl Step {
    /// The nodes this step reads (a node read twice is listed twice).
    fn inputs(&self) -> Vec<NodeId> {
        match self {
            Step::Input => Vec::new(),
            Step::Norm(_, n) | Step::Attention(_, n) | Step::Mlp(_, n) => vec![*n],
            Step::Sum(terms) => terms.iter().map(|(_, n)| *n).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub out: NodeId,
    pub slots: Vec<Slot>,
    pub env: Env,
    /// Names of the trainable gains, in the order of `Block::gains`.
    pub gain_names: Vec<String>,
    /// Per node: a shaped attention whose mix is done inside the sum that
    /// reads it (`kernels::mix_sum`).
    pub mixed_in_sum: Vec<bool>,
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
    pub fn build(
        g: &Graph,
        width: usize,
        heads: usize,
        mask: Mask,
        env: &Env,
        rng: &mut Rng,
        device: &B::Device,
    ) -> Self {
        let (gains, slots) = scalar::gains(&g.params, heads, env, device);
        let mut b = Block {
            norms: Vec::new(),
            attention: Vec::new(),
            mlp: Vec::new(),
            gains,
            plan: Plan {
                steps: Vec::new(),
                out: g.out,
                slots,
                env: *env,
                gain_names: scalar::trainable_names(&g.params),
                mixed_in_sum: Vec::new(),
            },
        };
        for n in &g.nodes {
            let step = match &n.op {
                Op::Input => Step::Input,
                Op::Norm { norm, input } => {
                    b.norms.push(Norm::build(norm, width, device));
                    Step::Norm(b.norms.len() - 1, *input)
                }
                Op::Attention { spec, input } => {
                    b.attention.push(Attention::build(spec, width, heads, mask, env, rng, device));
                    Step::Attention(b.attention.len() - 1, *input)
                }
                Op::Mlp { spec, input } => {
                    b.mlp.push(Mlp::build(spec, width, env, rng, device));
                    Step::Mlp(b.mlp.len() - 1, *input)
                }
                Op::Sum { terms } => Step::Sum(terms.iter().map(|t| (t.gain.clone(), t.input)).collect()),
            };
            b.plan.steps.push(step);
        }
        b.plan.mixed_in_sum = b.mixed_in_sums();
        b
    }

    /// The shaped attentions that a two-term sum with a trainable gain
    /// reads, and nothing else does (a parallel block's attention branch):
    /// that sum mixes them (one kernel; the attention's output is never
    /// written on its own). At most one per sum.
    fn mixed_in_sums(&self) -> Vec<bool> {
        let steps = &self.plan.steps;
        let mut reads = vec![0usize; steps.len()];
        for step in steps {
            for input in step.inputs() {
                reads[input] += 1;
            }
        }
        let mut mixed = vec![false; steps.len()];
        for step in steps {
            let Step::Sum(terms) = step else { continue };
            if terms.len() != 2 || self.constant_gains(terms) {
                continue;
            }
            let fusable = |n: NodeId| {
                reads[n] == 1
                    && n != self.plan.out
                    && matches!(steps[n], Step::Attention(k, _) if self.attention[k].ends_in_mix())
            };
            if let Some(&(_, n)) = terms.iter().find(|(_, n)| fusable(*n)) {
                mixed[n] = true;
            }
        }
        mixed
    }

    /// Whether every gain of a sum is a constant.
    fn constant_gains(&self, terms: &[(Scalar, NodeId)]) -> bool {
        terms.iter().all(|(g, _)| scalar::constant(g, &self.plan.slots, &self.plan.env).is_some())
    }

    /// The block's output. Each node's output is dropped after its last
    /// use, so that tensors are freed (and updated in place) as early as in
    /// a block written by hand.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let device = x.device();
        let steps = &self.plan.steps;
        // How many reads of each node remain; the output's never reaches 0.
        let mut remaining = vec![0usize; steps.len()];
        for step in steps {
            for input in step.inputs() {
                remaining[input] += 1;
            }
        }
        if let Some(r) = remaining.get_mut(self.plan.out) {
            *r += 1;
        }
        let mut out: Vec<Option<Tensor<B, 3>>> = Vec::with_capacity(steps.len());
        // The operands of the attentions mixed inside a sum.
        let mut parts: Vec<Option<MixParts<B>>> = (0..steps.len()).map(|_| None).collect();
        let mut x = Some(x);
        for (i, step) in steps.iter().enumerate() {
            let mut read = |n: NodeId| -> Tensor<B, 3> {
                remaining[n] -= 1;
                let t = if remaining[n] == 0 { out[n].take() } else { out[n].clone() };
                t.expect("a node is read after it is computed and before its last use")
            };
            let y = match step {
                Step::Input => x.take().expect("one input step"),
                Step::Norm(k, input) => self.norms[*k].forward(read(*input)),
                Step::Attention(k, input) if self.plan.mixed_in_sum[i] => {
                    parts[i] = Some(self.attention[*k].mix_parts(read(*input)));
                    out.push(None);
                    continue;
                }
                Step::Attention(k, input) => self.attention[*k].forward(read(*input)),
                Step::Mlp(k, input) => self.mlp[*k].forward(read(*input)),
                Step::Sum(terms) if terms.len() == 2 && !self.constant_gains(terms) => {
                    // Two terms with a trainable gain: one kernel (the
                    // shaped mix's, when one term is an attention mixed here).
                    let gain = |g: &Scalar| scalar::value(g, &self.plan.slots, &self.gains, &self.plan.env, &device);
                    match terms.iter().position(|(_, n)| parts[*n].is_some()) {
                        Some(j) => {
                            let ((ga, a), (gb, b)) = (&terms[j], &terms[1 - j]);
                            let p = parts[*a].take().expect("the parts of a mixed attention");
                            p.apply(Some((read(*b), gain(ga), gain(gb))))
                        }
                        None => {
                            let (b, a) = (read(terms[1].1), read(terms[0].1));
                            kernels::scaled_sum(b, a, gain(&terms[1].0), gain(&terms[0].0))
                        }
                    }
                }
                Step::Sum(terms) => {
                    let mut acc: Option<Tensor<B, 3>> = None;
                    // Last term first: it is usually a branch's fresh output,
                    // which the additions then update in place.
                    for (gain, input) in terms.iter().rev() {
                        let t = read(*input);
                        let t = match scalar::constant(gain, &self.plan.slots, &self.plan.env) {
                            Some(1.0) => t,
                            Some(c) => t * c,
                            None => kernels::scale_groups(
                                t,
                                scalar::value(gain, &self.plan.slots, &self.gains, &self.plan.env, &device),
                            ),
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
