//! What may be written where, for tools that help write `.blk` files (the
//! language server's completion and hover): the settings of each section,
//! the values each setting takes, the modules and variables of a block.
//! The lists are the checker's own, so completion offers exactly what the
//! checker accepts.

use super::block::{MODULES, RESERVED};
use super::expr::INITS;
use super::model::{Kind, MASKS, MODEL_KEYS, NORMS, POSITIONS, TRAIN_KEYS};
use super::sections::{ACTIVATIONS, ATTENTION_KEYS, MLP_KEYS};
use crate::syntax::ast::SectionKind;

/// The setting names of a section kind, in the order the docs give them.
pub fn settings(kind: SectionKind) -> Vec<&'static str> {
    match kind {
        SectionKind::Attention => ATTENTION_KEYS.to_vec(),
        SectionKind::Mlp => MLP_KEYS.to_vec(),
        SectionKind::Model => MODEL_KEYS.to_vec(),
        SectionKind::Train => TRAIN_KEYS.iter().map(|(k, _)| *k).collect(),
    }
}

/// The keywords a setting takes as its value (empty where it takes a
/// number, a string or an expression).
pub fn values(kind: SectionKind, key: &str) -> Vec<&'static str> {
    let bools = &["true", "false"][..];
    match (kind, key) {
        (SectionKind::Attention, "query" | "key") | (SectionKind::Mlp, "up" | "down") => INITS.to_vec(),
        (SectionKind::Model, "embed_init") => INITS.to_vec(),
        (SectionKind::Attention, "value" | "proj") => vec!["identity", "linear", "reparam"],
        (SectionKind::Attention, "matrix") => vec!["I", "softmax", "centre"],
        (SectionKind::Attention, "qk_norm") | (SectionKind::Model, "final_norm") => NORMS.to_vec(),
        (SectionKind::Attention | SectionKind::Mlp, "bias") | (SectionKind::Model, "tied_embeddings") => bools.to_vec(),
        (SectionKind::Mlp, "activation") => ACTIVATIONS.to_vec(),
        (SectionKind::Model, "mask") => MASKS.to_vec(),
        (SectionKind::Model, "positions") => POSITIONS.to_vec(),
        (SectionKind::Train, key) => match TRAIN_KEYS.iter().find(|(k, _)| *k == key) {
            Some((_, Kind::Choice(c) | Kind::ChoiceOrText(c))) => c.to_vec(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The modules a block calls.
pub fn modules() -> &'static [&'static str] {
    MODULES
}

/// The names a block may read without defining them: its input `x` and
/// the variables `depth`, `width`, `heads`, `layer`.
pub fn reserved() -> &'static [&'static str] {
    RESERVED
}

/// One line on what a setting does (docs/language.md has the whole story).
pub fn describe(kind: SectionKind, key: &str) -> Option<&'static str> {
    Some(match (kind, key) {
        (SectionKind::Attention, "query") => "init of the query weights W_Q (`zeros` makes softmax uniform at init)",
        (SectionKind::Attention, "key") => "init of the key weights W_K",
        (SectionKind::Attention, "value") => "the value map: `identity`, `linear(init)` or `reparam(…)`",
        (SectionKind::Attention, "proj") => "the output projection: `identity`, `linear(init)` or `reparam(…)`",
        (SectionKind::Attention, "matrix") => {
            "the attention matrix per head, a sum of `I`, `softmax`, `centre` with gains"
        }
        (SectionKind::Attention, "bias") => "biases on the query and key maps",
        (SectionKind::Attention, "qk_norm") => "a norm on queries and keys per head",
        (SectionKind::Attention, "softcap") => "caps the scores: c·tanh(s/c)",
        (SectionKind::Attention, "rope_base") => {
            "the rotary base of this attention's layers in place of the model's (Gemma 3: 1e6 on global layers), or `none`"
        }
        (SectionKind::Attention, "window") => "sliding-window attention: each token sees the N latest tokens",
        (SectionKind::Attention, "head_dim") => "width of one head (default: width / heads)",
        (SectionKind::Attention, "kv_heads") => "heads of keys and values, each shared by heads / kv_heads query heads (grouped-query attention; 1: multi-query)",
        (SectionKind::Attention, "dropout") => "dropout on the softmax weights, in training only (not in the signal check)",
        (SectionKind::Attention, "resid_dropout") => "dropout on the attention's output, in training only (not in the signal check)",
        (SectionKind::Mlp, "activation") => "the hidden activation",
        (SectionKind::Mlp, "width") => "hidden width as a multiple of the model width (e.g. 8/3 for a gated unit)",
        (SectionKind::Mlp, "multiple_of") => "round the hidden width up to a multiple of this (Llama's `multiple_of`)",
        (SectionKind::Mlp, "bias") => "biases on both linear maps",
        (SectionKind::Mlp, "up") => "init of the first linear map",
        (SectionKind::Mlp, "down") => "init of the second linear map",
        (SectionKind::Mlp, "dropout") => "dropout on the hidden layer, in training only (not in the signal check)",
        (SectionKind::Mlp, "resid_dropout") => "dropout on the MLP's output, in training only (not in the signal check)",
        (SectionKind::Model, "block") => "the block stacked `depth` times",
        (SectionKind::Model, "depth") => "how many blocks are stacked",
        (SectionKind::Model, "width") => "the residual width d",
        (SectionKind::Model, "heads") => "attention heads (they divide the width)",
        (SectionKind::Model, "context") => "tokens per sequence",
        (SectionKind::Model, "vocab") => "vocabulary size (the tokenizer's)",
        (SectionKind::Model, "mask") => "`causal` (language model) or `bidirectional` (masked LM)",
        (SectionKind::Model, "positions") => "position embeddings added to the tokens",
        (SectionKind::Model, "final_norm") => "the norm before the LM head",
        (SectionKind::Model, "tied_embeddings") => "the LM head is the embedding's transpose",
        (SectionKind::Model, "embed_init") => "init of the token embedding",
        (SectionKind::Model, "embed_scale") => "the embedding times this before the first block (Gemma: sqrt(width))",
        (SectionKind::Model, "logit_softcap") => "cap · tanh(logits / cap) on the head's logits (Gemma 2: 30), or `none`",
        (SectionKind::Train, "data") => "the corpus: `\"python-stdlib\"`, a glob of text files or a JSONL file",
        (SectionKind::Train, "data_field") => "the JSONL field that holds the text",
        (SectionKind::Train, "tokenizer") => "`bpe` (trained on the data), `bytes`, or a tokenizer.json path",
        (SectionKind::Train, "batch") => "sequences per optimiser step",
        (SectionKind::Train, "micro_batch") => "sequences per forward pass (gradients accumulate)",
        (SectionKind::Train, "steps") => "optimiser steps",
        (SectionKind::Train, "lr") => "peak learning rate",
        (SectionKind::Train, "warmup") => "fraction of the steps spent warming up",
        (SectionKind::Train, "schedule") => "learning-rate decay after warm-up",
        (SectionKind::Train, "optimizer") => "the optimiser",
        (SectionKind::Train, "beta1") => "Adam's first-moment decay",
        (SectionKind::Train, "beta2") => "Adam's second-moment decay",
        (SectionKind::Train, "adam_eps") => "Adam's epsilon",
        (SectionKind::Train, "weight_decay") => "decoupled weight decay (matrices only)",
        (SectionKind::Train, "clip") => "gradient-norm clipping",
        (SectionKind::Train, "eval_every") => "steps between validation losses",
        (SectionKind::Train, "eval_batches") => "batches per validation loss",
        (SectionKind::Train, "checkpoint_every") => "steps between checkpoints",
        (SectionKind::Train, "log_every") => "steps between metric lines",
        (SectionKind::Train, "seed") => "seed of init, batches and sampling",
        (SectionKind::Train, "val_fraction") => "share of the data held out for validation",
        (SectionKind::Train, "mask_rate") => "share of tokens masked (bidirectional models)",
        (SectionKind::Train, "device") => "where training runs",
        (SectionKind::Train, "devices") => "devices training runs on in parallel, each with its share of the batch",
        (SectionKind::Train, "precision") => {
            "the weight products: `fp32`, `tf32` (f32 tensors, TF32 tensor cores where the GPU has them), `bf16` (fp32 weights, optimiser, norms, softmax, loss), `auto` (bf16 on CUDA)"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [SectionKind; 4] = [SectionKind::Attention, SectionKind::Mlp, SectionKind::Model, SectionKind::Train];

    #[test]
    fn every_setting_is_described() {
        for kind in KINDS {
            for key in settings(kind) {
                assert!(describe(kind, key).is_some(), "{}.{key} has no description", kind.keyword());
            }
        }
    }

    #[test]
    fn every_value_offered_is_accepted_by_the_checker() {
        for kind in KINDS {
            for key in settings(kind) {
                for value in values(kind, key) {
                    // `linear` and `reparam` are calls; written bare, the
                    // checker asks for their arguments.
                    let value = match value {
                        "linear" if kind == SectionKind::Attention => "linear(orthogonal)",
                        "reparam" => "reparam(skip = 1, resid = 1, init = identity)",
                        "normal" if kind != SectionKind::Train => "normal(0.02)",
                        v => v,
                    };
                    let text = section_text(kind, key, value);
                    let c = crate::compile_str("v.blk", &text);
                    assert!(!c.has_errors(), "{}.{key} = {value}: {:?}", kind.keyword(), c.diagnostics);
                }
            }
        }
    }

    /// A program that sets `key = value` in a section of `kind`.
    fn section_text(kind: SectionKind, key: &str, value: &str) -> String {
        let block = "block b { out = x + attn(rmsnorm(x), a) + mlp(rmsnorm(x), m) }\n";
        let model = |extra: &str| {
            format!("model {{ block = b\n depth = 2\n width = 8\n heads = 2\n context = 8\n vocab = 16\n {extra} }}\n")
        };
        match kind {
            SectionKind::Attention => format!("{block}attention a {{ {key} = {value} }}\nmlp m {{ }}\n{}", model("")),
            SectionKind::Mlp => format!("{block}attention a {{ }}\nmlp m {{ {key} = {value} }}\n{}", model("")),
            SectionKind::Model => {
                let extra = if key == "block" { String::new() } else { format!("{key} = {value}") };
                format!("{block}attention a {{ }}\nmlp m {{ }}\n{}", model(&extra))
            }
            SectionKind::Train => {
                format!("{block}attention a {{ }}\nmlp m {{ }}\n{}train {{ {key} = {value} }}\n", model(""))
            }
        }
    }
}
