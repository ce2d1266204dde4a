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

use burn::collective::{self, CollectiveConfig, CollectiveError, PeerId, ReduceOperation};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
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

/// Joins this peer to the run's collective; returns once every peer has.
pub fn register<B: Backend>(peer: Peer, device: &B::Device) -> Result<(), String> {
    if peer.alone() {
        return Ok(());
    }
    let config = CollectiveConfig::default().with_num_devices(peer.count);
    collective::register::<B>(peer.id(), device.clone(), config).map_err(|e| failed(peer, "join the others", &e))
}

/// The sum of `t` over the peers (`t` itself on one device).
pub fn sum<B: Backend, const D: usize>(peer: Peer, t: Tensor<B, D>) -> Result<Tensor<B, D>, String> {
    if peer.alone() {
        return Ok(t);
    }
    let summed = collective::all_reduce::<B>(peer.id(), t.into_primitive().tensor(), ReduceOperation::Sum)
        .map_err(|e| failed(peer, "sum a loss", &e))?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
}

/// The sum of `grads` over the peers (every parameter's, in the same order
/// on every peer).
pub fn sum_gradients<B: Backend>(peer: Peer, grads: GradientsParams) -> Result<GradientsParams, String> {
    if peer.alone() {
        return Ok(grads);
    }
    grads.all_reduce::<B>(peer.id(), ReduceOperation::Sum).map_err(|e| failed(peer, "sum the gradients", &e))
}

/// Ends the collective of `B`: every peer still waiting in one of its
/// operations gets an error instead of waiting on.
pub fn reset<B: Backend>() {
    collective::reset_collective::<B>();
}

fn failed(peer: Peer, what: &str, e: &CollectiveError) -> String {
    match e {
        // Another peer stopped (its error is the one to report).
        CollectiveError::LocalServerMissing | CollectiveError::RegisterNotFirstOperation => {
            format!("device {} could not {what}: another device stopped", peer.index)
        }
        e => format!("device {} could not {what} with the other devices: {e:?}", peer.index),
    }
}

/// Whether `message` says only that another peer stopped first.
pub fn is_knock_on(message: &str) -> bool {
    message.ends_with("another device stopped")
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    fn floats(t: Tensor<Cpu, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap_or_default()
    }

    /// Three peers (threads) sum their tensors; then, a peer left waiting
    /// in a sum that another never joins is freed by a reset, with an
    /// error that says another device stopped (no hang).
    #[test]
    fn peers_sum_and_a_stopped_peer_stops_the_others() {
        let device = burn::tensor::Device::<Cpu>::default();
        reset::<Cpu>();
        let sums: Vec<Result<Vec<f32>, String>> = std::thread::scope(|s| {
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
            peers.into_iter().map(|p| p.join().unwrap_or_else(|_| Err("panicked".into()))).collect()
        });
        assert_eq!(sums, vec![Ok(vec![3.0, 3.0]); 3]);

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
            waiting.join().unwrap_or_else(|_| Err("panicked".into()))
        });
        let e = waited.err().unwrap_or_default();
        assert!(is_knock_on(&e), "{e}");
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
