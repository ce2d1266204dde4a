//! A block graph lowered: the modules of its nodes and a plan that runs
//! them in order, summing with gains where the graph sums.

use blkc::eval::Env;
use blkc::graph::{Graph, Mask, NodeId, Op, Scalar};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::{self, Kernels};
use burn::tensor::Tensor;

use super::attention::Attention;
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
        b
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
        let mut x = Some(x);
        for step in steps {
            let mut read = |n: NodeId| -> Tensor<B, 3> {
                remaining[n] -= 1;
                let t = if remaining[n] == 0 { out[n].take() } else { out[n].clone() };
                t.expect("a node is read after it is computed and before its last use")
            };
            let y = match step {
                Step::Input => x.take().expect("one input step"),
                Step::Norm(k, input) => self.norms[*k].forward(read(*input)),
                Step::Attention(k, input) => self.attention[*k].forward(read(*input)),
                Step::Mlp(k, input) => self.mlp[*k].forward(read(*input)),
                Step::Sum(terms) if terms.len() == 2 && !self.constant_gains(terms) => {
                    // Two terms with a trainable gain: one kernel.
                    let gain = |g: &Scalar| scalar::value(g, &self.plan.slots, &self.gains, &self.plan.env, &device);
                    let (b, a) = (read(terms[1].1), read(terms[0].1));
                    kernels::scaled_sum(b, a, gain(&terms[1].0), gain(&terms[0].0))
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
