//! The training loop: steps on one device or several in data parallel
//! (the first leads: signals, logging, evaluation, checkpoints; the others
//! follow its orders), from where [`super::run`] starts it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use serde_json::json;

use super::batch::{self, Objective, Sampler};
use super::logs::Logs;
use super::optim::{self, Optimizer};
use super::parallel::{self, Peer, PeerError};
use super::run::Start;
use super::rundir::{RunDir, State};
use super::settings::Settings;
use super::{progress, share_of_loss, signals, Failure, Job, Summary, Whole};
use crate::checkpoint;
use crate::kernels::precision::scope;
use crate::kernels::TrainKernels;
use crate::layers::dropout::Noise;
use crate::model::Model;

/// What the loop needs besides the model.
pub(super) struct Loop<'a> {
    pub(super) job: &'a Job,
    pub(super) dir: &'a RunDir,
    pub(super) s: &'a Settings,
    pub(super) obj: Objective,
    pub(super) context: usize,
    /// Forward passes per step.
    pub(super) accum: u64,
    /// Rows of a forward pass on one device.
    pub(super) rows: usize,
    /// Devices training together.
    pub(super) peers: usize,
    pub(super) train: &'a batch::Stream,
    pub(super) valid: &'a batch::Stream,
}

/// The leader's channels to the other devices: the step each is to take
/// next; dropped, they stop.
type Orders = Vec<mpsc::Sender<u64>>;

/// A step taken on one device.
struct Stepped<B: TrainKernels> {
    model: Model<B>,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    /// Seconds spent assembling the step's batches.
    data: f64,
}

/// Why a step was not taken.
enum Halt {
    /// The loss or the gradient norm (which, and its value) is not finite:
    /// every device sees the same sums, so all of them halt here.
    NonFinite(&'static str, f64),
    Peer(PeerError),
}

impl From<PeerError> for Halt {
    fn from(e: PeerError) -> Self {
        Halt::Peer(e)
    }
}

/// Why the leading device stopped before the end.
enum Stop {
    Failed(Failure),
    /// Another device stopped first; its error is the one to report.
    KnockOn(String),
}

impl Stop {
    fn failure(self) -> Failure {
        match self {
            Stop::Failed(f) => f,
            Stop::KnockOn(m) => Failure::Message(m),
        }
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failed(f)
    }
}

impl From<String> for Stop {
    fn from(m: String) -> Self {
        Stop::Failed(Failure::Message(m))
    }
}

impl From<PeerError> for Stop {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::KnockOn(m) => Stop::KnockOn(m),
            PeerError::Failed(m) => m.into(),
        }
    }
}

impl Loop<'_> {
    /// Rows of a forward pass over every device.
    fn pass(&self) -> usize {
        self.rows * self.peers
    }

    /// The gradients of step `step` (its micro-batches accumulated) summed
    /// over the devices, its loss, and the seconds spent assembling its
    /// batches.
    fn gradients<B: TrainKernels>(
        &self,
        model: &Model<B>,
        sampler: &mut Sampler,
        step: u64,
        device: &B::Device,
        peer: Peer,
    ) -> Result<(GradientsParams, f64, f64), PeerError> {
        let (s, obj) = (self.s, self.obj);
        let mut acc = GradientsAccumulator::<Model<B>>::new();
        let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut data_time = 0.0;
        for m in 0..self.accum {
            let d0 = Instant::now();
            let first_row = (step * self.accum + m) * self.pass() as u64;
            let whole = batch::train_batch(self.train, sampler, first_row, self.pass(), obj, s.seed)
                .map_err(PeerError::Failed)?;
            let b = peer.share(&whole);
            data_time += d0.elapsed().as_secs_f64();
            // Dropout's masks are keyed by the rows' place in the run.
            let noise = Noise::new(s.seed, first_row + peer.first(self.pass()) as u64);
            // The backward in the same scope: its products are those of
            // the forward's precision too (fp32 exact or TF32; bf16's casts
            // are in the graph).
            let (value, grads) = scope(s.products(), || {
                let l =
                    share_of_loss(model, &b, Whole::of(&whole), obj, Some(noise), device).div_scalar(self.accum as f64);
                (l.clone().inner(), l.backward())
            });
            total = Some(match total.take() {
                Some(t) => t + value,
                None => value,
            });
            let grads = GradientsParams::from_grads(grads, model);
            acc.accumulate(model, grads);
        }
        let grads = parallel::sum_gradients::<B, _>(peer, model, acc.grads())?;
        let loss = match total {
            Some(t) => {
                let t = parallel::sum(peer, t)?;
                f64::from(burn::tensor::ElementConversion::elem::<f32>(t.into_scalar()))
            }
            None => f64::NAN,
        };
        Ok((grads, loss, data_time))
    }

    /// The validation loss after step `step`, when it is time for one
    /// (every device evaluates its share of the batches).
    fn evaluation<B: TrainKernels>(
        &self,
        model: &Model<B>,
        step: u64,
        device: &B::Device,
        peer: Peer,
    ) -> Result<Option<f64>, PeerError> {
        let s = self.s;
        if !(step.is_multiple_of(s.eval_every) || step == s.steps) {
            return Ok(None);
        }
        let model = model.valid();
        let (total, count) = scope(s.products(), || {
            super::evaluate(&model, self.valid, s.eval_batches as usize, self.pass(), self.obj, s.seed, device, peer)
        })
        .map_err(PeerError::Failed)?;
        let (total, count) = if peer.alone() {
            (total, count)
        } else {
            let both = Tensor::<B::InnerBackend, 1>::from_floats([total as f32, count as f32], device);
            let both = parallel::sum(peer, both)?
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| PeerError::Failed(format!("device {} could not read a loss: {e:?}", peer.index)))?;
            (f64::from(both[0]), f64::from(both[1]))
        };
        Ok(Some(super::mean_loss((total, count))))
    }

    /// Step `step` on `device`: the gradients of its batches summed over
    /// the devices, then the optimiser's update of `model`.
    fn step<B: TrainKernels>(
        &self,
        model: Model<B>,
        opt: &mut Optimizer<B::InnerBackend>,
        sampler: &mut Sampler,
        step: u64,
        device: &B::Device,
        peer: Peer,
    ) -> Result<Stepped<B>, Halt> {
        let s = self.s;
        let lr = optim::learning_rate(s.lr, step, s.steps, s.warmup, s.schedule());
        let (grads, loss, data) = self.gradients(&model, sampler, step, device, peer)?;
        if !loss.is_finite() {
            return Err(Halt::NonFinite("loss", loss));
        }
        let (model, grad_norm) = opt.step::<B, _>(model, lr, grads);
        if !grad_norm.is_finite() {
            return Err(Halt::NonFinite("gradient norm", grad_norm));
        }
        Ok(Stepped { model, loss, lr, grad_norm, data })
    }

    /// A checkpoint of the model and the optimiser at `state`: its path and
    /// step.
    fn save<B: TrainKernels>(
        &self,
        model: &Model<B>,
        opt: &Optimizer<B::InnerBackend>,
        state: State,
    ) -> Result<(std::path::PathBuf, u64), String> {
        let path = self.dir.checkpoint(&state, |d| {
            let mut sums = BTreeMap::new();
            sums.insert(checkpoint::WEIGHTS.to_string(), checkpoint::save(model, &d.join(checkpoint::WEIGHTS))?);
            sums.insert("optimizer.bin".to_string(), opt.save(&d.join("optimizer.bin"))?);
            Ok(sums)
        })?;
        Ok((path, state.step))
    }

    /// Trains from `start` on `devices`: on one, or with a copy of the
    /// model and optimiser on each of the others, following the first.
    pub(super) fn run<B: TrainKernels>(
        &self,
        start: Start<B>,
        logs: Logs,
        devices: &[B::Device],
    ) -> Result<Summary, Failure> {
        let [device, others @ ..] = devices else { return Err(Failure::Message("no device to train on".into())) };
        if others.is_empty() {
            return self.lead(start, logs, device, Vec::new()).map_err(Stop::failure);
        }
        let count = devices.len();
        // Copies made before any peer starts: a peer waits for every other
        // one to join, so nothing may fail between the first join and the
        // last.
        let copies: Vec<(Model<B>, Optimizer<B::InnerBackend>)> =
            others.iter().map(|d| (start.model.clone().fork(d), start.opt.to_device(d))).collect();
        let first = start.step;
        parallel::reset::<B::InnerBackend>();
        std::thread::scope(|scope| {
            let mut orders = Vec::new();
            let mut followers = Vec::new();
            for (i, ((model, opt), d)) in copies.into_iter().zip(others).enumerate() {
                let (tx, rx) = mpsc::channel();
                orders.push(tx);
                let peer = Peer { index: i + 1, count };
                followers.push(scope.spawn(move || {
                    let followed =
                        std::panic::catch_unwind(AssertUnwindSafe(|| self.follow(model, opt, first, d, peer, rx)));
                    let result = followed.unwrap_or_else(|p| {
                        Err(PeerError::Failed(format!("device {} failed: {}", peer.index, panicked(&p))))
                    });
                    if result.is_err() {
                        parallel::reset::<B::InnerBackend>();
                    }
                    result
                }));
            }
            // A panic here must not leave the followers waiting for this
            // device while the scope waits for them.
            let led = std::panic::catch_unwind(AssertUnwindSafe(|| self.lead(start, logs, device, orders)))
                .unwrap_or_else(|p| Err(format!("device 0 failed: {}", panicked(&p)).into()));
            // Any follower still waiting in a collective returns.
            parallel::reset::<B::InnerBackend>();
            let mut first_failure = None;
            for f in followers {
                if let Err(PeerError::Failed(e)) = f.join().unwrap_or_else(|p| Err(PeerError::Failed(panicked(&p)))) {
                    first_failure.get_or_insert(e);
                }
            }
            match (led, first_failure) {
                // The leader stopped because a follower failed: say why.
                (Ok(_) | Err(Stop::KnockOn(_)), Some(e)) => Err(Failure::Message(e)),
                (led, _) => led.map_err(Stop::failure),
            }
        })
    }

    /// A device other than the first: the steps the leader orders, on its
    /// copy, until it orders no more.
    fn follow<B: TrainKernels>(
        &self,
        mut model: Model<B>,
        mut opt: Optimizer<B::InnerBackend>,
        first: u64,
        device: &B::Device,
        peer: Peer,
        orders: mpsc::Receiver<u64>,
    ) -> Result<(), PeerError> {
        parallel::register::<B::InnerBackend>(peer, device)?;
        let mut sampler = Sampler::new(self.s.seed, self.train.windows());
        let mut expected = first;
        while let Ok(step) = orders.recv() {
            if step != expected {
                let e = format!("device {} was ordered step {} after step {expected}", peer.index, step + 1);
                return Err(PeerError::Failed(e));
            }
            model = match self.step(model, &mut opt, &mut sampler, step, device, peer) {
                Ok(taken) => taken.model,
                // The leader halts with the same values, and reports them.
                Err(Halt::NonFinite(..)) => return Ok(()),
                Err(Halt::Peer(e)) => return Err(e),
            };
            self.evaluation(&model, step + 1, device, peer)?;
            expected = step + 1;
        }
        Ok(())
    }

    /// The first device: trains its copy, orders the others' steps, logs
    /// and saves.
    fn lead<B: TrainKernels>(
        &self,
        start: Start<B>,
        mut logs: Logs,
        device: &B::Device,
        orders: Orders,
    ) -> Result<Summary, Stop> {
        let (s, dir) = (self.s, self.dir);
        let peer = Peer { index: 0, count: orders.len() + 1 };
        parallel::register::<B::InnerBackend>(peer, device)?;
        let Start {
            step: first, mut opt, mut model, tokens: mut tokens_seen, seconds: seconds_before, mut last, ..
        } = start;
        let mut sampler = Sampler::new(s.seed, self.train.windows());
        let bar = progress::Progress::new(first, s.steps, self.job.quiet);
        let run_start = Instant::now();
        let (mut last_loss, mut last_eval) = (f64::NAN, None);
        let (mut step_time, mut data_time, mut timed_tokens) = (0.0f64, 0.0f64, 0u64);
        let stop_at = self.job.stop_at.unwrap_or(u64::MAX);
        // Stopped before `steps` (by a signal, or by --stop-at).
        let (mut stopped, mut signal) = (false, None);
        let mut step = first;
        let state_at = |step, loss, eval_loss, tokens| State {
            step,
            loss,
            eval_loss,
            tokens,
            seconds: seconds_before + run_start.elapsed().as_secs_f64(),
            checksums: BTreeMap::new(),
        };
        signals::training();
        while step < s.steps {
            signal = signals::received();
            if signal.is_some() || step >= stop_at {
                stopped = true;
                break;
            }
            // A follower that has stopped has failed: its error is reported.
            if orders.iter().any(|o| o.send(step).is_err()) {
                bar.finish();
                return Err(Stop::KnockOn(format!("device 0 stopped at step {}: another device stopped", step + 1)));
            }
            let began = Instant::now();
            let taken = self.step(model, &mut opt, &mut sampler, step, device, peer);
            let Stepped { model: updated, loss: loss_value, lr, grad_norm, data } = match taken {
                Ok(taken) => taken,
                Err(halt) => {
                    bar.finish();
                    return Err(match halt {
                        Halt::NonFinite(what, value) => non_finite(step + 1, what, value, &last).into(),
                        Halt::Peer(e) => e.into(),
                    });
                }
            };
            model = updated;
            data_time += data;
            step += 1;
            let dt = began.elapsed().as_secs_f64();
            step_time += dt;
            let step_tokens = (s.batch as usize * self.context) as u64;
            tokens_seen += step_tokens;
            timed_tokens += step_tokens;
            last_loss = loss_value;
            let eval = self.evaluation(&model, step, device, peer)?;
            if eval.is_some() {
                last_eval = eval;
            }
            let log_now = step.is_multiple_of(s.log_every) || step == s.steps || eval.is_some() || step == 1;
            if log_now {
                let elapsed = seconds_before + run_start.elapsed().as_secs_f64();
                let line = metrics_line(
                    step,
                    loss_value,
                    lr,
                    grad_norm,
                    step_tokens as f64 / dt,
                    tokens_seen,
                    elapsed,
                    eval,
                    &model,
                );
                dir.log(&line)?;
                logs.append(&line)?;
            }
            bar.update(step, loss_value, lr, timed_tokens as f64 / step_time.max(1e-9), eval, log_now);
            if step.is_multiple_of(s.checkpoint_every) || step == s.steps {
                last = Some(self.save(&model, &opt, state_at(step, loss_value, last_eval, tokens_seen))?);
            }
        }
        drop(orders);
        bar.finish();
        if stopped && step > first && last.as_ref().map(|l| l.1) != Some(step) {
            last = Some(self.save(&model, &opt, state_at(step, last_loss, last_eval, tokens_seen))?);
        }
        Ok(Summary {
            steps: step,
            loss: last_loss,
            eval_loss: last_eval,
            tokens_per_s: timed_tokens as f64 / step_time.max(1e-9),
            data_share: data_time / step_time.max(1e-9),
            interrupted: stopped,
            signal,
            checkpoint: last.map(|l| l.0),
        })
    }
}

/// A panic's message.
fn panicked(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// One line of `metrics.jsonl`.
#[allow(clippy::too_many_arguments)]
fn metrics_line<B: TrainKernels>(
    step: u64,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
    tokens: u64,
    elapsed: f64,
    eval: Option<f64>,
    model: &Model<B>,
) -> serde_json::Value {
    let gains: BTreeMap<String, f64> =
        model.gains().into_iter().map(|(k, v)| (k, (f64::from(v) * 1e6).round() / 1e6)).collect();
    let mut line = json!({
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": (tokens_per_s * 10.0).round() / 10.0,
        "tokens": tokens,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
    });
    if let Some(e) = eval {
        line["eval_loss"] = json!(e);
    }
    if !gains.is_empty() {
        line["gains"] = json!(gains);
    }
    line
}

fn non_finite(step: u64, what: &str, value: f64, last: &Option<(PathBuf, u64)>) -> Failure {
    let kept = match last {
        Some((c, s)) => format!("the last good checkpoint (step {s}) is kept at {}", c.display()),
        None => "no checkpoint had been written yet".to_string(),
    };
    Failure::Message(format!(
        "the {what} became {value} at step {step}, so training stopped; {kept}. Lower the learning rate (lr), \
         raise warmup, turn on clipping, or check the block's gains"
    ))
}
