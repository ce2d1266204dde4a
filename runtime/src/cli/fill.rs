//! `blkc fill RUN --text "def <mask>(x):"`: what a bidirectional
//! (masked-language) model puts at each masked position, with the most
//! likely candidates and their probabilities.

use std::path::PathBuf;

use blkc::graph::Mask;
use burn::tensor::{Int, Tensor, TensorData};

use super::Device;
use crate::kernels::Kernels;
use crate::train::{self, tokenizer::MASK};

/// How a mask is written in `--text` (the tokenizer's own `<|mask|>` too).
const PLACEHOLDER: &str = "<mask>";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory or one of its `checkpoints/step-…` directories.
    pub checkpoint: PathBuf,
    /// Text with one or more `<mask>` to fill.
    #[arg(long)]
    pub text: String,
    /// Candidates shown per mask.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args) -> u8 {
    super::dispatch(args.device, "fill", args)
}

impl super::Generic for Args {
    fn run<B: Kernels>(&self, device: &B::Device) -> Result<(), String> {
        fill::<B>(self, device)
    }
}

/// One candidate for a mask.
#[derive(Debug, serde::Serialize)]
struct Candidate {
    token: String,
    id: u32,
    probability: f64,
}

fn fill<B: Kernels>(args: &Args, device: &B::Device) -> Result<(), String> {
    let run = train::open::open::<B>(&args.checkpoint, device)?;
    if run.ir.mask != Mask::Bidirectional {
        return Err("this model is causal: it continues text (`blkc sample`), it does not fill masks".into());
    }
    let tok = &run.tokenizer;
    let text = args.text.replace(MASK, PLACEHOLDER);
    let pieces: Vec<&str> = text.split(PLACEHOLDER).collect();
    if pieces.len() < 2 {
        return Err(format!("--text has no `{PLACEHOLDER}` to fill"));
    }
    let mut ids = Vec::new();
    let mut masks = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            masks.push(ids.len());
            ids.push(tok.mask());
        }
        ids.extend(tok.encode(piece)?);
    }
    let context = run.ir.context as usize;
    if ids.len() > context {
        return Err(format!("--text is {} tokens long, more than the model's context of {context}", ids.len()));
    }
    let t = ids.len();
    let input: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    let logits = run.model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, t]), device));
    let v = logits.dims()[2];
    let rows: Vec<f32> = logits.into_data().convert::<f32>().to_vec().map_err(|e| format!("{e:?}"))?;
    let found: Vec<Vec<Candidate>> =
        masks.iter().map(|&m| candidates(&rows[m * v..(m + 1) * v], args.top, tok)).collect();
    let mut filled = ids.clone();
    for (m, c) in masks.iter().zip(&found) {
        filled[*m] = c.first().map_or(tok.mask(), |c| c.id);
    }
    let filled = tok.decode(&filled);
    if args.json {
        let masks: Vec<serde_json::Value> =
            masks.iter().zip(&found).map(|(p, c)| serde_json::json!({"position": p, "candidates": c})).collect();
        let out = serde_json::json!({"schema_version": super::JSON_VERSION, "command": "fill",
            "checkpoint": run.checkpoint.display().to_string(), "step": run.state.step, "filled": filled, "masks": masks});
        outln!("{out}");
        return Ok(());
    }
    outln!("{filled}");
    for (i, c) in found.iter().enumerate() {
        let list: Vec<String> = c.iter().map(|c| format!("{:?} {:.3}", c.token, c.probability)).collect();
        outln!("mask {}: {}", i + 1, list.join(", "));
    }
    Ok(())
}

/// The `top` most likely tokens of a row of logits, with probabilities.
/// The mask token is never a candidate (the objective's targets are the
/// tokens a mask hides, never the mask itself): the probabilities are over
/// the other tokens.
fn candidates(row: &[f32], top: usize, tok: &train::tokenizer::Tokenizer) -> Vec<Candidate> {
    let never = tok.mask_token().map(|m| m as usize);
    let max = row.iter().copied().fold(f32::MIN, f32::max);
    let exp: Vec<f64> =
        row.iter().enumerate().map(|(i, &x)| if Some(i) == never { 0.0 } else { f64::from(x - max).exp() }).collect();
    let total: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..row.len()).filter(|&i| Some(i) != never).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order
        .into_iter()
        .take(top.max(1))
        .map(|i| Candidate { token: tok.decode(&[i as u32]), id: i as u32, probability: exp[i] / total })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tokenizer::Tokenizer;

    #[test]
    fn the_mask_is_never_a_candidate() {
        // Bytes: 'a' = 97, 'b' = 98, the mask 257 the most likely.
        let mut row = vec![-30.0f32; 258];
        row[257] = 5.0;
        row[97] = 2.0;
        row[98] = 2.0 - 2f32.ln();
        let c = candidates(&row, 3, &Tokenizer::Bytes);
        assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>()[..2], [97, 98]);
        assert!(c.iter().all(|c| c.id != 257));
        // Without the mask, 'a' and 'b' share the mass two to one.
        assert!((c[0].probability - 2.0 / 3.0).abs() < 1e-6, "{}", c[0].probability);
        assert!((c[1].probability - 1.0 / 3.0).abs() < 1e-6, "{}", c[1].probability);
    }
}
