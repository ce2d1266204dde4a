//! `blkc bench`: training-step and forward timings of several models,
//! measured interleaved (one step of each model in turn, round after round)
//! so that their ratios hold on a noisy machine.
//!
//! A training step is what `blkc train` does per step: forward, loss,
//! backward, the optimiser update; it ends when the loss has been read back
//! (which waits for the device). Inputs are random tokens with a fixed seed.

use std::time::Instant;

use blkc::graph::{Model as ModelIr, Program};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;

use crate::kernels::precision::{scope, Precision};
use crate::kernels::TrainKernels;
use crate::layers::dropout::Noise;
use crate::model::Model;
use crate::train::batch::{Batch, Objective};
use crate::train::optim::{Config, Optimizer, Rule};
use crate::train::{loss, objective_for_mask};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub batch: usize,
    pub warmup: usize,
    pub steps: usize,
    /// The precision of the weight products.
    pub precision: Precision,
    /// Training steps only (no forward pass timed, no product rate
    /// measured): what `--profile` sums by kernel.
    pub steps_only: bool,
}

/// One model's figures; times in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub file: String,
    pub model: String,
    pub block: String,
    /// A bare block benchmarked in the small CPU model.
    pub bare: bool,
    pub params: u64,
    pub flops_per_token: u64,
    pub batch: usize,
    pub context: usize,
    pub step_ms: f64,
    /// Spread of the step time: lowest and highest of the timed rounds.
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    pub forward_ms: f64,
    pub tokens_per_s: f64,
    /// Training FLOPs (3 × forward) per second achieved.
    pub gflops: f64,
    /// Memory one training step allocates at its peak, in MiB. On the CPU:
    /// the most host bytes in use during the step less those in use before
    /// (counted by the `blkc` binary's allocator; `None` without it). On a
    /// GPU: the device bytes the backend's allocator holds after the step
    /// (its memory pool: what the process needs from the device, for every
    /// model of the run so far, as `torch.cuda.memory_reserved` counts).
    pub peak_mib: Option<f64>,
    /// Where `peak_mib` was counted: `host` or `device`.
    pub memory: &'static str,
    /// What `train`'s memory estimate says one step allocates (activations,
    /// logits, gradients, updated weights; [`crate::train::memory`]), in
    /// MiB: on the CPU, where `peak_mib` counts the same, it lies above it
    /// once the step's tensors outweigh its few MiB of fixed scratch (which
    /// the estimate's allowance for the process covers).
    pub estimate_mib: Option<f64>,
    /// Device bytes in live tensors before the step (the models' weights and
    /// optimiser state), in MiB; `None` on the CPU.
    pub resident_mib: Option<f64>,
    /// Training FLOPs per second over the device's measured peak for a
    /// large matrix product in the same precision ([`peak_gflops`]).
    pub mfu: Option<f64>,
    /// Step-time speed relative to the first model (first / this).
    pub speed_vs_first: f64,
}

struct Entry<B: TrainKernels> {
    model: Option<Model<B>>,
    opt: Optimizer<B::InnerBackend>,
    batch: Batch,
    obj: Objective,
    steps: Vec<f64>,
    forwards: Vec<f64>,
    peak: Option<f64>,
    memory: &'static str,
    resident: Option<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// A batch of random tokens (fixed seed) for `m`.
pub fn random_batch(m: &ModelIr, rows: usize, seed: u64) -> Batch {
    let t = m.context as usize;
    let mut rng = crate::rng::Rng::new(seed);
    let mut draw = || (rng.next_u64() % m.vocab) as i64;
    let inputs: Vec<i64> = (0..rows * t).map(|_| draw()).collect();
    let targets: Vec<i64> = (0..rows * t).map(|_| draw()).collect();
    Batch { rows, context: t, inputs, targets, weights: vec![1.0; rows * t] }
}

fn train_step<B: TrainKernels>(e: &mut Entry<B>, device: &B::Device) -> f64 {
    let Some(model) = e.model.take() else { return f64::NAN };
    let start = Instant::now();
    // The same masks every step: what a step costs, not what it learns.
    let l = loss(&model, &e.batch, e.obj, Some(Noise::new(0, 0)), device);
    let value = l.clone().inner();
    let grads = GradientsParams::from_grads(l.backward(), &model);
    let (model, _) = e.opt.step::<B, _>(model, 1e-4, grads);
    let _: f32 = value.into_scalar().elem();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    e.model = Some(model);
    ms
}

const MIB: f64 = 1024.0 * 1024.0;

/// A training step of `e` whose peak memory is recorded: device bytes on a
/// GPU, host bytes on the CPU.
fn step_memory<B: TrainKernels>(e: &mut Entry<B>, device: &B::Device) {
    if let Some(before) = B::device_bytes(device) {
        train_step(e, device);
        if let Some(after) = B::device_bytes(device) {
            e.peak = Some(after.reserved as f64 / MIB);
            e.resident = Some(before.in_use as f64 / MIB);
            e.memory = "device";
        }
        return;
    }
    let before = crate::alloc::start_peak();
    train_step(e, device);
    if let Some(b) = before {
        e.peak = Some(crate::alloc::peak().saturating_sub(b) as f64 / MIB);
    }
}

/// The device's rate for a square matrix product in `precision`, in
/// GFLOP/s: the best of five products of a side that takes the device at
/// least 20 ms (from 512, doubled up to 8192: large enough for a GPU's
/// tensor cores to reach their rate). `None` if it could not be timed.
/// The denominator of the MFU: the peak this device reaches with this
/// backend, not a datasheet figure.
pub fn peak_gflops<B: crate::kernels::DenseOps>(device: &B::Device, precision: Precision) -> Option<f64> {
    let time = |n: usize, reps: usize| -> Option<f64> {
        let dist = burn::tensor::Distribution::Normal(0.0, 1.0);
        let a = burn::tensor::Tensor::<B, 2>::random([n, n], dist, device);
        let b = burn::tensor::Tensor::<B, 2>::random([n, n], dist, device);
        let (a, b) = match precision {
            Precision::Bf16 => (a.cast(burn::tensor::FloatDType::BF16), b.cast(burn::tensor::FloatDType::BF16)),
            Precision::Fp32 | Precision::Tf32 => (a, b),
        };
        let mut best = f64::INFINITY;
        // The first product compiles and warms up.
        for rep in 0..=reps {
            B::sync(device).ok()?;
            let start = Instant::now();
            // The model's products: fp32 exact or TF32 as `precision` says.
            let c = scope(precision, || crate::kernels::dense::matmul(a.clone(), b.clone()));
            B::sync(device).ok()?;
            let s = start.elapsed().as_secs_f64();
            drop(c);
            if rep > 0 {
                best = best.min(s);
            }
        }
        (best.is_finite() && best > 0.0).then_some(best)
    };
    let mut n = 512;
    while n < 8192 && time(n, 1)? < 0.02 {
        n *= 2;
    }
    let best = time(n, 5)?;
    Some(2.0 * (n as f64).powi(3) / best / 1e9)
}

fn forward<B: TrainKernels>(e: &Entry<B>, device: &B::Device) -> f64 {
    let Some(model) = &e.model else { return f64::NAN };
    let inner = model.valid();
    let start = Instant::now();
    let l = loss::<B::InnerBackend>(&inner, &e.batch, e.obj, None, device);
    let _: f32 = l.into_scalar().elem();
    start.elapsed().as_secs_f64() * 1e3
}

/// A model to benchmark: its program, model and labels.
#[derive(Debug)]
pub struct Subject {
    pub file: String,
    pub program: Program,
    pub model: ModelIr,
    pub bare: bool,
}

/// Measures every subject, interleaved, with the products in the plan's
/// precision; `progress` is told each round.
pub fn run<B: TrainKernels>(
    subjects: &[Subject],
    plan: Plan,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<Record> {
    scope(plan.precision, || measure::<B>(subjects, plan, device, progress))
}

fn measure<B: TrainKernels>(
    subjects: &[Subject],
    plan: Plan,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Vec<Record> {
    let config = Config { rule: Rule::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, clip: 1.0 };
    let mut entries: Vec<Entry<B>> = subjects
        .iter()
        .map(|s| Entry {
            model: Some(Model::<B>::build(&s.program, &s.model, 0, device)),
            opt: Optimizer::new(config),
            batch: random_batch(&s.model, plan.batch, 1),
            obj: objective_for_mask(s.model.mask, s.model.vocab as u32),
            steps: Vec::new(),
            forwards: Vec::new(),
            peak: None,
            memory: "host",
            resident: None,
        })
        .collect();
    // Warm-up, and the peak memory of one step of each model.
    for e in entries.iter_mut() {
        for w in 0..plan.warmup.max(1) {
            // The last warm-up step: the optimiser's moments exist by then
            // (unless there is a single warm-up step).
            let last = w + 1 == plan.warmup.max(1);
            if last {
                step_memory(e, device);
            } else {
                train_step(e, device);
            }
            if !plan.steps_only {
                forward(e, device);
            }
        }
    }
    if plan.steps_only {
        // What a kernel profile counts starts here.
        B::profile_mark(device);
    }
    let rounds = plan.steps.max(1);
    for r in 0..rounds {
        for e in entries.iter_mut() {
            let ms = train_step(e, device);
            e.steps.push(ms);
        }
        for e in entries.iter_mut().filter(|_| !plan.steps_only) {
            let ms = forward(e, device);
            e.forwards.push(ms);
        }
        progress(r + 1, rounds);
    }
    let peak = if plan.steps_only { None } else { peak_gflops::<B::InnerBackend>(device, plan.precision) };
    let mut records: Vec<Record> = subjects
        .iter()
        .zip(&entries)
        .map(|(s, e)| {
            let block = &s.program.blocks[s.model.block];
            let t = s.model.context as usize;
            let step = median(&e.steps);
            let flops = blkc::graph::params::flops_per_token(&s.model, block, s.model.context) as f64;
            let tokens = (plan.batch * t) as f64;
            Record {
                file: s.file.clone(),
                model: s.model.name.clone().unwrap_or_else(|| "small".into()),
                block: block.name.clone(),
                bare: s.bare,
                params: blkc::graph::params::count(&s.model, block).total as u64,
                flops_per_token: flops as u64,
                batch: plan.batch,
                context: t,
                step_ms: step,
                step_ms_min: e.steps.iter().copied().fold(f64::INFINITY, f64::min),
                step_ms_max: e.steps.iter().copied().fold(0.0, f64::max),
                forward_ms: median(&e.forwards),
                tokens_per_s: tokens / (step / 1e3),
                gflops: 3.0 * flops * tokens / (step / 1e3) / 1e9,
                peak_mib: e.peak,
                memory: e.memory,
                estimate_mib: None,
                resident_mib: e.resident,
                mfu: peak.map(|p| 3.0 * flops * tokens / (step / 1e3) / 1e9 / p),
                speed_vs_first: 1.0,
            }
        })
        .collect();
    let first = records.first().map_or(f64::NAN, |r| r.step_ms);
    for r in &mut records {
        r.speed_vs_first = first / r.step_ms;
    }
    records
}

/// The backend's name for the table.
pub fn device_name<B: Backend>(device: &B::Device) -> String {
    B::name(device)
}
