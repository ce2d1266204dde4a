//! A block graph lowered: the modules of its nodes and a plan that runs
//! them in order, summing with gains where the graph sums.

use blkc::eval::Env;
use blkc::graph::{Graph, Mask, NodeId, Op, Scalar};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;

use crate::kernels::{self, Kernels};
use burn::tensor::Tensor;

use super::attention::Attention;
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
    pub fn build(g: &Graph, width: usize, heads: usize, mask: Mask, env: &Env, device: &B::Device) -> Self {
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
                    b.attention.push(Attention::build(spec, width, heads, mask, env, device));
                    Step::Attention(b.attention.len() - 1, *input)
                }
                Op::Mlp { spec, input } => {
                    b.mlp.push(Mlp::build(spec, width, env, device));
                    Step::Mlp(b.mlp.len() - 1, *input)
                }
                Op::Sum { terms } => Step::Sum(terms.iter().map(|t| (t.gain.clone(), t.input)).collect()),
            };
            b.plan.steps.push(step);
        }
        b
    }

    /// Every node's output, in graph order.
    pub fn nodes(&self, x: Tensor<B, 3>) -> Vec<Tensor<B, 3>> {
        let device = x.device();
        let mut out: Vec<Tensor<B, 3>> = Vec::with_capacity(self.plan.steps.len());
        for step in &self.plan.steps {
            let y = match step {
                Step::Input => x.clone(),
                Step::Norm(i, input) => self.norms[*i].forward(out[*input].clone()),
                Step::Attention(i, input) => self.attention[*i].forward(out[*input].clone()),
                Step::Mlp(i, input) => self.mlp[*i].forward(out[*input].clone()),
                Step::Sum(terms) => {
                    let mut acc: Option<Tensor<B, 3>> = None;
                    for (gain, input) in terms {
                        let t = out[*input].clone();
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
                    acc.unwrap_or_else(|| x.zeros_like())
                }
            };
            out.push(y);
        }
        out
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let out = self.plan.out;
        self.nodes(x).swap_remove(out)
    }
}
