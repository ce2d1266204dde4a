//! Training: `blkc train`, `blkc eval` and `blkc sample` share what is
//! here — data, tokenizer, batches, the optimiser, the run directory — and
//! the loop itself ([`train`]).

pub mod batch;
pub mod comparison;
pub mod data;
mod lines;
pub mod logs;
pub mod made_by;
pub mod memory;
pub mod open;
pub mod optim;
pub mod parallel;
mod pieces;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod run;
pub mod rundir;
pub mod settings;
pub mod signals;
mod steps;
pub mod token_files;
pub mod tokenizer;
pub mod tokens;

use std::path::PathBuf;

use blkc::graph::{Mask, Model as ModelIr, Program};
use blkc::span::FileId;
use blkc::{Code, Diagnostic, SourceMap};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::kernels::{self, Kernels};
use crate::layers::dropout::Noise;
use crate::model::Model;
use batch::{Batch, Objective, Stream};
use settings::Settings;
use tokenizer::Tokenizer;

pub use run::train;

/// What went wrong, for the command line to print.
#[derive(Debug)]
pub enum Failure {
    /// A plain message.
    Message(String),
    /// A diagnostic located in the .blk sources.
    Located(Box<Diagnostic>, SourceMap),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Message(s)
    }
}

/// A model and its sources, ready to build.
#[derive(Debug)]
pub struct Job {
    pub program: Program,
    pub sources: SourceMap,
    /// The `--set` model settings and params compiled into `program`
    /// (saved with the sources, so a resume rebuilds the same model).
    pub sets: Vec<String>,
    /// The .blk file as given.
    pub file: String,
    pub settings: Settings,
    pub out: PathBuf,
    /// Continue the run in `out` instead of starting one.
    pub resume: Option<Resume>,
    /// Start from this checkpoint's weights instead of an initialisation
    /// (and with its tokenizer); a resumed run's own, for a resume from
    /// step 0.
    pub init_from: Option<rundir::InitFrom>,
    /// Stop (as if interrupted) once this many steps are done.
    pub stop_at: Option<u64>,
    pub quiet: bool,
}

/// How a resumed run continues.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The checkpoint to continue from (default: the newest complete one).
    pub checkpoint: Option<PathBuf>,
    /// The run as `run.json` had it (settings validated): the settings it
    /// was started (or last resumed) with, its commands, its git commit.
    pub before: rundir::RunInfo,
    /// Whether a changed learning-rate schedule is accepted.
    pub reschedule: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub steps: u64,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub tokens_per_s: f64,
    /// Share of step time spent assembling batches on the host.
    pub data_share: f64,
    /// Stopped before `steps`: by a signal or by `--stop-at`.
    pub interrupted: bool,
    /// The signal that stopped it, if one did.
    pub signal: Option<i32>,
    pub checkpoint: Option<PathBuf>,
}

/// The model of a program, or a located error.
pub fn model_of(p: &Program) -> Result<&ModelIr, String> {
    p.model.as_ref().ok_or_else(|| {
        "the file defines no `model` to train; write one (see examples/small/sas-p.blk) or train one of examples/small/"
            .to_string()
    })
}

/// The small CPU model of `examples/small/` (6 blocks, width 256) around
/// the block named `block`, named `name`: where a file without a `model`
/// trains (as `blkc bench` measures it).
pub fn small_model(p: &Program, block: &str, name: &str) -> Option<ModelIr> {
    let i = p.blocks.iter().position(|b| b.name == block)?;
    Some(ModelIr { name: Some(name.to_string()), ..ModelIr::small(i) })
}

/// The model's name (`model` when the section has none).
pub fn model_name(m: &ModelIr) -> String {
    m.name.clone().unwrap_or_else(|| "model".into())
}

/// The objective a model trains with.
pub fn objective(m: &ModelIr, s: &Settings, tok: &Tokenizer) -> Objective {
    match m.mask {
        Mask::Causal => Objective::Causal,
        Mask::Bidirectional => {
            Objective::Masked { rate: s.mask_rate, mask: tok.mask(), vocab: tok.vocab_size() as u32 }
        }
    }
}

/// The objective of a mask with default MLM settings (for benchmarks: the
/// last token id stands for the mask).
pub fn objective_for_mask(mask: Mask, vocab: u32) -> Objective {
    match mask {
        Mask::Causal => Objective::Causal,
        Mask::Bidirectional => Objective::Masked { rate: 0.25, mask: vocab.saturating_sub(1), vocab },
    }
}

/// Checks that the model's vocabulary is the tokenizer's: an error on the
/// model's `vocab` line when not.
pub fn check_vocab(
    m: &ModelIr,
    tok: &Tokenizer,
    origin: &tokenizer::Origin,
    sources: &SourceMap,
) -> Result<(), Failure> {
    let have = tok.vocab_size() as u64;
    if m.vocab == have {
        return Ok(());
    }
    let help = match (origin, tok.kind()) {
        (tokenizer::Origin::File { path }, _) => format!("`{}` has {have} tokens: write `vocab = {have}`", path.display()),
        (_, tokenizer::Kind::Bytes) => {
            format!("write `vocab = {have}` (256 bytes, end of text, mask) or use `tokenizer = bpe`")
        }
        (_, tokenizer::Kind::Bpe) => format!(
            "the corpus gave a BPE of only {have} tokens; write `vocab = {have}`, train on more text, or use `tokenizer = bytes`"
        ),
    };
    let d = Diagnostic::new(
        Code::E5002,
        m.span_of("vocab"),
        format!("the model has {} tokens but the {} tokenizer has {have}", m.vocab, tok.kind().name()),
    )
    .label(format!("vocab = {}", m.vocab))
    .help(help);
    Err(Failure::Located(Box::new(d), sources.clone()))
}

/// The batch as tensors: inputs `[rows, T]`, targets `[rows·T, 1]`,
/// weights `[rows·T]`.
fn tensors<B: Backend>(b: &Batch, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 1>) {
    let n = b.rows * b.context;
    let inputs = Tensor::from_data(TensorData::new(b.inputs.clone(), [b.rows, b.context]), device);
    let targets = Tensor::from_data(TensorData::new(b.targets.clone(), [n, 1]), device);
    let weights = Tensor::from_data(TensorData::new(b.weights.clone(), [n]), device);
    (inputs, targets, weights)
}

/// Mean cross-entropy (nats per counted token) of `model` on `b`, with
/// dropout drawn from `noise` in a training forward (`None` evaluates).
pub fn loss<B: Kernels>(
    model: &Model<B>,
    b: &Batch,
    obj: Objective,
    noise: Option<Noise>,
    device: &B::Device,
) -> Tensor<B, 1> {
    share_of_loss(model, b, Whole::of(b), obj, noise, device)
}

/// The batch that a share (a device's rows) is part of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Whole {
    pub rows: usize,
    /// Tokens the whole batch's loss counts.
    pub counted: f32,
}

impl Whole {
    pub fn of(b: &Batch) -> Whole {
        Whole { rows: b.rows, counted: b.counted() }
    }
}

/// The part of the whole batch's mean cross-entropy that `share`, some of
/// its rows, contributes: the shares' parts sum to the whole's loss (and
/// their gradients to its gradient). The whole's own share is its loss.
pub fn share_of_loss<B: Kernels>(
    model: &Model<B>,
    share: &Batch,
    whole: Whole,
    obj: Objective,
    noise: Option<Noise>,
    device: &B::Device,
) -> Tensor<B, 1> {
    let (inputs, targets, weights) = tensors::<B>(share, device);
    // The head's logits: the mean's kernel soft-caps them itself.
    let logits = model.head_with(inputs, noise);
    let [rows, t, v] = logits.dims();
    let (logits, targets) = (logits.reshape([rows * t, v]), targets.reshape([rows * t]));
    let cap = model.logit_softcap;
    // Every position counts in a causal model's batches, except in the
    // windows of a sliding evaluation, which count only what an earlier
    // window did not.
    let every = whole.counted == (whole.rows * t) as f32;
    match obj {
        // The mean over every token: one kernel whose gradient is written
        // in the forward pass; every row counts the same number of them.
        Objective::Causal if every => {
            let mean = kernels::nll_mean(logits, targets, cap);
            if share.rows == whole.rows {
                mean
            } else {
                mean.mul_scalar(share.rows as f64 / whole.rows.max(1) as f64)
            }
        }
        Objective::Causal | Objective::Masked { .. } => {
            let logits = match cap {
                Some(c) => kernels::softcap(logits, c),
                None => logits,
            };
            kernels::total(kernels::nll(logits, targets) * weights).div_scalar(whole.counted.max(1.0))
        }
    }
}

/// The validation loss over `batches` fixed batches of `rows`, as `peer`
/// sees it: over its rows of each batch, as (summed loss, tokens counted);
/// [`mean_loss`] of the peers' sums is the loss.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Kernels>(
    model: &Model<B>,
    valid: &Stream,
    batches: usize,
    rows: usize,
    obj: Objective,
    seed: u64,
    device: &B::Device,
    peer: parallel::Peer,
) -> Result<(f64, f64), String> {
    let n = batch::eval_batches(valid, batches, rows);
    scored(model, n, |i| batch::eval_batch(valid, i, n, rows, obj, seed), obj, device, peer, |_| {})
}

/// (summed loss, tokens counted) of `model` over batches `0..n` of
/// `batch`, as `peer` sees them; `done` hears how many are scored after
/// each.
fn scored<B: Kernels>(
    model: &Model<B>,
    n: usize,
    batch: impl Fn(usize) -> Result<Batch, String>,
    obj: Objective,
    device: &B::Device,
    peer: parallel::Peer,
    mut done: impl FnMut(usize),
) -> Result<(f64, f64), String> {
    let mut total = 0.0;
    let mut count = 0.0;
    for i in 0..n {
        let whole = batch(i)?;
        let b = peer.share(&whole);
        let c = f64::from(b.counted());
        if b.rows == 0 {
            continue;
        }
        let l = loss(model, &b, obj, None, device).into_scalar();
        total += f64::from(burn::tensor::ElementConversion::elem::<f32>(l)) * c;
        count += c;
        done(i + 1);
    }
    Ok((total, count))
}

/// (summed loss, tokens counted) of `model` over every target of `stream`,
/// each scored once by the windows of `sliding` in batches of `rows`;
/// `done` hears how many batches are scored, of how many.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_all<B: Kernels>(
    model: &Model<B>,
    stream: &Stream,
    sliding: &batch::Sliding,
    rows: usize,
    obj: Objective,
    seed: u64,
    device: &B::Device,
    mut done: impl FnMut(usize, usize),
) -> Result<(f64, f64), String> {
    let rows = rows.max(1);
    let n = sliding.batches(rows);
    let batch = |i| batch::sliding_batch(stream, sliding, i, rows, obj, seed);
    scored(model, n, batch, obj, device, parallel::Peer::ALONE, |i| done(i, n))
}

/// The mean loss of (summed loss, tokens counted); NaN of no tokens.
pub fn mean_loss((total, count): (f64, f64)) -> f64 {
    if count > 0.0 {
        total / count
    } else {
        f64::NAN
    }
}

/// The sources of a compilation as `(path, text)` pairs.
pub fn source_files(sources: &SourceMap) -> Vec<(String, String)> {
    (0..sources.len())
        .map(|i| sources.get(FileId(i as u32)))
        // Not the command line's `--set` pairs and what they add (saved apart).
        .filter(|f| !f.name.starts_with('<'))
        .map(|f| (f.path.display().to_string(), f.text.to_string()))
        .collect()
}

pub(crate) fn say(quiet: bool, s: impl AsRef<str>) {
    if !quiet {
        errln!("{}", s.as_ref());
    }
}
