//! `blkc eval RUN`: the validation loss of a run's newest checkpoint (or of
//! the checkpoint directory given), on the run's data or on `--data`.

use std::path::PathBuf;

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
    /// Batches to average (default: the run's `eval_batches`).
    #[arg(long)]
    pub batches: Option<u64>,
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
    let source = args.data.clone().unwrap_or_else(|| s.data.clone());
    if !args.no_memory_check {
        let bytes = run.tokenizer.kind() == crate::train::tokenizer::Kind::Bytes;
        super::train::corpus_fits(&source, bytes, run.ir.context, "evaluates")?;
    }
    let corpus = data::load(&source, s.val_fraction, &s.data_field)?;
    let obj = train::objective(&run.ir, s, &run.tokenizer);
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
    let batches = args.batches.unwrap_or(s.eval_batches) as usize;
    // The batches of the run's own evaluations (on however many devices).
    let rows = s.rows_per_pass() as usize;
    let precision = match args.precision {
        Some(p) => p.on(args.device),
        None => crate::kernels::precision::Precision::resolve(&s.precision, args.device.name()),
    }
    .on_device(args.device.name())?;
    let loss = crate::kernels::precision::scope(precision, || {
        let alone = train::parallel::Peer::ALONE;
        train::evaluate(&run.model, &stream, batches, rows, obj, s.seed, device, alone).map(train::mean_loss)
    })?;
    let n = batch::eval_batches(&stream, batches, rows);
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
            })
        );
    } else {
        outln!(
            "{} (step {}): validation loss {loss:.4} nats/token{}, perplexity {:.2}, over {n} batches of {rows} × {} tokens of `{source}`",
            run.checkpoint.display(),
            run.state.step,
            bits_per_byte.map(|b| format!(" ({b:.4} bits/byte)")).unwrap_or_default(),
            loss.exp(),
            run.ir.context
        );
    }
    Ok(())
}
