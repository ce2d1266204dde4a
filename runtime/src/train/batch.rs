//! Token streams and batches. Each split is one stream (documents joined
//! by end-of-text) cut into windows of the context length. Which windows a
//! step sees is a pure function of (seed, step): a resumed run draws
//! exactly the batches the uninterrupted run would have drawn, with no
//! loader state to save.

use super::token_files::OnDisk;
use crate::rng::Rng;

/// One split's tokens, packed.
#[derive(Debug, Clone)]
pub struct Stream {
    ids: Ids,
    /// Tokens per window (the model's context).
    pub context: usize,
    /// Whether windows carry one extra token for the shifted targets.
    pub shifted: bool,
}

/// Where a stream's ids are.
#[derive(Debug, Clone)]
enum Ids {
    /// Encoded text, held whole.
    Memory(Vec<u32>),
    /// Token files, read window by window.
    Disk(OnDisk),
}

impl Stream {
    pub fn new(tokens: Vec<u32>, context: usize, shifted: bool) -> Stream {
        Stream { ids: Ids::Memory(tokens), context, shifted }
    }

    /// A stream of token files' ids, read as the windows are drawn.
    pub fn on_disk(ids: OnDisk, context: usize, shifted: bool) -> Stream {
        Stream { ids: Ids::Disk(ids), context, shifted }
    }

    /// Ids in the stream.
    pub fn len(&self) -> usize {
        match &self.ids {
            Ids::Memory(v) => v.len(),
            Ids::Disk(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This stream's ids, then `other`'s, in windows of this one.
    pub fn join(self, other: Stream) -> Stream {
        let ids = match (self.ids, other.ids) {
            (Ids::Memory(mut a), Ids::Memory(b)) => {
                a.extend(b);
                Ids::Memory(a)
            }
            (Ids::Disk(mut a), Ids::Disk(b)) => {
                a.append(b);
                Ids::Disk(a)
            }
            // Both splits of a corpus are of one kind; this keeps the first.
            (a, _) => a,
        };
        Stream { ids, ..self }
    }

    /// Number of whole windows (consecutive windows share one token when
    /// shifted: the last target of one is the first input of the next).
    pub fn windows(&self) -> usize {
        let extra = usize::from(self.shifted);
        if self.len() < self.context + extra {
            return 0;
        }
        (self.len() - extra) / self.context
    }

    /// The window whose first id is id `start` of the stream into `out`.
    fn window_at(&self, start: usize, out: &mut Vec<u32>) -> Result<(), String> {
        let n = self.context + usize::from(self.shifted);
        out.clear();
        match &self.ids {
            Ids::Memory(v) => {
                out.extend_from_slice(v.get(start..start + n).ok_or("a window past the end of the stream")?);
                Ok(())
            }
            Ids::Disk(d) => {
                out.resize(n, 0);
                d.read(start, out)
            }
        }
    }
}

/// A batch on the host: `inputs` and `targets` are `[rows, context]`
/// row-major; `weights` marks the positions the loss counts (all of them
/// for a causal model, the masked ones for MLM).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub context: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub weights: Vec<f32>,
}

impl Batch {
    pub fn counted(&self) -> f32 {
        self.weights.iter().sum()
    }

    /// Rows `range` of this batch (a device's share of it).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Batch {
        let (a, b) = (range.start.min(self.rows), range.end.clamp(range.start.min(self.rows), self.rows));
        let cut = |t: usize| t * self.context;
        Batch {
            rows: b - a,
            context: self.context,
            inputs: self.inputs[cut(a)..cut(b)].to_vec(),
            targets: self.targets[cut(a)..cut(b)].to_vec(),
            weights: self.weights[cut(a)..cut(b)].to_vec(),
        }
    }
}

/// What the model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// The next token.
    Causal,
    /// Masked tokens (BERT-style: of the chosen positions, 80 % become the
    /// mask token, 10 % a random token, 10 % stay).
    Masked { rate: f64, mask: u32, vocab: u32 },
}

/// The order in which training windows are visited: a fresh permutation
/// per pass over the data, seeded by (seed, pass).
#[derive(Debug)]
pub struct Sampler {
    seed: u64,
    windows: usize,
    pass: Option<(usize, Vec<u32>)>,
}

impl Sampler {
    pub fn new(seed: u64, windows: usize) -> Sampler {
        Sampler { seed, windows, pass: None }
    }

    /// The window of the `k`-th training sample (counting from the start
    /// of the run).
    pub fn window(&mut self, k: u64) -> usize {
        let n = self.windows.max(1) as u64;
        let (pass, at) = ((k / n) as usize, (k % n) as usize);
        if self.pass.as_ref().map(|(p, _)| *p) != Some(pass) {
            self.pass = Some((pass, permutation(self.windows, mix(self.seed, pass as u64, 0x5eed))));
        }
        self.pass.as_ref().map_or(0, |(_, order)| order[at] as usize)
    }
}

fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut r = Rng::new(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ c.rotate_left(17));
    r.next_u64()
}

/// The training batch of `rows` samples starting at sample `first`.
pub fn train_batch(
    stream: &Stream,
    sampler: &mut Sampler,
    first: u64,
    rows: usize,
    obj: Objective,
    seed: u64,
) -> Result<Batch, String> {
    let windows: Vec<Span> = (0..rows as u64).map(|r| Span::whole(stream, sampler.window(first + r))).collect();
    assemble(stream, &windows, obj, mix(seed, first, 0x3a5c))
}

/// Evaluation batch `i` of `count`: windows spread evenly over the split,
/// the same at every evaluation.
pub fn eval_batch(
    stream: &Stream,
    i: usize,
    count: usize,
    rows: usize,
    obj: Objective,
    seed: u64,
) -> Result<Batch, String> {
    let n = stream.windows();
    let total = (count * rows).max(1);
    let spread = |j: usize| if total <= n { j * n / total } else { j % n.max(1) };
    let windows: Vec<Span> = (0..rows).map(|r| Span::whole(stream, spread(i * rows + r))).collect();
    assemble(stream, &windows, obj, mix(seed, i as u64, 0xe7a1))
}

/// A window of a stream and the positions of it that count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The window's first id in the stream.
    pub start: usize,
    /// The first position whose target counts: those before it were
    /// scored by an earlier window and only give context.
    pub from: usize,
}

impl Span {
    /// The `w`-th window of the stream's tiling, all of it counted.
    fn whole(stream: &Stream, w: usize) -> Span {
        Span { start: w * stream.context, from: 0 }
    }
}

/// Windows that score every target of a stream once, in order: a window
/// starts every `stride` ids and counts only its last `stride` targets
/// (the first counts all of them), so that each target after the first
/// window is predicted from at least `context − stride` ids before it;
/// a last window ends at the stream's end and counts the targets no
/// window before it reached. A stride of the context tiles the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    context: usize,
    stride: usize,
    /// The start of the last window: the stream's last full window.
    last: usize,
    /// Windows starting at multiples of the stride.
    regular: usize,
}

impl Sliding {
    /// The windows of `stream` at `stride` (1 to its context; clamped).
    pub fn new(stream: &Stream, stride: usize) -> Sliding {
        let context = stream.context;
        let stride = stride.clamp(1, context.max(1));
        let needed = context + usize::from(stream.shifted);
        match stream.len().checked_sub(needed) {
            Some(last) => Sliding { context, stride, last, regular: last / stride + 1 },
            None => Sliding { context, stride, last: 0, regular: 0 },
        }
    }

    /// Ids between the starts of consecutive windows.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Windows in all.
    pub fn count(&self) -> usize {
        let tail = self.regular > 0 && (self.regular - 1) * self.stride < self.last;
        self.regular + usize::from(tail)
    }

    /// Window `k` (below [`Sliding::count`]).
    pub fn span(&self, k: usize) -> Span {
        if k == 0 {
            return Span { start: 0, from: 0 };
        }
        if k < self.regular {
            return Span { start: k * self.stride, from: self.context - self.stride };
        }
        // The last window: what follows the end of the last regular one.
        let end = (self.regular - 1) * self.stride + self.context;
        Span { start: self.last, from: end - self.last }
    }

    /// Batches of `rows` windows that hold them all (the last may hold
    /// fewer).
    pub fn batches(&self, rows: usize) -> usize {
        self.count().div_ceil(rows.max(1))
    }

    /// Targets counted in all: each once.
    pub fn targets(&self) -> usize {
        if self.regular == 0 {
            return 0;
        }
        self.last + self.context
    }
}

/// Batch `i` of `rows` windows of `sliding` (the last batch may hold
/// fewer rows).
pub fn sliding_batch(
    stream: &Stream,
    sliding: &Sliding,
    i: usize,
    rows: usize,
    obj: Objective,
    seed: u64,
) -> Result<Batch, String> {
    let n = sliding.count();
    let windows: Vec<Span> = (i * rows..((i + 1) * rows).min(n)).map(|k| sliding.span(k)).collect();
    assemble(stream, &windows, obj, mix(seed, i as u64, 0x511d))
}

/// Batches an evaluation pass can hold without repeating windows.
pub fn eval_batches(stream: &Stream, wanted: usize, rows: usize) -> usize {
    wanted.min(stream.windows() / rows.max(1)).max(usize::from(stream.windows() > 0))
}

/// The batch of `windows`; fails only where a token file cannot be read.
fn assemble(stream: &Stream, windows: &[Span], obj: Objective, seed: u64) -> Result<Batch, String> {
    let t = stream.context;
    let mut b = Batch {
        rows: windows.len(),
        context: t,
        inputs: Vec::with_capacity(windows.len() * t),
        targets: Vec::with_capacity(windows.len() * t),
        weights: Vec::with_capacity(windows.len() * t),
    };
    let mut rng = Rng::new(seed);
    let mut win = Vec::with_capacity(t + 1);
    for w in windows {
        stream.window_at(w.start, &mut win)?;
        let first = b.weights.len();
        match obj {
            Objective::Causal => {
                b.inputs.extend(win[..t].iter().map(|&x| i64::from(x)));
                b.targets.extend(win[1..].iter().map(|&x| i64::from(x)));
                b.weights.extend(std::iter::repeat_n(1.0, t));
            }
            Objective::Masked { rate, mask, vocab } => {
                for &tok in &win {
                    let chosen = rng.uniform() < rate;
                    let input = if !chosen {
                        tok
                    } else {
                        let u = rng.uniform();
                        if u < 0.8 {
                            mask
                        } else if u < 0.9 {
                            (rng.next_u64() % u64::from(vocab)) as u32
                        } else {
                            tok
                        }
                    };
                    b.inputs.push(i64::from(input));
                    b.targets.push(i64::from(tok));
                    b.weights.push(if chosen { 1.0 } else { 0.0 });
                }
            }
        }
        b.weights[first..first + w.from.min(t)].fill(0.0);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb(s: &Stream, sampler: &mut Sampler, first: u64, rows: usize, obj: Objective, seed: u64) -> Batch {
        train_batch(s, sampler, first, rows, obj, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    fn eb(s: &Stream, i: usize, count: usize, rows: usize, obj: Objective, seed: u64) -> Batch {
        eval_batch(s, i, count, rows, obj, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    fn stream(n: u32, t: usize) -> Stream {
        Stream::new((0..n).collect(), t, true)
    }

    /// Every target counted once, by the first window that reaches it,
    /// with the context the stride promises; the windows inside the
    /// stream; a stride of the context tiles it.
    #[test]
    fn sliding_windows_count_every_target_once() {
        for (len, t) in [(100, 8), (9, 8), (8, 8), (57, 10), (31, 1)] {
            for shifted in [true, false] {
                let s = Stream::new((0..len).collect(), t, shifted);
                let extra = usize::from(shifted);
                for stride in 1..=t {
                    let w = Sliding::new(&s, stride);
                    let mut counted = vec![0; len as usize];
                    for k in 0..w.count() {
                        let span = w.span(k);
                        assert!(span.start + t + extra <= len as usize, "{len} {t} {stride}: window {k} {span:?}");
                        assert!(span.from < t, "{len} {t} {stride}: window {k} counts nothing");
                        for j in span.from..t {
                            let target = span.start + j + extra;
                            counted[target] += 1;
                            if k > 0 {
                                assert!(j + extra >= t - stride, "{len} {t} {stride}: target {target} sees {j}");
                            }
                        }
                    }
                    let want: Vec<i32> =
                        (0..len as usize).map(|i| i32::from(len as usize >= t + extra && i >= extra)).collect();
                    assert_eq!(counted, want, "{len} {t} {stride} {shifted}");
                    assert_eq!(w.targets(), want.iter().sum::<i32>() as usize);
                    if stride == t {
                        let starts: Vec<usize> = (0..w.count()).map(|k| w.span(k).start).collect();
                        assert!(starts.windows(2).all(|p| p[1] - p[0] <= t), "{starts:?}");
                        assert!(starts.iter().take(s.windows()).enumerate().all(|(k, &a)| a == k * t));
                    }
                }
            }
        }
    }

    #[test]
    fn a_sliding_batch_weighs_only_the_targets_it_counts() {
        let s = stream(31, 8);
        let w = Sliding::new(&s, 3);
        assert_eq!(w.count(), 9, "starts 0, 3, …, 21, and 22 for the last target");
        let b = sliding_batch(&s, &w, 1, 4, Objective::Causal, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.rows, 4);
        assert_eq!(b.inputs[..8], (12..20).collect::<Vec<i64>>());
        assert_eq!(b.targets[..8], (13..21).collect::<Vec<i64>>());
        assert_eq!(b.weights[..8], [0., 0., 0., 0., 0., 1., 1., 1.]);
        let last = sliding_batch(&s, &w, 2, 4, Objective::Causal, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last.rows, 1, "the last batch holds what is left");
        assert_eq!(last.inputs, (22..30).collect::<Vec<i64>>());
        assert_eq!(last.weights, [0., 0., 0., 0., 0., 0., 0., 1.], "only the stream's last target is new");
    }

    #[test]
    fn causal_targets_are_the_next_tokens() {
        let s = stream(100, 8);
        assert_eq!(s.windows(), 12);
        let mut sampler = Sampler::new(1, s.windows());
        let b = tb(&s, &mut sampler, 0, 4, Objective::Causal, 1);
        for r in 0..4 {
            for i in 0..8 {
                assert_eq!(b.targets[r * 8 + i], b.inputs[r * 8 + i] + 1);
            }
        }
        assert_eq!(b.counted(), 32.0);
    }

    #[test]
    fn a_pass_visits_every_window_once_and_batches_depend_only_on_the_step() {
        let s = stream(1000, 10);
        let n = s.windows();
        let mut a = Sampler::new(7, n);
        let mut seen: Vec<usize> = (0..n as u64).map(|k| a.window(k)).collect();
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        // A fresh sampler (as after a resume) gives the same batch for a step.
        let late = tb(&s, &mut a, 250, 4, Objective::Causal, 7);
        let mut fresh = Sampler::new(7, n);
        assert_eq!(tb(&s, &mut fresh, 250, 4, Objective::Causal, 7), late);
        // Another seed, another order.
        let mut other = Sampler::new(8, n);
        assert_ne!(tb(&s, &mut other, 250, 4, Objective::Causal, 7), late);
    }

    #[test]
    fn masking_hits_the_rate_and_counts_only_masked_positions() {
        let s = Stream::new((0..20_000).map(|i| i % 200).collect(), 100, false);
        let obj = Objective::Masked { rate: 0.25, mask: 257, vocab: 258 };
        let mut sampler = Sampler::new(0, s.windows());
        let b = tb(&s, &mut sampler, 0, 100, obj, 0);
        let rate = b.counted() / 10_000.0;
        assert!((0.23..0.27).contains(&rate), "mask rate {rate}");
        let masked = b.inputs.iter().filter(|&&x| x == 257).count() as f32 / b.counted();
        assert!((0.75..0.85).contains(&masked), "{masked} of chosen positions masked");
        for i in 0..b.inputs.len() {
            if b.weights[i] == 0.0 {
                assert_eq!(b.inputs[i], b.targets[i]);
            }
        }
    }

    #[test]
    fn evaluation_batches_are_fixed_and_spread() {
        let s = stream(10_000, 10);
        let a = eb(&s, 1, 4, 8, Objective::Causal, 0);
        assert_eq!(a, eb(&s, 1, 4, 8, Objective::Causal, 0));
        assert_ne!(a, eb(&s, 2, 4, 8, Objective::Causal, 0));
        assert_eq!(eval_batches(&s, 4, 8), 4);
        assert_eq!(eval_batches(&stream(30, 10), 4, 8), 1);
    }

    #[test]
    fn the_shares_of_a_batch_make_it_whole() {
        let s = stream(1000, 10);
        let mut sampler = Sampler::new(3, s.windows());
        let b = tb(&s, &mut sampler, 40, 6, Objective::Causal, 3);
        let (first, second) = (b.rows(0..4), b.rows(4..6));
        assert_eq!((first.rows, second.rows), (4, 2));
        assert_eq!([first.inputs.clone(), second.inputs.clone()].concat(), b.inputs);
        assert_eq!([first.targets.clone(), second.targets.clone()].concat(), b.targets);
        assert_eq!(first.counted() + second.counted(), b.counted());
        // Past the end: empty, not a panic.
        assert_eq!(b.rows(5..9).rows, 1);
        assert_eq!(b.rows(7..9).rows, 0);
    }
}
