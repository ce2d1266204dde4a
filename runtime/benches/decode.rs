//! `blkc sample`'s cost per token: decoding a token at a time with the
//! attentions' keys and values kept (`decode::Window`, what `sample` runs)
//! against a forward pass over the window for every token (what it ran
//! before), side by side in one run, for the small SAS-P, Pre-LN and Llama
//! (examples/small/, context 128) generating 256 tokens from a 16-token
//! prompt — past the context, so the window's restarts are in the count.
//! Both pick the most likely token, and must pick the same ones while the
//! window has not restarted. Interleaved rounds, median.
//! `cargo bench -p blkc-runtime --bench decode` (`RAYON_NUM_THREADS` sets
//! the threads).

use std::time::Instant;

use blkc_runtime::backend::Cpu;
use blkc_runtime::decode::Window;
use blkc_runtime::model::Model;
use burn::tensor::{Int, Tensor, TensorData};

const PROMPT: usize = 16;
const TOKENS: usize = 256;
const ROUNDS: usize = 3;

fn most_likely(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens a forward pass per token picks, over the last `context`.
fn by_forward(model: &Model<Cpu>, context: usize, prompt: &[u32]) -> Vec<u32> {
    let device = Default::default();
    let mut ids = prompt.to_vec();
    for _ in 0..TOKENS {
        let window = &ids[ids.len().saturating_sub(context)..];
        let t = window.len();
        let input: Vec<i64> = window.iter().map(|&x| i64::from(x)).collect();
        let logits = model.forward(Tensor::<Cpu, 2, Int>::from_data(TensorData::new(input, [1, t]), &device));
        let v = logits.dims()[2];
        let last: Vec<f32> = logits.slice([0..1, t - 1..t, 0..v]).into_data().to_vec().unwrap_or_default();
        ids.push(most_likely(&last));
    }
    ids
}

/// The tokens decoding a token at a time picks.
fn by_window(model: &Model<Cpu>, context: usize, prompt: &[u32]) -> Vec<u32> {
    let device = Default::default();
    let mut window = Window::new(model, context, &device);
    let mut ids = prompt.to_vec();
    for _ in 0..TOKENS {
        let last = window.next(&ids).unwrap_or_default();
        ids.push(most_likely(&last));
    }
    ids
}

fn main() {
    blkc_runtime::alloc::keep_freed_memory();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!(
        "{TOKENS} tokens after a {PROMPT}-token prompt, greedy, {} threads, median of {ROUNDS} interleaved rounds",
        rayon::current_num_threads()
    );
    println!("{:<10} {:>10} {:>14} {:>9}", "model", "window ms", "forward ms", "ratio");
    for name in ["sas-p", "preln", "llama"] {
        let c = blkc::compile(&root.join(format!("examples/small/{name}.blk")), &blkc::FsLoader).expect("readable");
        let p = c.program.expect("compiles");
        let ir = p.model.clone().expect("model");
        let model = Model::<Cpu>::build(&p, &ir, 0, &Default::default());
        let context = ir.context as usize;
        let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 37 + 5) % ir.vocab as u32).collect();
        let (a, b) = (by_window(&model, context, &prompt), by_forward(&model, context, &prompt));
        let within = context.min(PROMPT + TOKENS);
        assert_eq!(a[..within], b[..within], "{name}: the same tokens within the context");
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..ROUNDS {
            for k in 0..2 {
                let i = (round + k) % 2;
                let start = Instant::now();
                std::hint::black_box(match i {
                    0 => by_window(&model, context, &prompt),
                    _ => by_forward(&model, context, &prompt),
                });
                times[i].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let [w, f] = times.map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        println!("{name:<10} {w:>10.0} {f:>14.0} {:>8.1}×", f / w);
    }
}
