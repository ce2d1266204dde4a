//! `blkc sample RUN --prompt TEXT`: continues a prompt with a trained
//! causal model, greedily (`--temperature 0`) or by sampling.

use std::io::Write;
use std::path::PathBuf;

use crate::rng::Rng;
use blkc::graph::Mask;

use super::Device;
use crate::decode::Window;
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
    /// Nucleus sampling: only among the most likely tokens whose
    /// probabilities sum to P (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Stop when the text generated contains this string (which is not
    /// printed); repeat for several.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stops: Vec<String>,
    /// Go on past the end of text (generation stops there otherwise, as
    /// the document the model writes has ended).
    #[arg(long)]
    pub ignore_eot: bool,
    /// Seed of the draws: the same seed, checkpoint and options give the
    /// same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
}

pub fn run(args: &Args) -> u8 {
    super::dispatch(args.device, "sample", args)
}

impl super::Generic for Args {
    fn run<B: Kernels>(&self, device: &B::Device) -> Result<(), String> {
        sample::<B>(self, device)
    }
}

fn sample<B: Kernels>(args: &Args, device: &B::Device) -> Result<(), String> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(format!("--temperature must be 0 or more, not {}", args.temperature));
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(format!("--top-p must be above 0 and at most 1, not {}", args.top_p));
    }
    if args.stops.iter().any(String::is_empty) {
        return Err("--stop needs a non-empty text".into());
    }
    let run = train::open::open::<B>(&args.checkpoint, device)?;
    if run.ir.mask != Mask::Causal {
        return Err("this model is bidirectional (masked-language model): it fills masks, it does not continue text; \
             use `blkc fill RUN --text \"… <mask> …\"`"
            .into());
    }
    let tok = &run.tokenizer;
    let mut ids = tok.encode(&args.prompt)?;
    if ids.is_empty() {
        ids.push(tok.end_of_text());
    }
    let context = run.ir.context as usize;
    let g = Generation {
        tokens: args.tokens,
        sampling: Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        stops: &args.stops,
        end: (!args.ignore_eot).then(|| tok.end_of_text()),
        // The causal objective never has the mask as its target.
        never: tok.mask_token().filter(|&m| m != tok.end_of_text()),
    };
    let mut out = crate::output::Out;
    if write!(out, "{}", args.prompt).is_err() {
        return Ok(()); // nobody reads: `output::finish` decides the status
    }
    // Each token read once: the attentions keep their keys and values.
    let mut window = Window::new(&run.model, context, device);
    let logits = |ids: &[u32]| window.next(ids);
    if let Ended::EndOfText(n) = g.run(ids, &mut Rng::new(args.seed), |ids| tok.decode(ids), logits, &mut out)? {
        // Said apart from the text, so that a short or empty sample is not
        // taken for a fault.
        let tokens = if n == 1 { "token" } else { "tokens" };
        crate::errln!("sample: the model ended the text after {n} {tokens} (`--ignore-eot` goes on past its end)");
    }
    Ok(())
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It drew its count of tokens, or its reader left.
    Drawn,
    /// The model drew the end of text after this many tokens.
    EndOfText(usize),
    /// A stop string was written.
    Stopped,
}

/// What a generation draws and where it ends.
struct Generation<'a> {
    /// Tokens to draw at most.
    tokens: usize,
    sampling: Sampling,
    /// Texts that end it (not written).
    stops: &'a [String],
    /// The token that ends it (not written).
    end: Option<u32>,
    /// A token never drawn.
    never: Option<u32>,
}

impl Generation<'_> {
    /// Continues `ids` with tokens drawn from `logits` (of the ids so far),
    /// writing the decoded text to `out` as it comes; stops when `out`
    /// cannot be written (its reader left: `blkc sample … | head`).
    fn run(
        &self,
        mut ids: Vec<u32>,
        rng: &mut Rng,
        decode: impl Fn(&[u32]) -> String,
        mut logits: impl FnMut(&[u32]) -> Result<Vec<f32>, String>,
        out: &mut impl Write,
    ) -> Result<Ended, String> {
        let prompt_len = ids.len();
        // Text that could still be the start of a stop string is held back.
        let hold = self.stops.iter().map(String::len).max().unwrap_or(1) - 1;
        let mut shown = 0;
        for _ in 0..self.tokens {
            let mut last = logits(&ids)?;
            if let Some(x) = self.never.and_then(|n| last.get_mut(n as usize)) {
                *x = f32::NEG_INFINITY;
            }
            let next = pick(&last, self.sampling, rng);
            if Some(next) == self.end {
                let _ = writeln!(out, "{}", decode(&ids[prompt_len..]).get(shown..).unwrap_or_default());
                return Ok(Ended::EndOfText(ids.len() - prompt_len));
            }
            ids.push(next);
            let text = decode(&ids[prompt_len..]);
            if let Some(at) = self.stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                let _ = writeln!(out, "{}", text.get(shown..at).unwrap_or_default());
                return Ok(Ended::Stopped);
            }
            // Print what is new (multi-byte characters may complete later).
            let upto = text.floor_char_boundary(text.len().saturating_sub(hold));
            if upto > shown && text.is_char_boundary(shown) && !text[..upto].ends_with('\u{fffd}') {
                if write!(out, "{}", &text[shown..upto]).and_then(|()| out.flush()).is_err() {
                    return Ok(Ended::Drawn);
                }
                shown = upto;
            }
        }
        let _ = writeln!(out, "{}", decode(&ids[prompt_len..]).get(shown..).unwrap_or_default());
        Ok(Ended::Drawn)
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 picks the most likely token.
    pub temperature: f64,
    /// Only the K most likely (0: all).
    pub top_k: usize,
    /// Only the most likely whose probabilities sum to P.
    pub top_p: f64,
}

/// The next token from `logits`: the most likely at temperature 0, else a
/// draw from the softmax at `temperature`, cut to the `top_k` most likely
/// and then to the smallest set whose probability reaches `top_p`.
pub fn pick(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    let argmax = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0;
    if s.temperature == 0.0 {
        return argmax as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let top = f64::from(logits[order[0]]);
    let mut weights: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - top) / s.temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    if s.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = weights.iter().take_while(|w| {
            let before = mass;
            mass += *w / total;
            before < s.top_p
        });
        let n = keep.count().max(1);
        weights.truncate(n);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03 at temperature 1.
        let logits = [3.0f32, 2.0, 1.0, -0.1];
        let mut rng = Rng::new(7);
        let draw = |s: Sampling, rng: &mut Rng| (0..2000).map(|_| pick(&logits, s, rng)).collect::<Vec<u32>>();
        let nucleus = draw(Sampling { temperature: 1.0, top_k: 0, top_p: 0.8 }, &mut rng);
        assert!(nucleus.iter().all(|&t| t <= 1), "0.64 + 0.24 reach 0.8: only the first two");
        assert!(nucleus.contains(&0) && nucleus.contains(&1));
        let all = draw(Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 }, &mut rng);
        assert!(all.contains(&3), "without a nucleus the tail is drawn too");
        let one = draw(Sampling { temperature: 1.0, top_k: 0, top_p: 0.1 }, &mut rng);
        assert!(one.iter().all(|&t| t == 0), "the most likely token alone reaches 0.1");
        assert_eq!(pick(&logits, Sampling { temperature: 0.0, top_k: 0, top_p: 0.5 }, &mut rng), 0);
    }

    /// Tokens are letters: 0 'a', 1 'b', 2 'c', 3 the end of text, 4 the
    /// mask; `scores` gives the logits after each count of ids so far.
    fn generated(g: &Generation<'_>, scores: &[[f32; 5]]) -> String {
        ended(g, scores).0
    }

    /// [`generated`], with how it ended.
    fn ended(g: &Generation<'_>, scores: &[[f32; 5]]) -> (String, Ended) {
        let decode = |ids: &[u32]| ids.iter().map(|&i| ["a", "b", "c", "<eot>", "<mask>"][i as usize]).collect();
        let mut out = Vec::new();
        let logits = |ids: &[u32]| Ok(scores[(ids.len() - 1).min(scores.len() - 1)].to_vec());
        let end = g.run(vec![0], &mut Rng::new(1), decode, logits, &mut out).unwrap_or_else(|e| panic!("{e}"));
        (String::from_utf8_lossy(&out).into_owned(), end)
    }

    #[test]
    fn generation_ends_at_the_end_of_text_and_never_draws_the_mask() {
        let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 };
        let g = Generation { tokens: 10, sampling: greedy, stops: &[], end: Some(3), never: Some(4) };
        // b, then the mask (most likely, never drawn: c instead), then the end.
        let scores = [[0.0, 5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 9.0], [0.0, 0.0, 0.0, 9.0, 0.0]];
        assert_eq!(ended(&g, &scores), ("bc\n".into(), Ended::EndOfText(2)));
        // The end first: no text, and the count says so.
        assert_eq!(ended(&g, &[[0.0, 0.0, 0.0, 9.0, 0.0]]), ("\n".into(), Ended::EndOfText(0)));
        // Past the end of text when asked, to the token count.
        let on = Generation { tokens: 4, end: None, ..g };
        assert_eq!(ended(&on, &scores), ("bc<eot><eot>\n".into(), Ended::Drawn));
        // A stop string ends it before the text is written.
        let stops = ["c<".to_string()];
        let stopped = Generation { stops: &stops, ..on };
        assert_eq!(ended(&stopped, &scores), ("b\n".into(), Ended::Stopped));
        // Sampled, the mask is never drawn however likely.
        let hot = Sampling { temperature: 2.0, top_k: 0, top_p: 1.0 };
        let drawn = Generation { tokens: 200, sampling: hot, end: None, ..g };
        let text = generated(&drawn, &[[0.0, 0.0, 0.0, 0.0, 3.0]]);
        assert!(!text.contains("<mask>") && text.contains('a') && text.contains("<eot>"), "{text}");
    }

    /// Takes `room` bytes, then fails as a pipe whose reader left.
    struct Closing {
        room: usize,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() > self.room {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.room -= buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn generation_stops_when_nobody_reads() {
        let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 };
        let g = Generation { tokens: 1_000_000, sampling: greedy, stops: &[], end: None, never: None };
        let mut calls = 0;
        let logits = |_: &[u32]| {
            calls += 1;
            Ok(vec![1.0, 0.0])
        };
        let mut out = Closing { room: 10 };
        g.run(vec![0], &mut Rng::new(1), |ids| "a".repeat(ids.len()), logits, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        // Ten tokens written, the eleventh refused: no token is drawn after.
        assert_eq!(calls, 11);
    }
}
