//! Tables of positions (the cosines and sines of rotary angles, sinusoidal
//! embeddings, ALiBi's bias), made on the host once per backend and device
//! for every position asked so far, and kept there. A forward takes rows of them on
//! the device; before, it made its table on the host and uploaded it, per
//! layer and step (on a GPU, a copy from the host the queue waits for).
//! A row depends only on its position, so rows of the kept table are the
//! table made for those positions, bit for bit.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::tensor::backend::{Backend, DeviceId, DeviceOps};
use burn::tensor::Tensor;

/// Values made once per backend, device and key `K`, and kept: shared by
/// clones. The tables of positions and a plan's constant gains
/// (`scalar::Constants`) are each one.
pub struct Kept<K>(Arc<Mutex<Held<K>>>);

/// Kept values by backend, device and key, each of the type its user asks
/// for.
type Held<K> = HashMap<(TypeId, DeviceId, K), Box<dyn Any + Send>>;

impl<K> Clone for Kept<K> {
    fn clone(&self) -> Self {
        Kept(self.0.clone())
    }
}

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Kept(Default::default())
    }
}

impl<K> std::fmt::Debug for Kept<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "Kept({n} held)")
    }
}

impl<K: std::hash::Hash + Eq> Kept<K> {
    /// The value kept for `key` on `device` where `fits` takes it, else
    /// the one `make` makes, kept in its place.
    pub fn held<B: Backend, T: Clone + Send + 'static>(
        &self,
        key: K,
        device: &B::Device,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> T {
        let key = (TypeId::of::<B>(), device.id(), key);
        let Ok(mut held) = self.0.lock() else { return make() };
        if let Some(t) = held.get(&key).and_then(|t| t.downcast_ref::<T>()).filter(|t| fits(t)) {
            return t.clone();
        }
        let t = make();
        held.insert(key, Box::new(t.clone()));
        t
    }
}

/// The kept tables, by backend, device and [`Kind`], each as long as
/// the furthest position asked, rounded up to a power of two. Shared by
/// clones (every layer of a model holds the same).
#[derive(Debug, Clone, Default)]
pub struct Tables(Kept<Kind>);

/// A kind of table: its name and the numbers that set it (its columns; a
/// window's length and reach; a rotary base's bits).
pub type Kind = (&'static str, usize, usize);

impl Tables {
    /// The table of kind `kind` that `make` makes, made once per backend
    /// and device (a table whose rows are not positions alone: ALiBi's
    /// bias of a whole window, by its length).
    pub fn kept<B: Backend, T: Clone + Send + 'static>(
        &self,
        kind: Kind,
        device: &B::Device,
        make: impl FnOnce() -> T,
    ) -> T {
        self.0.held::<B, T>(kind, device, |_| true, make)
    }

    /// Rows `positions` of the `K` tables of kind `kind` that `make` fills
    /// for positions `0..n` (each `[n, columns]`, a row per position).
    pub fn rows<B: Backend, const K: usize>(
        &self,
        kind: Kind,
        positions: Range<usize>,
        device: &B::Device,
        make: impl Fn(usize) -> [Tensor<B, 2>; K],
    ) -> [Tensor<B, 2>; K] {
        let end = positions.end;
        let long_enough = |t: &[Tensor<B, 2>; K]| t.first().is_none_or(|t| t.dims()[0] >= end);
        let tables = self.0.held::<B, _>(kind, device, long_enough, || make(end.next_power_of_two()));
        tables.map(|t| t.slice(positions.clone()))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = crate::backend::Cpu;

    /// `[n, 2]`: position and its square, counting the tables made.
    fn table(n: usize, made: &std::cell::Cell<usize>) -> [Tensor<B, 2>; 1] {
        made.set(made.get() + 1);
        let data: Vec<f32> = (0..n).flat_map(|p| [p as f32, (p * p) as f32]).collect();
        [Tensor::from_data(TensorData::new(data, [n, 2]), &Default::default())]
    }

    #[test]
    fn rows_are_those_of_a_table_made_for_them_and_made_once() {
        let (tables, made) = (Tables::default(), std::cell::Cell::new(0));
        let device = Default::default();
        for (range, made_by_then) in [(0..5, 1), (3..8, 1), (2..9, 2), (0..16, 2), (15..16, 2), (16..17, 3)] {
            let [got] = tables.rows::<B, 1>(("squares", 2, 0), range.clone(), &device, |n| table(n, &made));
            let want: Vec<f32> = range.clone().flat_map(|p| [p as f32, (p * p) as f32]).collect();
            assert_eq!(got.into_data().to_vec::<f32>().unwrap_or_default(), want, "{range:?}");
            assert_eq!(made.get(), made_by_then, "{range:?}: made again only to grow");
        }
        // Another kind has its own table.
        tables.rows::<B, 1>(("squares", 3, 0), 0..1, &device, |n| table(n, &made));
        assert_eq!(made.get(), 4);
        // A kept table is made once.
        for _ in 0..2 {
            let [t] = tables.kept::<B, _>(("squares", 4, 0), &device, || table(3, &made));
            assert_eq!(t.dims(), [3, 2]);
        }
        assert_eq!(made.get(), 5);
    }
}
