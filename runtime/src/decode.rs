//! Decoding a causal model a token at a time: each attention keeps the keys
//! and values of the tokens so far ([`Cache`]), so that the next token's
//! logits cost one token's work through the stack plus its attentions'
//! reads of what they kept — not a forward pass over the whole window,
//! which made generating `n` tokens cost `n` forward passes. The logits are
//! those a forward pass over the same tokens gives at the same positions
//! (`runtime/tests/decode.rs`: every block of `blocks/`, every kind of
//! positions, grouped queries, QK-norm, soft-cap, matrices of any terms).
//! [`Window`] slides over a text longer than the model's context. An
//! attention with a sliding window keeps only the keys and values its
//! next query can see (a rolling cache, as Mistral's), so a model whose
//! every attention has a window and whose positions are relative (rotary,
//! ALiBi or none) reads a text of any length at a constant cost per token,
//! each token through its windows as a forward pass over the whole text
//! would.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::kernels::{self, Kernels};
use crate::layers::attention::Attention;
use crate::model::Model;

/// What one attention keeps of the tokens decoded so far: all of them, or,
/// under a sliding window, the latest its next query sees.
#[derive(Debug, Clone)]
pub struct Cache<B: Backend> {
    /// Keys `[batch, heads, kept, head_dim]` as its softmax reads them
    /// (with their bias, normed, rotated; one per query head).
    keys: Option<Tensor<B, 4>>,
    /// Values `[batch, kept, heads · head_dim]`, one per query head.
    values: Option<Tensor<B, 3>>,
    /// The position of the first token kept.
    start: usize,
    /// Tokens read: the position of the next.
    read: usize,
}

impl<B: Backend> Default for Cache<B> {
    fn default() -> Self {
        Cache { keys: None, values: None, start: 0, read: 0 }
    }
}

impl<B: Backend> Cache<B> {
    /// Tokens read so far: the position of the next.
    pub fn len(&self) -> usize {
        self.read
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens whose keys and values are kept.
    pub fn kept(&self) -> usize {
        self.read - self.start
    }

    /// Keeps the latest `reach` tokens only (those the next query of a
    /// window sees besides itself).
    fn roll(&mut self, reach: usize) {
        let drop = self.kept().saturating_sub(reach);
        if drop == 0 {
            return;
        }
        self.start += drop;
        let kept = self.kept();
        if kept == 0 {
            (self.keys, self.values) = (None, None);
            return;
        }
        self.values = self.values.take().map(|v| v.narrow(1, drop, kept));
        self.keys = self.keys.take().map(|k| k.narrow(2, drop, kept));
    }
}

/// `kept` with `new` after it along `dim`.
fn joined<B: Backend, const D: usize>(kept: Option<Tensor<B, D>>, new: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    match kept {
        Some(k) => Tensor::cat(vec![k, new], dim),
        None => new,
    }
}

impl<B: Kernels> Attention<B> {
    /// The attention's output `[batch, n, width]` for `x: [batch, n,
    /// width]`, the `n` tokens that follow those `cache` has read (whose
    /// count is their first position); `cache` then holds them too, and
    /// under a window drops what the next query will not see. Causal, as
    /// at evaluation (no dropout).
    pub fn decode(&self, x: Tensor<B, 3>, cache: &mut Cache<B>) -> Tensor<B, 3> {
        let [b, n, _] = x.dims();
        let from = cache.len();
        // Positions within what is kept (from `cache.start`), where the
        // masks, ALiBi's distances and the window's averages are formed:
        // they depend on distances only.
        let (at, t) = (from - cache.start, from - cache.start + n);
        let v = self.values(x.clone());
        let inner = v.dims()[2];
        let all = joined(cache.values.take(), v.clone(), 1);
        let mut soft = None;
        let softmax = || {
            let out = soft.get_or_insert_with(|| {
                let q = self.projected(&x, &self.query, &self.query_bias, &self.query_norm);
                let k = self.projected(&x, &self.key, &self.key_bias, &self.key_norm);
                // Rotary angles are those of the text's positions.
                let (q, k) = self.rotated(q, k, from);
                let keys = joined(cache.keys.take(), k, 2);
                let heads = self.plan.heads;
                let bias = self.plan.alibi.then(|| kernels::alibi_bias((at, n), t, heads, true, &x.device()));
                let w = self.weights(q, keys.clone(), bias, true, at);
                cache.keys = Some(keys);
                w.matmul(self.split(all.clone())).swap_dims(1, 2).reshape([b, n, inner])
            });
            out.clone()
        };
        // Under a window the cache holds what the new tokens see.
        let centre = || kernels::centre(all.clone(), self.keys(true)).slice([0..b, at..t]);
        let out = self.summed(v, centre, softmax);
        cache.values = Some(all);
        cache.read = from + n;
        if let Some(w) = self.plan.window {
            cache.roll(w.max(1) - 1);
        }
        self.proj.forward(out)
    }

    /// The attention's sliding window, if it has one.
    pub fn window(&self) -> Option<usize> {
        self.plan.window
    }
}

/// The caches of a whole model: one per attention of each block, and the
/// tokens they hold.
#[derive(Debug, Clone)]
pub struct State<B: Backend> {
    blocks: Vec<Vec<Cache<B>>>,
    len: usize,
}

impl<B: Kernels> State<B> {
    /// Empty caches for `model`.
    pub fn new(model: &Model<B>) -> Self {
        State { blocks: model.blocks.iter().map(|b| vec![Cache::default(); b.attention.len()]).collect(), len: 0 }
    }

    /// Tokens read: the position of the next.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The most tokens whose keys and values one attention keeps (all
    /// those read, but under a window).
    pub fn kept(&self) -> usize {
        self.blocks.iter().flatten().map(Cache::kept).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<B: Kernels> Model<B> {
    /// Whether decoding reads a text of any length at a constant cost: its
    /// positions are relative (rotary, ALiBi or none: no table to run out
    /// of) and every attention has a window (its cache is bounded) no
    /// longer than the `context` it was trained on (so no token sees
    /// further than in training).
    pub fn rolls(&self, context: usize) -> bool {
        self.positions.is_none()
            && !self.sinusoidal
            && self.blocks.iter().flat_map(|b| &b.attention).all(|a| a.window().is_some_and(|w| w <= context))
    }

    /// Logits `[batch, n, vocab]` of `tokens: [batch, n]`, the tokens that
    /// follow those `state` holds; `state` then holds them too. A causal
    /// model at evaluation: the logits of a forward pass over all the
    /// tokens at these positions. Refused when the positions would pass
    /// the model's table of learned positions.
    pub fn decode(&self, tokens: Tensor<B, 2, Int>, state: &mut State<B>) -> Result<Tensor<B, 3>, String> {
        let from = state.len();
        let n = tokens.dims()[1];
        if let Some(p) = &self.positions {
            let max = p.val().dims()[0];
            if from + n > max {
                return Err(format!("positions {from} to {} are past the model's {max} learned positions", from + n));
            }
        }
        let mut x = self.embed_from(tokens, from);
        for (b, caches) in self.blocks.iter().zip(&mut state.blocks) {
            x = b.decode(x, caches);
        }
        state.len += n;
        Ok(self.logits(x))
    }
}

/// Next-token logits over a growing text, decoded a token at a time: the
/// window the model reads starts at the text's start, and when the text
/// outgrows the context, restarts at its last `context / 2` tokens (a
/// prompt longer than the context keeps its last `context`). Each token
/// then sees at least half the context, at the cost of one forward pass
/// of `context / 2` tokens per `context / 2` generated.
///
/// A model that [`Model::rolls`] within its context never restarts: it reads the whole text,
/// each token through its attentions' windows, at a constant cost per
/// token (a long prompt is read `context` tokens at a time).
#[derive(Debug)]
pub struct Window<'a, B: Kernels> {
    model: &'a Model<B>,
    context: usize,
    device: B::Device,
    state: State<B>,
    /// Where the window starts in the text.
    start: usize,
    rolls: bool,
}

impl<'a, B: Kernels> Window<'a, B> {
    pub fn new(model: &'a Model<B>, context: usize, device: &B::Device) -> Self {
        let context = context.max(1);
        let rolls = model.rolls(context);
        Window { model, context, device: device.clone(), state: State::new(model), start: 0, rolls }
    }

    /// Where the window starts in the text now.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The logits of the token after `ids` (the text so far: what the last
    /// call was given, and more).
    pub fn next(&mut self, ids: &[u32]) -> Result<Vec<f32>, String> {
        let len = ids.len();
        let mut fed = self.start + self.state.len();
        if len == 0 || fed > len {
            return Err("the text to continue is empty, or shorter than before".into());
        }
        if !self.rolls && len - self.start > self.context {
            let keep = if fed == 0 { self.context } else { (self.context / 2).max(1) };
            self.start = len - keep;
            fed = self.start;
            self.state = State::new(self.model);
        }
        if fed == len {
            return Err("no new token to read".into());
        }
        let mut logits = None;
        // At most a context of tokens per pass (more only when rolling).
        for piece in ids[fed..].chunks(self.context) {
            let n = piece.len();
            let new: Vec<i64> = piece.iter().map(|&x| i64::from(x)).collect();
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(new, [1, n]), &self.device);
            logits = Some(self.model.decode(input, &mut self.state)?.narrow(1, n - 1, 1));
        }
        let logits = logits.ok_or("no new token to read")?;
        logits.into_data().convert::<f32>().to_vec().map_err(|e| format!("{e:?}"))
    }
}
