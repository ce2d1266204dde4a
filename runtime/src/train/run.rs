//! The training loop and how a run starts: fresh (a new run directory) or
//! resumed (from a checkpoint, validated against the rebuilt model).

use std::path::PathBuf;
use std::time::Instant;

use blkc::graph::Model as ModelIr;
use blkc::span::FileId;
use serde_json::json;

use super::batch::{self, Objective};
use super::optim::Optimizer;
use super::rundir::{self, Need, RunDir, RunInfo};
use super::settings::Settings;
use super::steps::Loop;
use super::tokenizer::{self, Origin, Tokenizer};
use super::{
    check_vocab, data, model_name, model_of, objective, open, plot, progress, say, signals, source_files, tokens,
    Failure, Job, Summary,
};
use crate::kernels::TrainKernels;
use crate::model::Model;

/// Where training starts from.
pub(super) struct Start<B: TrainKernels> {
    pub(super) step: u64,
    pub(super) opt: Optimizer<B::InnerBackend>,
    pub(super) model: Model<B>,
    pub(super) tokens: u64,
    pub(super) seconds: f64,
    /// The newest checkpoint and its step.
    pub(super) last: Option<(PathBuf, u64)>,
    /// The checkpoint a new run started from, with the checksum of the
    /// run's copy of its weights, just written (`--init-from`).
    pub(super) init: Option<rundir::InitFrom>,
}

impl<B: TrainKernels> Start<B> {
    /// Step 0: the model at init, no optimiser state.
    fn at_zero(model: Model<B>, s: &Settings) -> Self {
        let opt = Optimizer::new(s.optimizer_config());
        Start { step: 0, opt, model, tokens: 0, seconds: 0.0, last: None, init: None }
    }
}

/// Trains `job` on `devices` (one, or several in data parallel: see
/// [`super::parallel`]), holding the run directory's lock throughout. A fresh run
/// that fails before it has written `run.json` leaves no directory behind.
pub fn train<B: TrainKernels>(job: &Job, devices: &[B::Device]) -> Result<Summary, Failure> {
    let dir = RunDir::new(&job.out);
    let existed = dir.root.exists();
    let lock = dir.lock()?;
    signals::preparing((job.resume.is_none() && !existed).then(|| (dir.root.clone(), dir.info_path())));
    let result = run::<B>(job, &dir, devices);
    if result.is_err() && job.resume.is_none() && !existed && !dir.info_path().exists() {
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir.root);
    }
    result
}

fn run<B: TrainKernels>(job: &Job, dir: &RunDir, devices: &[B::Device]) -> Result<Summary, Failure> {
    let mut s = job.settings.clone();
    let ir = model_of(&job.program)?.clone();
    let [device, ..] = devices else { return Err(Failure::Message("no device to train on".into())) };
    if devices.len() as u64 != s.devices {
        return Err(Failure::Message(format!("{} devices given for a run on {}", devices.len(), s.devices)));
    }
    if devices.len() > 1 && B::name(device).contains("fusion<") {
        return Err(Failure::Message(super::parallel::not_under_fusion(devices.len() as u64)));
    }
    let accum = s.accumulation()?;
    let micro = s.micro() as usize;
    let q = job.quiet;
    if job.resume.is_none() {
        if let Some(note) = dir.create()? {
            say(q, note);
        }
    }

    let (corpus, tok) = data_and_tokenizer(job, dir, &s, &ir)?;
    let obj = objective(&ir, &s, &tok);
    let shifted = obj == Objective::Causal;
    let context = ir.context as usize;

    let start = match &job.resume {
        Some(_) => resumed::<B>(job, dir, &ir, &s, device)?,
        None => fresh::<B>(job, dir, &tok, &ir, &s, device)?,
    };
    let (train_stream, valid_stream) = token_streams(job, dir, (&corpus, &tok), &ir, shifted)?;
    // Bytes of validation text, for losses in bits per byte (none for
    // token files).
    let valid_bytes = corpus.valid.iter().map(|d| d.text.len() as u64).sum::<u64>();
    // The text is encoded: only its ids train.
    drop(corpus);
    let block = job.program.blocks[ir.block].name.clone();
    let params = start.model.trainable_params() as u64;
    if job.resume.is_none() && s.devices == 1 {
        s.micro_batch = micro as u64;
    }
    let mut info = run_info(job, &ir, &s, &tok, params, [&train_stream, &valid_stream], valid_bytes);
    if let Some(init) = &start.init {
        info.init_from = Some(init.clone());
    }
    dir.write_info(&info)?;
    // metrics.csv and the TensorBoard file follow metrics.jsonl as it is now.
    let logs = super::logs::Logs::rebuild(&dir.root)?;
    say(
        q,
        format!(
            "model: `{}` (block `{block}`), {} parameters, {} objective; {} steps of {} × {} tokens ({}) on {}; run in {}",
            model_name(&ir),
            progress::thousands(params as f64),
            if shifted { "causal" } else { "masked" },
            s.steps,
            s.batch,
            context,
            micro_batches(accum, micro, devices.len()),
            on_devices::<B>(devices),
            dir.root.display()
        ),
    );
    let peers = devices.len();
    let loop_ =
        Loop { job, dir, s: &s, obj, context, accum, rows: micro, peers, train: &train_stream, valid: &valid_stream };
    let summary = loop_.run::<B>(start, logs, devices)?;
    let curves = plot::Curves::read(&dir.metrics());
    if let Err(e) = plot::draw(&curves, &format!("{} ({})", model_name(&ir), block), &dir.root) {
        say(q, format!("plot: {e}"));
    }
    if summary.interrupted {
        say(
            q,
            format!("stopped at step {}; continue with `blkc train --resume {}`", summary.steps, dir.root.display()),
        );
    }
    Ok(summary)
}

/// The run's corpus and tokenizer (trained, read, or the run's own when it
/// resumes), checked against the model.
fn data_and_tokenizer(
    job: &Job,
    dir: &RunDir,
    s: &Settings,
    ir: &ModelIr,
) -> Result<(data::Corpus, Tokenizer), Failure> {
    let q = job.quiet;
    let corpus = data::load(&s.data, data::Holdout::of(s), &s.data_field)?;
    if !corpus.token_files.is_empty() {
        say(q, format!("data: `{}`: {} pre-tokenised file(s)", s.data, corpus.token_files.len()));
    } else {
        say(
            q,
            format!(
                "data: `{}` ({}): {} training and {} validation documents, {:.1} MB; skipped: {}",
                s.data,
                corpus.root.display(),
                corpus.train.len(),
                corpus.valid.len(),
                corpus.bytes() as f64 / 1e6,
                corpus.skipped.describe()
            ),
        );
    }
    let (tok, origin) = match (&job.resume, &job.init_from) {
        (Some(_), _) => (Tokenizer::load(&dir.tokenizer())?, Origin::Cached { path: dir.tokenizer() }),
        (None, Some(init)) => init_tokenizer(init, s, ir, &corpus, q)?,
        (None, None) => tokenizer::obtain(&s.tokenizer, ir.vocab as usize, &corpus, q)?,
    };
    say_tokenizer(q, &tok, &origin);
    check_vocab(ir, &tok, &origin, &job.sources)?;
    if ir.mask == blkc::graph::Mask::Bidirectional && tok.mask_token().is_none() {
        return Err(Failure::Message(
            "a bidirectional model trains by predicting masked tokens, and this tokenizer has no mask token \
             (`<|mask|>`, `[MASK]` or `<mask>`); use `tokenizer = bpe` or one with a mask token"
                .into(),
        ));
    }
    Ok((corpus, tok))
}

/// The tokenizer of a run that starts from a checkpoint: the one whose
/// ids its embeddings were trained on. `tokenizer = bpe` (the default)
/// means it; another setting must name a tokenizer that reads every id
/// alike.
fn init_tokenizer(
    init: &rundir::InitFrom,
    s: &Settings,
    ir: &ModelIr,
    corpus: &data::Corpus,
    q: bool,
) -> Result<(Tokenizer, Origin), Failure> {
    let (theirs, path) = open::init_tokenizer(init)?;
    if s.tokenizer == "bpe" {
        return Ok((theirs, Origin::File { path }));
    }
    let (ours, origin) = tokenizer::obtain(&s.tokenizer, ir.vocab as usize, corpus, q)?;
    if ours.fingerprint() != theirs.fingerprint() {
        return Err(Failure::Message(format!(
            "--init-from `{}`: its embeddings are of the tokenizer `{}` (a {} tokenizer of {} tokens), and              `tokenizer = {}` reads ids otherwise (a {} tokenizer of {} tokens); leave `tokenizer` unset (or              `bpe`) to train with the checkpoint's own",
            init.checkpoint.display(),
            path.display(),
            theirs.kind().name(),
            theirs.vocab_size(),
            s.tokenizer,
            ours.kind().name(),
            ours.vocab_size()
        )));
    }
    Ok((ours, origin))
}

/// The training and validation token streams (cached by tokenizer), each
/// at least one window long; `shifted` for a causal objective.
fn token_streams(
    job: &Job,
    dir: &RunDir,
    (corpus, tok): (&data::Corpus, &Tokenizer),
    ir: &ModelIr,
    shifted: bool,
) -> Result<(batch::Stream, batch::Stream), Failure> {
    // The streams' own time: read from the cache, or encoded.
    let t0 = Instant::now();
    let (q, s) = (job.quiet, &job.settings);
    let context = ir.context as usize;
    let key = tokens::tokenizer_key(&dir.tokenizer());
    let (train_stream, valid_stream, cached) = tokens::streams(corpus, tok, key, context, shifted, ir.vocab as usize)?;
    say(
        q,
        format!(
            "tokens: {} training, {} validation ({}, {:.1} s)",
            progress::thousands(train_stream.len() as f64),
            progress::thousands(valid_stream.len() as f64),
            cached,
            t0.elapsed().as_secs_f64()
        ),
    );
    let window = context + usize::from(shifted);
    if train_stream.windows() == 0 {
        return Err(Failure::Message(format!(
            "the training split has {} tokens, fewer than one window of {window} ({}); give more text with --data",
            train_stream.len(),
            s.data
        )));
    }
    if valid_stream.windows() == 0 {
        return Err(Failure::Message(format!(
            "the validation split has {} tokens, fewer than one window of {window}; raise val_fraction or give more text",
            valid_stream.len(),
        )));
    }
    if train_stream.windows() > u32::MAX as usize {
        // The order of a pass is a permutation of u32 window numbers.
        return Err(Failure::Message(format!(
            "the training split has {} windows of {window} tokens, more than the {} a run can order; train on a \
             part of `{}` or with a longer context",
            train_stream.windows(),
            u32::MAX,
            s.data
        )));
    }
    Ok((train_stream, valid_stream))
}

/// What `run.json` says of this run (its history kept when it resumes).
fn run_info(
    job: &Job,
    ir: &ModelIr,
    s: &Settings,
    tok: &Tokenizer,
    params: u64,
    [train, valid]: [&batch::Stream; 2],
    valid_bytes: u64,
) -> RunInfo {
    let block = job.program.blocks[ir.block].name.clone();
    let before = job.resume.as_ref().map(|r| &r.before);
    let now = rundir::timestamp();
    let mut commands = before.as_ref().map(|b| b.commands.clone()).unwrap_or_default();
    commands.push(rundir::Invocation { at: now.clone(), argv: std::env::args().collect() });
    RunInfo {
        resolved_model: resolved(ir),
        git: match &before {
            Some(b) => b.git.clone(),
            None => rundir::Git::of(std::path::Path::new(&job.file)),
        },
        commands,
        started: before.as_ref().map_or_else(|| now.clone(), |b| b.started.clone()),
        updated: now,
        init_from: job.init_from.clone(),
        blkc_version: env!("CARGO_PKG_VERSION").into(),
        file: job.file.clone(),
        entry: job.sources.get(FileId(0)).path.display().to_string(),
        model: model_name(ir),
        block: block.clone(),
        params,
        settings: s.clone(),
        tokenizer_vocab: tok.vocab_size() as u64,
        train_tokens: train.len() as u64,
        valid_tokens: valid.len() as u64,
        valid_bytes: (valid_bytes > 0).then_some(valid_bytes),
    }
}

/// The model as the compiler resolved it, without source positions.
fn resolved(ir: &ModelIr) -> serde_json::Value {
    let mut v = serde_json::to_value(ir).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("spans");
        o.remove("span");
    }
    v
}

/// "4 micro-batches of 8", "1 micro-batch of 8", "1 micro-batch of 4 per
/// device".
fn micro_batches(n: u64, rows: usize, devices: usize) -> String {
    let per = if devices > 1 { " per device" } else { "" };
    format!("{n} micro-batch{} of {rows}{per}", if n == 1 { "" } else { "es" })
}

/// "autodiff<flex>", "2 devices in data parallel (autodiff<cuda>: Cuda(0),
/// Cuda(1))", "2 copies in data parallel sharing autodiff<flex>".
fn on_devices<B: TrainKernels>(devices: &[B::Device]) -> String {
    match devices {
        [one] => B::name(one),
        [first, rest @ ..] if rest.iter().all(|d| d == first) => {
            format!("{} copies in data parallel sharing {}", devices.len(), B::name(first))
        }
        many => {
            let names: Vec<String> = many.iter().map(|d| format!("{d:?}")).collect();
            format!("{} devices in data parallel ({}: {})", many.len(), B::name(&many[0]), names.join(", "))
        }
    }
}

fn say_tokenizer(q: bool, tok: &Tokenizer, origin: &Origin) {
    match origin {
        Origin::Builtin => say(q, "tokenizer: bytes (258 tokens)"),
        Origin::Trained { seconds, path } => say(
            q,
            format!(
                "tokenizer: BPE of {} tokens trained in {seconds:.1} s, cached at {}",
                tok.vocab_size(),
                path.display()
            ),
        ),
        Origin::File { path } => say(q, format!("tokenizer: {} tokens from {}", tok.vocab_size(), path.display())),
        Origin::Cached { path } => {
            say(q, format!("tokenizer: {} of {} tokens from {}", tok.kind().name(), tok.vocab_size(), path.display()))
        }
    }
}

/// A new run: its tokenizer and sources saved, the model built.
fn fresh<B: TrainKernels>(
    job: &Job,
    dir: &RunDir,
    tok: &Tokenizer,
    ir: &ModelIr,
    s: &Settings,
    device: &B::Device,
) -> Result<Start<B>, Failure> {
    tok.save(&dir.tokenizer())?;
    let files: serde_json::Map<String, serde_json::Value> =
        source_files(&job.sources).into_iter().map(|(p, t)| (p, json!(t))).collect();
    let entry = job.sources.get(FileId(0)).path.display().to_string();
    crate::durable::write_atomic(
        &dir.sources(),
        json!({"entry": entry, "files": files, "set": job.sets}).to_string().as_bytes(),
    )?;
    let build = || Model::<B>::build(&job.program, ir, s.seed, device);
    let Some(asked) = &job.init_from else { return Ok(Start::at_zero(build(), s)) };
    let (model, init) = open::load_init(build, asked, device)?;
    if init.checkpoint != asked.checkpoint {
        errln!(
            "warning: --init-from: `{}` was removed by its run since this one began; its newest checkpoint now \
             is used",
            asked.checkpoint.display()
        );
    }
    say(job.quiet, format!("init: the weights of {} (step {})", init.checkpoint.display(), init.step));
    // A copy in the run: a resume from step 0 needs nothing outside it.
    let copy = crate::checkpoint::save(&model, &dir.init_weights())?;
    Ok(Start { init: Some(rundir::InitFrom { copy: Some(copy), ..init }), ..Start::at_zero(model, s) })
}

/// The model at step 0 of a resumed run: as built, or with the weights it
/// started from (its copy of them; the checkpoint, for a run of a blkc
/// that made none).
fn initial<B: TrainKernels>(job: &Job, dir: &RunDir, model: Model<B>, device: &B::Device) -> Result<Model<B>, Failure> {
    let Some(init) = &job.init_from else { return Ok(model) };
    let model = match init.copy {
        Some(sum) => crate::checkpoint::load(model, &dir.init_weights(), Some(sum), device)?,
        None => open::load_init(|| model.clone(), init, device)?.0,
    };
    say(job.quiet, format!("init: the weights of {} (step {})", init.checkpoint.display(), init.step));
    Ok(model)
}

/// A run continued from its newest complete checkpoint (or the one given),
/// or from step 0 when it stopped before its first.
fn resumed<B: TrainKernels>(
    job: &Job,
    dir: &RunDir,
    ir: &ModelIr,
    s: &Settings,
    device: &B::Device,
) -> Result<Start<B>, Failure> {
    let q = job.quiet;
    let r = job.resume.as_ref().ok_or_else(|| "not a resumed run".to_string())?;
    let found = open::locate(r.checkpoint.as_deref().unwrap_or(&dir.root), Need::Training)?.1;
    let model = Model::<B>::build(&job.program, ir, s.seed, device);
    let Some(found) = found else {
        say(
            q,
            format!(
                "resume: `{}` has no checkpoint yet (it stopped before its first): starting from step 0",
                dir.root.display()
            ),
        );
        dir.truncate_metrics(0)?;
        return Ok(Start::at_zero(initial(job, dir, model, device)?, s));
    };
    if let Some(note) = &found.note {
        errln!("warning: {note}");
    }
    open::check_state(&found.state, s, &found.path)?;
    if let Some(change) = r.before.settings.schedule_change(s, found.state.step) {
        if !r.reschedule {
            return Err(Failure::Message(format!(
                "{change}; pass --reschedule to train on with the new schedule, or leave the run's settings as they were"
            )));
        }
        say(q, format!("resume: {change} (--reschedule)"));
    }
    let model = open::load_weights(model, &found, device)?;
    let opt = open::load_optimizer::<B, B::InnerBackend, _>(s, &found, &model, device)?;
    let step = found.state.step;
    dir.truncate_metrics(step)?;
    let dropped = dir.drop_after(step);
    if !dropped.is_empty() {
        say(q, format!("resume: removed {} (later than the checkpoint resumed from)", dropped.join(", ")));
    }
    say(q, format!("resume: from {} (step {step})", found.path.display()));
    Ok(Start {
        step,
        opt,
        model,
        tokens: found.state.tokens,
        seconds: found.state.seconds,
        last: Some((found.path, step)),
        init: None,
    })
}
