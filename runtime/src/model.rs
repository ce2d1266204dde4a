//! A whole model lowered from a checked program: token embedding,
//! positions, the stack of blocks, final norm and LM head (tied to the
//! embedding or not).

use blkc::graph::{Model as ModelIr, Positions, Program};
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::kernels::Kernels;
use crate::layers::block::Block;
use crate::layers::dropout::Noise;
use crate::layers::init::{param, weight};
use crate::layers::norm::Norm;
use crate::layers::tables::Tables;
use crate::layers::Build;
use crate::rng::Rng;

#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    /// `[vocab, width]`.
    pub embedding: Param<Tensor<B, 2>>,
    /// Learned positions `[max, width]`.
    pub positions: Option<Param<Tensor<B, 2>>>,
    pub blocks: Vec<Block<B>>,
    pub final_norm: Option<Norm<B>>,
    /// Untied LM head `[width, vocab]`.
    pub head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub sinusoidal: bool,
    /// The embedding's scale (1: none).
    #[module(skip)]
    pub embed_scale: f64,
    /// `cap · tanh(logits / cap)` on the logits, when given.
    #[module(skip)]
    pub logit_softcap: Option<f64>,
    /// Tables of positions, kept on each device (sinusoidal positions here,
    /// rotary angles in the attentions).
    #[module(skip)]
    pub tables: Tables,
}

impl<B: Kernels> Model<B> {
    /// Builds `m` with the block of `p` at init; `seed` fixes every draw
    /// (made on the host: the same weights on every backend).
    pub fn build(p: &Program, m: &ModelIr, seed: u64, device: &B::Device) -> Self {
        let mut rng = Rng::new(seed);
        let (d, h) = (m.width as usize, m.heads as usize);
        let block = &p.blocks[m.block];
        let env = |layer: u64| m.env(layer);
        let embedding = param(weight(&m.embed_init, m.vocab as usize, d, &env(0), &mut rng, device));
        let positions = match m.positions {
            Positions::Learned { max } => {
                Some(param(weight(&m.embed_init, max as usize, d, &env(0), &mut rng, device)))
            }
            _ => None,
        };
        let tables = Tables::default();
        let blocks = (0..m.depth)
            .map(|l| {
                let rope = m.positions.rope();
                let alibi = m.positions == Positions::Alibi;
                let (rng, tables) = (&mut rng, &tables);
                let mut b = Build { width: d, heads: h, mask: m.mask, rope, alibi, env: env(l), rng, device, tables };
                Block::build(block.graph_at(l, m.depth), &mut b)
            })
            .collect();
        let final_norm = m.final_norm.map(|n| Norm::build(&n, d, device));
        let head =
            (!m.tied_embeddings).then(|| param(weight(&m.embed_init, d, m.vocab as usize, &env(0), &mut rng, device)));
        Model {
            embedding,
            positions,
            blocks,
            final_norm,
            head,
            sinusoidal: m.positions == Positions::Sinusoidal,
            embed_scale: m.embed_scale,
            logit_softcap: m.logit_softcap,
            tables,
        }
    }

    /// Token and position embeddings of `tokens: [batch, T]` → `[batch, T, width]`.
    pub fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_from(tokens, 0)
    }

    /// [`Model::embed`] of tokens at positions `from` to `from + T`.
    pub fn embed_from(&self, tokens: Tensor<B, 2, Int>, from: usize) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        let device = tokens.device();
        let w = self.embedding.val();
        let d = w.dims()[1];
        let positions = match &self.positions {
            Some(p) => Some(p.val().slice([from..from + t, 0..d])),
            None if self.sinusoidal => {
                let [table] = self
                    .tables
                    .rows(("sinusoidal", d, 0), from..from + t, &device, |n| [sinusoidal::<B>(0..n, d, &device)]);
                Some(table)
            }
            None => None,
        };
        let x = crate::kernels::embed(w, tokens.reshape([b * t]), positions).reshape([b, t, d]);
        match self.embed_scale {
            1.0 => x,
            s => x * s,
        }
    }

    /// The residual stream after each block (layer 1 = after the first).
    pub fn stream(&self, tokens: Tensor<B, 2, Int>) -> Vec<Tensor<B, 3>> {
        let mut x = self.embed(tokens);
        let mut out = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            x = b.forward(x);
            out.push(x.clone());
        }
        out
    }

    /// Parameters that train: every parameter but the fixed `W_init` of
    /// reparameterised maps (the convention of `blkc params`).
    pub fn trainable_params(&self) -> usize {
        let frozen: usize = self
            .blocks
            .iter()
            .flat_map(|b| &b.attention)
            .flat_map(|a| [&a.value.fixed, &a.proj.fixed])
            .flatten()
            .map(|p| p.shape().num_elements())
            .sum();
        self.num_params() - frozen
    }

    /// Every trainable gain, named `L.name` (block gains) or
    /// `L.attention.name` (matrix gains), with its value averaged over
    /// heads; read from the device in one transfer.
    pub fn gains(&self) -> Vec<(String, f32)> {
        let mut names = Vec::new();
        let mut parts = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            for (n, g) in b.plan.gain_names.iter().zip(&b.gains) {
                names.push(format!("{l}.{n}"));
                parts.push(g.val().mean());
            }
            for a in &b.attention {
                for (n, g) in a.plan.gain_names.iter().zip(&a.gains) {
                    names.push(format!("{l}.attention.{n}"));
                    parts.push(g.val().mean());
                }
            }
        }
        if parts.is_empty() {
            return Vec::new();
        }
        let values: Vec<f32> = Tensor::cat(parts, 0).into_data().convert::<f32>().to_vec().unwrap_or_default();
        names.into_iter().zip(values).collect()
    }

    /// Logits `[batch, T, vocab]`, as at evaluation (no dropout).
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(tokens, None)
    }

    /// Logits `[batch, T, vocab]`, with the blocks' dropout drawn from
    /// `noise` when it is given (a training forward).
    pub fn forward_with(&self, tokens: Tensor<B, 2, Int>, noise: Option<Noise>) -> Tensor<B, 3> {
        self.capped(self.head_with(tokens, noise))
    }

    /// The head's output before the logits' soft-cap (`logit_softcap`),
    /// which the training loss applies in its own kernel.
    pub fn head_with(&self, tokens: Tensor<B, 2, Int>, noise: Option<Noise>) -> Tensor<B, 3> {
        let mut x = self.embed(tokens);
        for b in &self.blocks {
            x = b.forward_with(x, noise);
        }
        self.head(x)
    }

    /// The final norm and the head on the last block's output, then the
    /// logits' soft-cap.
    pub fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.capped(self.head(x))
    }

    /// The final norm and the head on the last block's output.
    fn head(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(n) = &self.final_norm {
            x = n.forward(x);
        }
        match &self.head {
            Some(h) => crate::layers::linear(x, h.val(), None),
            // Tied: the table itself is the product's operand (its
            // gradient is added into the embedding's, no transpose node).
            None => crate::kernels::linear_transposed(x, self.embedding.val()),
        }
    }

    /// `cap · tanh(logits / cap)` with the model's `logit_softcap`.
    fn capped(&self, logits: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.logit_softcap {
            Some(cap) => crate::kernels::softcap(logits, cap),
            None => logits,
        }
    }
}

/// The rows `positions` of the sinusoidal table of Vaswani et al. (2017):
/// `[positions.len(), d]`.
fn sinusoidal<B: Backend>(positions: std::ops::Range<usize>, d: usize, device: &B::Device) -> Tensor<B, 2> {
    let t = positions.len();
    let data: Vec<f32> = (0..t * d)
        .map(|k| {
            let (pos, i) = ((positions.start + k / d) as f64, k % d);
            let freq = 1.0 / 10_000f64.powf((2 * (i / 2)) as f64 / d as f64);
            if i % 2 == 0 {
                (pos * freq).sin() as f32
            } else {
                (pos * freq).cos() as f32
            }
        })
        .collect();
    Tensor::from_data(burn::tensor::TensorData::new(data, [t, d]), device)
}
