//! `blkc eval RUN`: the validation loss of a run's newest checkpoint (or of
//! the checkpoint directory given), on the run's data or on `--data`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Device, PrecisionArg};
use crate::kernels::Kernels;
use crate::train::{self, batch, data, tokens};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// Evaluate on all of this text (a directory, a file or a glob; every
    /// file, no split) instead of the run's validation split.
    #[arg(long)]
    pub data: Option<String>,
    /// Batches to average (default: the run's `eval_batches`): windows
    /// spread evenly over the text, an estimate.
    #[arg(long, conflicts_with_all = ["all", "stride"])]
    pub batches: Option<u64>,
    /// Score every token of the text once, in windows that tile it (each
    /// token predicted from the tokens before it in its window).
    #[arg(long)]
    pub all: bool,
    /// Score every token of the text once, in windows that start every N
    /// tokens and count only their last N: each token after the first
    /// window is predicted from at least `context − N` tokens (1 to the
    /// context; implies `--all`; causal models).
    #[arg(long, value_name = "N")]
    pub stride: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// The weight products (default: the run's `precision` on this
    /// device; `auto` is bf16 on CUDA, fp32 on the CPU).
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Read the data even when its memory estimate exceeds what is free.
    #[arg(long)]
    pub no_memory_check: bool,
}

pub fn run(args: &Args) -> u8 {
    super::dispatch(args.device, "evaluate", args)
}

impl super::Generic for Args {
    fn run<B: Kernels>(&self, device: &B::Device) -> Result<(), String> {
        evaluate::<B>(self, device)
    }
}

fn evaluate<B: Kernels>(args: &Args, device: &B::Device) -> Result<(), String> {
    let run = train::open::open::<B>(&args.checkpoint, device)?;
    if let Some(note) = &run.note {
        errln!("warning: {note}");
    }
    let s = &run.info.settings;
    let obj = train::objective(&run.ir, s, &run.tokenizer);
    let context = run.ir.context as usize;
    let stride = match (args.stride, args.all) {
        (Some(n), _) if n == 0 || n > context => {
            return Err(format!("--stride {n}: a stride is 1 to the model's context, {context}"));
        }
        (Some(n), _) if obj != batch::Objective::Causal && n != context => {
            return Err(format!(
                "--stride {n}: a masked model reads its whole window, so it is scored in windows that tile the text (--all)"
            ));
        }
        (Some(n), _) => Some(n),
        (None, true) => Some(context),
        (None, false) => None,
    };
    let source = args.data.clone().unwrap_or_else(|| s.data.clone());
    if !args.no_memory_check {
        let bytes = run.tokenizer.kind() == crate::train::tokenizer::Kind::Bytes;
        super::train::corpus_fits(&source, bytes, run.ir.context, "evaluates")?;
    }
    let corpus = data::load(&source, data::Holdout::of(s), &s.data_field)?;
    let shifted = obj == batch::Objective::Causal;
    let key = tokens::tokenizer_key(&run.dir.tokenizer());
    let (train_stream, valid_stream, _) =
        tokens::streams(&corpus, &run.tokenizer, key, run.ir.context as usize, shifted, run.ir.vocab as usize)?;
    // Bytes of text per token of the evaluated stream (end-of-text tokens
    // included), to turn nats per token into bits per byte.
    let docs = if args.data.is_some() {
        corpus.train.iter().chain(&corpus.valid).collect::<Vec<_>>()
    } else {
        corpus.valid.iter().collect()
    };
    let text_bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    // With --data, every file of the given text is held out: evaluate on all of it.
    let stream = if args.data.is_some() { train_stream.join(valid_stream) } else { valid_stream };
    if stream.windows() == 0 {
        return Err(format!("`{source}` has fewer tokens than one context window"));
    }
    let sliding = stride.map(|n| batch::Sliding::new(&stream, n));
    let batches = args.batches.unwrap_or(s.eval_batches) as usize;
    // The batches of the run's own evaluations (on however many devices).
    let rows = s.rows_per_pass() as usize;
    let precision = match args.precision {
        Some(p) => p.on(args.device),
        None => crate::kernels::precision::Precision::resolve(&s.precision, args.device.name()),
    }
    .on_device(args.device.name())?;
    let loss = crate::kernels::precision::scope(precision, || match &sliding {
        Some(sliding) => {
            let mut told = Instant::now();
            let mut progress = |i: usize, n: usize| {
                if told.elapsed() >= Duration::from_secs(10) && i < n {
                    errln!("scored {i} of {n} batches");
                    told = Instant::now();
                }
            };
            train::evaluate_all(&run.model, &stream, sliding, rows, obj, s.seed, device, &mut progress)
                .map(train::mean_loss)
        }
        None => {
            let alone = train::parallel::Peer::ALONE;
            train::evaluate(&run.model, &stream, batches, rows, obj, s.seed, device, alone).map(train::mean_loss)
        }
    })?;
    let n = match &sliding {
        Some(sliding) => sliding.batches(rows),
        None => batch::eval_batches(&stream, batches, rows),
    };
    // For a masked model, the loss is over the masked positions only.
    // Pre-tokenised data has no text to count bytes of.
    let bits_per_byte =
        (text_bytes > 0).then(|| loss / std::f64::consts::LN_2 * stream.len() as f64 / text_bytes as f64);
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "schema_version": super::JSON_VERSION,
                "command": "eval",
                "checkpoint": run.checkpoint.display().to_string(),
                "step": run.state.step,
                "data": source,
                "eval_loss": loss,
                "precision": precision.name(),
                "perplexity": loss.exp(),
                "bits_per_byte": bits_per_byte,
                "bytes_per_token": (text_bytes > 0).then(|| text_bytes as f64 / stream.len().max(1) as f64),
                "batches": n,
                "rows": rows,
                "windows": sliding.map(|w| w.count()),
                "stride": sliding.map(|w| w.stride()),
                "tokens_scored": sliding.map(|w| w.targets()),
            })
        );
    } else {
        let over = match &sliding {
            Some(w) => format!(
                "every token of `{source}` ({} in {} windows of {context}, stride {})",
                w.targets(),
                w.count(),
                w.stride()
            ),
            None => format!("{n} batches of {rows} × {context} tokens of `{source}`"),
        };
        outln!(
            "{} (step {}): validation loss {loss:.4} nats/token{}, perplexity {:.2}, over {over}",
            run.checkpoint.display(),
            run.state.step,
            bits_per_byte.map(|b| format!(" ({b:.4} bits/byte)")).unwrap_or_default(),
            loss.exp(),
        );
    }
    Ok(())
}
