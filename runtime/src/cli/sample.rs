//! `blkc sample RUN --prompt TEXT`: continues a prompt with a trained
//! causal model, greedily (`--temperature 0`) or by sampling.

use std::io::Write;
use std::path::PathBuf;

use blkc::graph::Mask;
use blkc::signal::rng::Rng;

use burn::tensor::{Int, Tensor, TensorData};

use super::{Device, OK, REJECTED};
use crate::kernels::Kernels;
use crate::train;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// 0 picks the most likely token; higher values sample more freely.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
}

pub fn run(args: &Args) -> u8 {
    let r = match args.device {
        Device::Cpu => sample::<crate::backend::Cpu>(args, &Default::default()),
        Device::Cuda => match crate::backend::cuda() {
            Ok(_) => cuda(args),
            Err(e) => {
                eprintln!("error: cannot sample on CUDA: {e}");
                return super::train::NO_DEVICE;
            }
        },
    };
    match r {
        Ok(()) => OK,
        Err(e) => {
            eprintln!("error: {e}");
            REJECTED
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(args: &Args) -> Result<(), String> {
    sample::<crate::backend::Cuda>(args, &Default::default())
}

#[cfg(not(feature = "cuda"))]
fn cuda(_args: &Args) -> Result<(), String> {
    Err("this blkc was built without CUDA; rebuild with `--features cuda`".into())
}

fn sample<B: Kernels>(args: &Args, device: &B::Device) -> Result<(), String> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(format!("--temperature must be 0 or more, not {}", args.temperature));
    }
    let run = train::open::open::<B>(&args.checkpoint, device)?;
    if run.ir.mask != Mask::Causal {
        return Err(
            "this model is bidirectional (masked-language model): it fills masks, it does not continue text".into()
        );
    }
    let tok = &run.tokenizer;
    let mut ids = tok.encode(&args.prompt)?;
    if ids.is_empty() {
        ids.push(tok.end_of_text());
    }
    let prompt_len = ids.len();
    let context = run.ir.context as usize;
    let mut rng = Rng::new(args.seed);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", args.prompt);
    let mut shown = 0;
    for _ in 0..args.tokens {
        let window = &ids[ids.len().saturating_sub(context)..];
        let t = window.len();
        let input: Vec<i64> = window.iter().map(|&x| i64::from(x)).collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, t]), device);
        let logits = run.model.forward(input);
        let v = logits.dims()[2];
        let last: Vec<f32> =
            logits.slice([0..1, t - 1..t, 0..v]).into_data().convert::<f32>().to_vec().map_err(|e| format!("{e:?}"))?;
        ids.push(pick(&last, args.temperature, args.top_k, &mut rng));
        let text = tok.decode(&ids[prompt_len..]);
        // Print what is new (multi-byte characters may complete later).
        if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{fffd}') {
            let _ = write!(out, "{}", &text[shown..]);
            let _ = out.flush();
            shown = text.len();
        }
    }
    let text = tok.decode(&ids[prompt_len..]);
    if text.len() > shown && text.is_char_boundary(shown) {
        let _ = write!(out, "{}", &text[shown..]);
    }
    let _ = writeln!(out);
    Ok(())
}

/// The next token from `logits`.
fn pick(logits: &[f32], temperature: f64, top_k: usize, rng: &mut Rng) -> u32 {
    let argmax = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
    if temperature == 0.0 {
        return argmax as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 {
        order.truncate(top_k);
    }
    let top = f64::from(logits[order[0]]);
    let weights: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - top) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform() * total;
    for (k, w) in order.iter().zip(&weights) {
        if u < *w {
            return *k as u32;
        }
        u -= w;
    }
    argmax as u32
}
