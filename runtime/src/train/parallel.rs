//! Data-parallel training (`devices = N`, `--devices N`): one copy of the
//! model per device, each device a peer that takes an equal share of the
//! rows of every forward pass; after the backward, burn's collective
//! all-reduce sums the peers' gradients (and their parts of the loss), so
//! that every copy takes the same optimiser step from the gradient of the
//! whole batch and the copies stay equal.
//!
//! A peer's part of the loss is its rows' loss weighted by their share of
//! the whole batch ([`super::share_of_loss`]); the parts, and their
//! gradients, sum to the loss and the gradient of the whole: a run on N
//! devices trains on the same batches as a run on one, and its losses and
//! weights differ from that run's by rounding only (the sums are ordered
//! differently). So the number of devices can change when a run resumes.
//!
//! The peers are threads of one process, one per device (burn's collective
//! "local" level). The first peer leads: it decides when to stop, writes
//! the metrics and the checkpoints; the others follow its steps. A peer
//! that fails resets the collective, so that no other one waits for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use burn::collective::{self, CollectiveConfig, CollectiveError, PeerId, ReduceOperation};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use super::batch::Batch;

/// One of the devices a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub index: usize,
    pub count: usize,
}

impl Peer {
    /// The only device of a run on one.
    pub const ALONE: Peer = Peer { index: 0, count: 1 };

    pub fn alone(self) -> bool {
        self.count <= 1
    }

    /// Whether this peer leads the others (decides, logs, saves).
    pub fn leads(self) -> bool {
        self.index == 0
    }

    fn id(self) -> PeerId {
        PeerId::from(self.index as u32)
    }

    /// The first of this peer's rows in a pass of `rows` rows.
    pub fn first(self, rows: usize) -> usize {
        rows / self.count.max(1) * self.index
    }

    /// This peer's rows of `whole`: the `index`-th of `count` equal shares.
    pub fn share(self, whole: &Batch) -> Cow<'_, Batch> {
        if self.alone() {
            return Cow::Borrowed(whole);
        }
        let per = whole.rows / self.count;
        Cow::Owned(whole.rows(self.first(whole.rows)..self.first(whole.rows) + per))
    }
}

/// Why a peer stopped before the leader told it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// Another peer stopped first: its error, not this one, is the one to
    /// report.
    KnockOn(String),
    /// This peer failed.
    Failed(String),
}

impl PeerError {
    pub fn is_knock_on(&self) -> bool {
        matches!(self, PeerError::KnockOn(_))
    }

    pub fn message(self) -> String {
        match self {
            PeerError::KnockOn(m) | PeerError::Failed(m) => m,
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::KnockOn(m) | PeerError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for PeerError {
    fn from(m: String) -> Self {
        PeerError::Failed(m)
    }
}

/// Joins this peer to the run's collective; returns once every peer has.
pub fn register<B: Backend>(peer: Peer, device: &B::Device) -> Result<(), PeerError> {
    if peer.alone() {
        return Ok(());
    }
    let config = CollectiveConfig::default().with_num_devices(peer.count);
    collective::register::<B>(peer.id(), device.clone(), config).map_err(|e| failed(peer, "join the others", &e))
}

/// The sum of `t` over the peers (`t` itself on one device).
pub fn sum<B: Backend, const D: usize>(peer: Peer, t: Tensor<B, D>) -> Result<Tensor<B, D>, PeerError> {
    if peer.alone() {
        return Ok(t);
    }
    let summed = collective::all_reduce::<B>(peer.id(), t.into_primitive().tensor(), ReduceOperation::Sum)
        .map_err(|e| failed(peer, "sum a loss", &e))?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
}

/// Values summed in one all-reduce (128 MiB of f32): a model's gradients
/// go in a few buckets, not one all-reduce per parameter.
pub const BUCKET: usize = 1 << 25;

/// The sum of `model`'s gradients `grads` over the peers: flattened in the
/// model's order into buckets of up to [`BUCKET`] values, one all-reduce
/// each (the same buckets on every peer).
pub fn sum_gradients<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    peer: Peer,
    model: &M,
    grads: GradientsParams,
) -> Result<GradientsParams, PeerError> {
    sum_in_buckets::<AB, M>(peer, model, grads, BUCKET)
}

/// [`sum_gradients`] with buckets of up to `bucket` values.
fn sum_in_buckets<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    peer: Peer,
    model: &M,
    mut grads: GradientsParams,
    bucket: usize,
) -> Result<GradientsParams, PeerError> {
    if peer.alone() {
        return Ok(grads);
    }
    let mut take = Take::<AB> { grads: &mut grads, flat: Vec::new() };
    model.visit(&mut take);
    let flat = take.flat;
    // Anything not a parameter of the model (nothing, from `from_grads`)
    // is summed one tensor at a time.
    let mut grads = if grads.is_empty() {
        grads
    } else {
        grads
            .all_reduce::<AB::InnerBackend>(peer.id(), ReduceOperation::Sum)
            .map_err(|e| failed(peer, "sum the gradients", &e))?
    };
    let mut summed = HashMap::new();
    let mut start = 0;
    while start < flat.len() {
        let (mut end, mut size) = (start, 0);
        while end < flat.len() && (end == start || size + flat[end].2.dims()[0] <= bucket) {
            size += flat[end].2.dims()[0];
            end += 1;
        }
        let parts: Vec<Tensor<AB::InnerBackend, 1>> = flat[start..end].iter().map(|f| f.2.clone()).collect();
        let total = sum(peer, Tensor::cat(parts, 0))?;
        let mut at = 0;
        for (id, dims, g) in &flat[start..end] {
            let n = g.dims()[0];
            summed.insert(*id, (total.clone().narrow(0, at, n), dims.clone()));
            at += n;
        }
        start = end;
    }
    model.visit(&mut Put::<AB> { grads: &mut grads, summed });
    Ok(grads)
}

/// Takes the model's gradients out, flattened, in the model's order.
struct Take<'a, AB: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Vec<(ParamId, Vec<usize>, Tensor<AB::InnerBackend, 1>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Take<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) else { return };
        let dims = g.dims();
        self.flat.push((param.id, dims.to_vec(), g.reshape([dims.iter().product::<usize>()])));
    }
}

/// Puts the summed gradients back, in their parameters' shapes.
struct Put<'a, AB: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    summed: HashMap<ParamId, (Tensor<AB::InnerBackend, 1>, Vec<usize>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Put<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some((flat, dims)) = self.summed.remove(&param.id) else { return };
        let Ok(dims) = <[usize; D]>::try_from(dims) else { return };
        self.grads.register::<AB::InnerBackend, D>(param.id, flat.reshape(dims));
    }
}

/// Ends the collective of `B`: every peer still waiting in one of its
/// operations gets an error instead of waiting on.
pub fn reset<B: Backend>() {
    collective::reset_collective::<B>();
}

fn failed(peer: Peer, what: &str, e: &CollectiveError) -> PeerError {
    match e {
        // The collective was reset: another peer stopped.
        CollectiveError::LocalServerMissing | CollectiveError::RegisterNotFirstOperation => {
            PeerError::KnockOn(format!("device {} could not {what}: another device stopped", peer.index))
        }
        e => PeerError::Failed(format!("device {} could not {what} with the other devices: {e:?}", peer.index)),
    }
}

/// Why `devices` copies cannot train at once in a build with burn's
/// operation fusion: measured on wgpu (`runtime/tests/device.rs`), two
/// copies' losses part from one copy's at the second step, with or
/// without blkc's kernels and with the sums on the host (bench/NOTES.md).
/// The command line refuses before anything is written; the library's
/// `train` refuses too.
pub fn not_under_fusion(devices: u64) -> String {
    format!(
        "cannot train on {devices} devices under burn's operation fusion (this blkc was built with the feature \
         `fusion`), under which copies training at once compute wrongly in burn 0.21; turn it off for this run \
         with BLKC_FUSION=off, or train on one device"
    )
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[derive(burn::module::Module, Debug)]
    struct Pair<B: Backend> {
        a: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
    }

    fn floats(t: Tensor<Cpu, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap_or_default()
    }

    /// Three peers (threads) sum their tensors; two sum gradients in
    /// buckets; then, a peer left waiting in a sum that another never
    /// joins is freed by a reset, with an error that says another device
    /// stopped (no hang). That comes last: a sum the waiting peer sends
    /// after the reset (a loaded machine) would reach the next phase's
    /// collective.
    #[test]
    fn peers_sum_and_a_stopped_peer_stops_the_others() {
        let device = burn::tensor::Device::<Cpu>::default();
        reset::<Cpu>();
        let sums: Vec<Result<Vec<f32>, PeerError>> = std::thread::scope(|s| {
            let peers: Vec<_> = (0..3)
                .map(|index| {
                    s.spawn(move || {
                        let peer = Peer { index, count: 3 };
                        register::<Cpu>(peer, &device)?;
                        let t = Tensor::<Cpu, 1>::from_floats([index as f32, 1.0], &device);
                        sum(peer, t).map(floats)
                    })
                })
                .collect();
            peers.into_iter().map(|p| p.join().unwrap_or_else(|_| Err("panicked".to_string().into()))).collect()
        });
        assert_eq!(sums, vec![Ok(vec![3.0, 3.0]); 3]);

        // Gradients summed in buckets (of up to 4 values here, each holding
        // one parameter at least: the 2×3 alone, then the 4-vector) equal
        // burn's sums one parameter at a time, bit for bit, and the exact
        // sums.
        reset::<Cpu>();
        type Ad = burn::backend::Autodiff<Cpu>;
        let model = Pair::<Ad> {
            a: Param::from_tensor(Tensor::from_floats([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &device)),
            b: Param::from_tensor(Tensor::from_floats([1.0, -1.0, 2.0, 0.5], &device)),
        };
        let grads = |m: &Pair<Ad>, k: f32| {
            let loss = m.a.val().mul_scalar(k + 1.0).sum() + (m.b.val() * m.b.val()).mul_scalar(k + 2.0).sum();
            GradientsParams::from_grads(loss.backward(), m)
        };
        let results: Vec<Result<[Vec<f32>; 4], PeerError>> = std::thread::scope(|s| {
            let peers: Vec<_> = (0..2)
                .map(|index| {
                    let m = model.clone();
                    s.spawn(move || {
                        let peer = Peer { index, count: 2 };
                        register::<Cpu>(peer, &device)?;
                        let bucketed = sum_in_buckets::<Ad, _>(peer, &m, grads(&m, index as f32), 4)?;
                        let each = grads(&m, index as f32)
                            .all_reduce::<Cpu>(peer.id(), ReduceOperation::Sum)
                            .map_err(|e| PeerError::Failed(format!("{e:?}")))?;
                        let flat2 = |g: &GradientsParams| {
                            floats(g.get::<Cpu, 2>(m.a.id).map_or(Tensor::zeros([1], &device), |t| t.reshape([6])))
                        };
                        let flat1 = |g: &GradientsParams| {
                            floats(g.get::<Cpu, 1>(m.b.id).unwrap_or(Tensor::zeros([1], &device)))
                        };
                        Ok([flat2(&bucketed), flat1(&bucketed), flat2(&each), flat1(&each)])
                    })
                })
                .collect();
            peers.into_iter().map(|p| p.join().unwrap_or_else(|_| Err("panicked".to_string().into()))).collect()
        });
        for r in results {
            let [a, b, a_each, b_each] = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((&a, &b), (&a_each, &b_each));
            assert_eq!(a, vec![3.0; 6]);
            assert_eq!(b, vec![10.0, -10.0, 20.0, 5.0]);
        }
        reset::<Cpu>();
        let waited = std::thread::scope(|s| {
            let waiting = s.spawn(move || {
                let peer = Peer { index: 1, count: 2 };
                register::<Cpu>(peer, &device)?;
                sum(peer, Tensor::<Cpu, 1>::from_floats([1.0], &device)).map(floats)
            });
            register::<Cpu>(Peer { index: 0, count: 2 }, &device).unwrap_or_else(|e| panic!("{e}"));
            // The other peer is (or is about to be) waiting for this one.
            std::thread::sleep(std::time::Duration::from_millis(200));
            reset::<Cpu>();
            waiting.join().unwrap_or_else(|_| Err("panicked".to_string().into()))
        });
        let e = waited.err().unwrap_or_else(|| PeerError::Failed("the sum returned".into()));
        assert!(e.is_knock_on(), "{e}");
        assert!(e.to_string().ends_with("another device stopped"), "{e}");
    }

    #[test]
    fn shares_are_equal_and_in_order() {
        let b = Batch {
            rows: 6,
            context: 2,
            inputs: (0..12).collect(),
            targets: (1..13).collect(),
            weights: vec![1.0; 12],
        };
        let alone = Peer::ALONE.share(&b);
        assert!(matches!(alone, Cow::Borrowed(_)));
        let parts: Vec<Batch> = (0..3).map(|index| Peer { index, count: 3 }.share(&b).into_owned()).collect();
        assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), [2, 2, 2]);
        assert_eq!(parts.iter().flat_map(|p| p.inputs.clone()).collect::<Vec<_>>(), b.inputs);
        assert_eq!(Peer { index: 2, count: 3 }.first(6), 4);
    }
}
