//! Training: `blkc train`, `blkc eval` and `blkc sample` share what is
//! here — data, tokenizer, batches, the optimiser, the run directory — and
//! the loop itself ([`train`]).

pub mod batch;
pub mod data;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod rundir;
pub mod settings;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use blkc::graph::{Mask, Model as ModelIr, Program};
use blkc::span::FileId;
use blkc::{Code, Diagnostic, MemLoader, SourceMap};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;

use crate::checkpoint;
use crate::kernels::{self, Kernels, TrainKernels};
use crate::model::Model;
use batch::{Batch, Objective, Sampler, Stream};
use data::{Corpus, Fnv};
use optim::Optimizer;
use rundir::{RunDir, RunInfo, State};
use settings::Settings;
use tokenizer::{Origin, Tokenizer};

/// Set by Ctrl-C: the loop checkpoints and stops after the current step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once per process): the first press asks the
/// run to checkpoint and stop; a second one exits at once (checkpoints are
/// atomic, so nothing half-written is left).
pub fn handle_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without a new checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to quit now)");
        });
    });
}

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
    /// The .blk file as given.
    pub file: String,
    pub settings: Settings,
    pub out: PathBuf,
    /// Continue the run in `out` instead of starting one.
    pub resume: bool,
    /// Stop (as if interrupted) once this many steps are done.
    pub stop_at: Option<u64>,
    pub quiet: bool,
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
    pub interrupted: bool,
    pub checkpoint: Option<PathBuf>,
}

/// The model of a program, or a located error.
pub fn model_of(p: &Program) -> Result<&ModelIr, String> {
    p.model.as_ref().ok_or_else(|| {
        "the file defines no `model` to train; write one (see examples/small/sas-p.blk) or train one of examples/small/"
            .to_string()
    })
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
pub fn check_vocab(m: &ModelIr, tok: &Tokenizer, sources: &SourceMap) -> Result<(), Failure> {
    let have = tok.vocab_size() as u64;
    if m.vocab == have {
        return Ok(());
    }
    let help = match tok.kind() {
        tokenizer::Kind::Bytes => format!("write `vocab = {have}` (256 bytes, end of text, mask) or use `tokenizer = bpe`"),
        tokenizer::Kind::Bpe => format!(
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

/// The token streams of a corpus: from the cache when this tokenizer has
/// encoded this corpus before, else encoded now and cached.
pub fn streams(
    corpus: &Corpus,
    tok: &Tokenizer,
    key: u64,
    context: usize,
    shifted: bool,
) -> Result<(Stream, Stream, bool), String> {
    let mut h = Fnv::new();
    h.write(&key.to_le_bytes());
    h.write(&corpus.fingerprint().to_le_bytes());
    for d in &corpus.valid {
        h.write(d.name.as_bytes());
        h.write(&(d.text.len() as u64).to_le_bytes());
    }
    let path = tokenizer::cache_dir().join("tokens").join(format!("{:016x}.bin", h.finish()));
    if let Some((train, valid)) = read_tokens(&path) {
        return Ok((Stream::new(train, context, shifted), Stream::new(valid, context, shifted), true));
    }
    let join = |docs: &[data::Doc]| -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for d in docs {
            out.extend(tok.encode(&d.text)?);
            out.push(tok.end_of_text());
        }
        Ok(out)
    };
    let (train, valid) = (join(&corpus.train)?, join(&corpus.valid)?);
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            // A cache that cannot be written only costs time next run.
            let _ = write_tokens(&path, &train, &valid);
        }
    }
    Ok((Stream::new(train, context, shifted), Stream::new(valid, context, shifted), false))
}

fn write_tokens(path: &Path, train: &[u32], valid: &[u32]) -> Result<(), String> {
    let mut bytes = Vec::with_capacity(16 + 4 * (train.len() + valid.len()));
    bytes.extend_from_slice(&(train.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(valid.len() as u64).to_le_bytes());
    for t in train.iter().chain(valid) {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    rundir::write_atomic(path, &bytes)
}

fn read_tokens(path: &Path) -> Option<(Vec<u32>, Vec<u32>)> {
    let bytes = std::fs::read(path).ok()?;
    let n = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?) as usize;
    let m = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?) as usize;
    if bytes.len() != 16 + 4 * (n.checked_add(m)?) {
        return None;
    }
    let all: Vec<u32> = bytes[16..].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let valid = all[n..].to_vec();
    let mut train = all;
    train.truncate(n);
    Some((train, valid))
}

/// A tokenizer's identity for the token cache.
pub fn tokenizer_key(path: &Path) -> u64 {
    let mut h = Fnv::new();
    h.write(&std::fs::read(path).unwrap_or_default());
    h.finish()
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

/// Mean cross-entropy (nats per counted token) of `model` on `b`.
pub fn loss<B: Kernels>(model: &Model<B>, b: &Batch, obj: Objective, device: &B::Device) -> Tensor<B, 1> {
    let (inputs, targets, weights) = tensors::<B>(b, device);
    let logits = model.forward(inputs);
    let [rows, t, v] = logits.dims();
    let (logits, targets) = (logits.reshape([rows * t, v]), targets.reshape([rows * t]));
    match obj {
        // The mean over every token: one kernel whose gradient is written
        // in the forward pass.
        Objective::Causal => kernels::nll_mean(logits, targets),
        Objective::Masked { .. } => (kernels::nll(logits, targets) * weights).sum().div_scalar(b.counted().max(1.0)),
    }
}

/// Mean validation loss over `batches` fixed batches of `rows`.
pub fn evaluate<B: Kernels>(
    model: &Model<B>,
    valid: &Stream,
    batches: usize,
    rows: usize,
    obj: Objective,
    seed: u64,
    device: &B::Device,
) -> f64 {
    let n = batch::eval_batches(valid, batches, rows);
    let mut total = 0.0;
    let mut count = 0.0;
    for i in 0..n {
        let b = batch::eval_batch(valid, i, n, rows, obj, seed);
        let c = f64::from(b.counted());
        let l = loss(model, &b, obj, device).into_scalar();
        total += f64::from(burn::tensor::ElementConversion::elem::<f32>(l)) * c;
        count += c;
    }
    if count > 0.0 {
        total / count
    } else {
        f64::NAN
    }
}

/// The sources of a compilation as `(path, text)` pairs.
pub fn source_files(sources: &SourceMap) -> Vec<(String, String)> {
    (0..sources.len())
        .map(|i| {
            let f = sources.get(FileId(i as u32));
            (f.path.display().to_string(), f.text.to_string())
        })
        .collect()
}

/// Recompiles a run's model from the copy of its sources in `source.json`.
pub fn compile_saved(dir: &RunDir) -> Result<(Program, SourceMap), String> {
    let p = dir.root.join("source.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("`{}` is damaged: {e}", p.display()))?;
    let entry = v.get("entry").and_then(|e| e.as_str()).ok_or_else(|| format!("`{}` has no entry", p.display()))?;
    let mut loader = MemLoader::default();
    if let Some(files) = v.get("files").and_then(|f| f.as_object()) {
        for (path, text) in files {
            loader = loader.with(path, text.as_str().unwrap_or_default());
        }
    }
    let c = blkc::compile(Path::new(entry), &loader).map_err(|e| format!("cannot rebuild the model: {e}"))?;
    match c.program {
        Some(p) => Ok((p, c.sources)),
        None => Err(format!(
            "the run's saved model no longer compiles:\n{}",
            blkc::diag::render_plain(&c.diagnostics, &c.sources)
        )),
    }
}

/// Loads the newest checkpoint of a run (or the checkpoint directory
/// given) into a freshly built model.
pub fn open<B: Kernels>(path: &Path, device: &B::Device) -> Result<Opened<B>, String> {
    // Either a run directory or one of its checkpoints.
    let (dir, ckpt) = if path.join("state.json").is_file() {
        let root = path.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        (RunDir::new(&root), path.to_path_buf())
    } else {
        let dir = RunDir::new(path);
        dir.read_info()?;
        let ckpt = dir.latest().ok_or_else(|| format!("`{}` holds no checkpoint yet", path.display()))?;
        (dir, ckpt)
    };
    let info = dir.read_info()?;
    let (program, sources) = compile_saved(&dir)?;
    let ir = model_of(&program)?.clone();
    let model = Model::<B>::build(&program, &ir, info.settings.seed, device);
    let model = checkpoint::load(model, &ckpt.join("model.mpk"), device)?;
    let tok = Tokenizer::load(&dir.tokenizer())?;
    let state = rundir::read_state(&ckpt)?;
    Ok(Opened { dir, checkpoint: ckpt, info, program, sources, ir, model, tokenizer: tok, state })
}

/// A run opened for evaluation or sampling.
#[derive(Debug)]
pub struct Opened<B: Kernels> {
    pub dir: RunDir,
    pub checkpoint: PathBuf,
    pub info: RunInfo,
    pub program: Program,
    pub sources: SourceMap,
    pub ir: ModelIr,
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub state: State,
}

fn say(quiet: bool, s: impl AsRef<str>) {
    if !quiet {
        eprintln!("{}", s.as_ref());
    }
}

/// Trains `job` on `device`.
pub fn train<B: TrainKernels>(job: &Job, device: &B::Device) -> Result<Summary, Failure> {
    let dir = RunDir::new(&job.out);
    let mut s = job.settings.clone();
    let ir = model_of(&job.program)?.clone();
    let accum = s.accumulation()?;
    let micro = s.micro() as usize;
    let q = job.quiet;

    // Data and tokenizer.
    let t0 = Instant::now();
    let corpus = data::load(&s.data, s.val_fraction)?;
    say(
        q,
        format!(
            "data: `{}` ({}): {} training and {} validation files, {:.1} MB; skipped: {}",
            s.data,
            corpus.root.display(),
            corpus.train.len(),
            corpus.valid.len(),
            corpus.bytes() as f64 / 1e6,
            corpus.skipped.describe()
        ),
    );
    let (tok, origin) = if job.resume {
        (Tokenizer::load(&dir.tokenizer())?, Origin::Cached { path: dir.tokenizer() })
    } else {
        tokenizer::obtain(s.tokenizer_kind(), ir.vocab as usize, &corpus)?
    };
    match &origin {
        Origin::Builtin => say(q, "tokenizer: bytes (258 tokens)"),
        Origin::Trained { seconds, path } => say(
            q,
            format!(
                "tokenizer: BPE of {} tokens trained in {seconds:.1} s, cached at {}",
                tok.vocab_size(),
                path.display()
            ),
        ),
        Origin::Cached { path } => {
            say(q, format!("tokenizer: BPE of {} tokens from {}", tok.vocab_size(), path.display()))
        }
    }
    check_vocab(&ir, &tok, &job.sources)?;
    let obj = objective(&ir, &s, &tok);
    let shifted = obj == Objective::Causal;
    let context = ir.context as usize;

    // The run directory.
    let (start, mut opt, mut model, mut tokens_seen, seconds_before) = if job.resume {
        let info = dir.read_info()?;
        let ckpt =
            dir.latest().ok_or_else(|| format!("`{}` holds no checkpoint to resume from", dir.root.display()))?;
        let state = rundir::read_state(&ckpt)?;
        let model = Model::<B>::build(&job.program, &ir, s.seed, device);
        let model = checkpoint::load(model, &ckpt.join("model.mpk"), device)?;
        let opt = Optimizer::load(s.optimizer_config(), &ckpt.join("optimizer.bin"), device)?;
        dir.truncate_metrics(state.step)?;
        if info.settings.steps != s.steps {
            say(q, format!("resume: training to step {} (the run was set for {})", s.steps, info.settings.steps));
        }
        say(q, format!("resume: from {} (step {})", ckpt.display(), state.step));
        (state.step, opt, model, state.tokens, state.seconds)
    } else {
        dir.create()?;
        tok.save(&dir.tokenizer())?;
        let files: serde_json::Map<String, serde_json::Value> =
            source_files(&job.sources).into_iter().map(|(p, t)| (p, json!(t))).collect();
        let entry = job.sources.get(FileId(0)).path.display().to_string();
        rundir::write_atomic(
            &dir.root.join("source.json"),
            json!({"entry": entry, "files": files}).to_string().as_bytes(),
        )?;
        let model = Model::<B>::build(&job.program, &ir, s.seed, device);
        (0, Optimizer::new(s.optimizer_config()), model, 0, 0.0)
    };
    let key = tokenizer_key(&dir.tokenizer());
    let (train_stream, valid_stream, cached) = streams(&corpus, &tok, key, context, shifted)?;
    say(
        q,
        format!(
            "tokens: {} training, {} validation ({}, {:.1} s)",
            progress::thousands(train_stream.tokens.len() as f64),
            progress::thousands(valid_stream.tokens.len() as f64),
            if cached { "cached" } else { "encoded" },
            t0.elapsed().as_secs_f64()
        ),
    );
    if train_stream.windows() == 0 {
        return Err(Failure::Message(format!(
            "the training split has {} tokens, fewer than one window of {} ({}); give more text with --data",
            train_stream.tokens.len(),
            context + usize::from(shifted),
            s.data
        )));
    }
    if valid_stream.windows() == 0 {
        return Err(Failure::Message(format!(
            "the validation split has {} tokens, fewer than one window of {}; raise val_fraction or give more text",
            valid_stream.tokens.len(),
            context + usize::from(shifted)
        )));
    }
    let block = job.program.blocks[ir.block].name.clone();
    let params = model.trainable_params() as u64;
    if !job.resume {
        s.micro_batch = micro as u64;
    }
    let info = RunInfo {
        blkc_version: env!("CARGO_PKG_VERSION").into(),
        file: job.file.clone(),
        entry: job.sources.get(FileId(0)).path.display().to_string(),
        model: model_name(&ir),
        block: block.clone(),
        params,
        settings: s.clone(),
        tokenizer_vocab: tok.vocab_size() as u64,
        train_tokens: train_stream.tokens.len() as u64,
        valid_tokens: valid_stream.tokens.len() as u64,
    };
    dir.write_info(&info)?;
    say(
        q,
        format!(
            "model: `{}` (block `{block}`), {} parameters, {} objective; {} steps of {} × {} tokens ({} micro-batches of {micro}) on {}; run in {}",
            model_name(&ir),
            progress::thousands(params as f64),
            if shifted { "causal" } else { "masked" },
            s.steps,
            s.batch,
            context,
            accum,
            B::name(device),
            dir.root.display()
        ),
    );

    let mut sampler = Sampler::new(s.seed, train_stream.windows());
    let sched = s.schedule();
    let bar = progress::Progress::new(start, s.steps, q);
    let run_start = Instant::now();
    let (mut last_loss, mut last_eval) = (f64::NAN, None);
    let (mut step_time, mut data_time, mut timed_tokens) = (0.0f64, 0.0f64, 0u64);
    let stop_at = job.stop_at.unwrap_or(u64::MAX);
    let mut interrupted = false;
    let mut step = start;
    let mut last_ckpt = dir.latest();
    let save = |model: &Model<B>, opt: &Optimizer<B::InnerBackend>, state: &State| {
        dir.checkpoint(state, |d| {
            checkpoint::save(model, &d.join("model.mpk"))?;
            opt.save(&d.join("optimizer.bin"))
        })
    };
    while step < s.steps {
        if INTERRUPTED.load(Ordering::SeqCst) || step >= stop_at {
            interrupted = true;
            break;
        }
        let began = Instant::now();
        let lr = optim::learning_rate(s.lr, step, s.steps, s.warmup, sched);
        let mut acc = GradientsAccumulator::<Model<B>>::new();
        let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
        for m in 0..accum {
            let d0 = Instant::now();
            let first = (step * accum + m) * micro as u64;
            let b = batch::train_batch(&train_stream, &mut sampler, first, micro, obj, s.seed);
            data_time += d0.elapsed().as_secs_f64();
            let l = loss(&model, &b, obj, device).div_scalar(accum as f64);
            let value = l.clone().inner();
            total = Some(match total.take() {
                Some(t) => t + value,
                None => value,
            });
            let grads = GradientsParams::from_grads(l.backward(), &model);
            acc.accumulate(&model, grads);
        }
        let loss_value =
            total.map_or(f64::NAN, |t| f64::from(burn::tensor::ElementConversion::elem::<f32>(t.into_scalar())));
        if !loss_value.is_finite() {
            bar.finish();
            return Err(non_finite(step + 1, "loss", loss_value, &last_ckpt));
        }
        let (updated, grad_norm) = opt.step::<B, _>(model, lr, acc.grads());
        model = updated;
        if !grad_norm.is_finite() {
            bar.finish();
            return Err(non_finite(step + 1, "gradient norm", grad_norm, &last_ckpt));
        }
        step += 1;
        let dt = began.elapsed().as_secs_f64();
        step_time += dt;
        let step_tokens = (s.batch as usize * context) as u64;
        tokens_seen += step_tokens;
        timed_tokens += step_tokens;
        last_loss = loss_value;
        let eval_now = step % s.eval_every == 0 || step == s.steps;
        let eval = eval_now.then(|| {
            let inner = model.valid();
            evaluate(&inner, &valid_stream, s.eval_batches as usize, micro, obj, s.seed, device)
        });
        if eval.is_some() {
            last_eval = eval;
        }
        let log_now = step % s.log_every == 0 || step == s.steps || eval.is_some() || step == 1;
        let tps = step_tokens as f64 / dt;
        if log_now {
            let gains: BTreeMap<String, f64> =
                model.gains().into_iter().map(|(k, v)| (k, (f64::from(v) * 1e6).round() / 1e6)).collect();
            let mut line = json!({
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": (tps * 10.0).round() / 10.0,
                "tokens": tokens_seen,
                "elapsed_s": ((seconds_before + run_start.elapsed().as_secs_f64()) * 1000.0).round() / 1000.0,
            });
            if let Some(e) = eval {
                line["eval_loss"] = json!(e);
            }
            if !gains.is_empty() {
                line["gains"] = json!(gains);
            }
            dir.log(&line)?;
        }
        bar.update(step, loss_value, timed_tokens as f64 / step_time.max(1e-9), eval, log_now);
        if step % s.checkpoint_every == 0 || step == s.steps {
            let seconds = seconds_before + run_start.elapsed().as_secs_f64();
            let state = State { step, loss: loss_value, eval_loss: last_eval, tokens: tokens_seen, seconds };
            last_ckpt = Some(save(&model, &opt, &state)?);
        }
    }
    bar.finish();
    if interrupted
        && step > start
        && last_ckpt.as_ref().and_then(|c| rundir::read_state(c).ok()).map(|s| s.step) != Some(step)
    {
        let seconds = seconds_before + run_start.elapsed().as_secs_f64();
        let state = State { step, loss: last_loss, eval_loss: last_eval, tokens: tokens_seen, seconds };
        last_ckpt = Some(save(&model, &opt, &state)?);
    }
    let curves = plot::Curves::read(&dir.metrics());
    match plot::draw(&curves, &format!("{} ({})", model_name(&ir), block), &dir.root) {
        Ok((_, true)) => {}
        Ok((_, false)) => say(q, "plot: no system font found; loss.png and loss.svg are drawn without labels"),
        Err(e) => say(q, format!("plot: {e}")),
    }
    if interrupted {
        say(q, format!("stopped at step {step}; continue with `blkc train --resume {}`", dir.root.display()));
    }
    Ok(Summary {
        steps: step,
        loss: last_loss,
        eval_loss: last_eval,
        tokens_per_s: timed_tokens as f64 / step_time.max(1e-9),
        data_share: data_time / step_time.max(1e-9),
        interrupted,
        checkpoint: last_ckpt,
    })
}

fn non_finite(step: u64, what: &str, value: f64, last: &Option<PathBuf>) -> Failure {
    let kept = match last.as_ref().and_then(|c| rundir::read_state(c).ok().map(|s| (c, s.step))) {
        Some((c, s)) => format!("the last good checkpoint (step {s}) is kept at {}", c.display()),
        None => "no checkpoint had been written yet".to_string(),
    };
    Failure::Message(format!(
        "the {what} became {value} at step {step}, so training stopped; {kept}. Lower the learning rate (lr), \
         raise warmup, turn on clipping, or check the block's gains"
    ))
}
