//! Sliding-window attention (`window = N` in an attention section): a
//! query sees the `N` latest tokens, its own included (causal), or those
//! less than `N` positions away (bidirectional). Its softmax is masked to
//! them, and its `centre` term averages them. blkc's attention kernels
//! take the window (`kernels::Keys`); here is what they do not: the mask
//! of burn's attention (a soft-cap or ALiBi with a window, dropout on the
//! weights, decoding) and the `centre` term of a shaped matrix, built from
//! burn's operations, whose autodiff gives the gradient.

use blkc::graph::Mask;
use blkc::signal::attention::Seen;
use burn::tensor::{Bool, Tensor, TensorData};

use super::attention::Attention;
use crate::kernels::attention::reference;
use crate::kernels::{Kernels, Keys};

impl<B: Kernels> Attention<B> {
    /// The keys `0..t` that queries at positions `from..from + n` do not
    /// see for the window, `[n, t]`, true where hidden (the causal mask
    /// hides the later keys on its own); `None` without a window, or where
    /// it hides none.
    pub(crate) fn outside_window(
        &self,
        (from, n): (usize, usize),
        t: usize,
        causal: bool,
        device: &B::Device,
    ) -> Option<Tensor<B, 2, Bool>> {
        let window = self.plan.window?;
        let keys = Keys { causal, window: Some(window) };
        let make = || reference::outside_window::<B>((from, n), t, keys, device);
        // A forward pass's mask is the same at every layer and step: kept.
        match from {
            0 => self.plan.tables.kept::<B, _>(
                (if causal { "hidden-causal" } else { "hidden" }, t, window),
                device,
                make,
            ),
            _ => make(),
        }
    }

    /// The `centre` term of `v: [batch, t, inner]` at positions `from..t`
    /// (`from` 0 in a forward pass; the tokens being decoded after those
    /// kept): the average of the values each token sees.
    pub(crate) fn windowed_centre(&self, v: Tensor<B, 3>, from: usize, causal: bool) -> Tensor<B, 3> {
        let [b, t, _] = v.dims();
        let n = t - from;
        let w = self.plan.window.unwrap_or(t).max(1);
        let device = v.device();
        let make = || {
            let rows = averages((from, n), t, w, causal);
            Tensor::<B, 2>::from_data(TensorData::new(rows, [n, t]), &device)
        };
        // A forward pass's matrix is the same at every layer and step:
        // kept. A decoded token's row is made for it.
        let c = match from {
            0 => self.plan.tables.kept::<B, _>((if causal { "window-causal" } else { "window" }, t, w), &device, make),
            _ => make(),
        };
        c.unsqueeze::<3>().expand([b, n, t]).matmul(v)
    }
}

/// Rows `from..from + n` of the `[t, t]` matrix that averages what each
/// query sees through a window of `w` (the keys the signal check's
/// [`Seen`] gives it), row-major.
fn averages((from, n): (usize, usize), t: usize, w: usize, causal: bool) -> Vec<f32> {
    let mask = if causal { Mask::Causal } else { Mask::Bidirectional };
    let seen = Seen { mask, window: Some(w) };
    let mut out = vec![0.0; n * t];
    for (i, row) in out.chunks_mut(t).enumerate() {
        let keys = seen.keys(from + i, t);
        let share = 1.0 / keys.clone().count() as f32;
        row[keys].fill(share);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::averages;

    #[test]
    fn each_row_averages_what_its_query_sees() {
        // t = 5, window 2, causal: itself and the one before.
        let c = averages((0, 5), 5, 2, true);
        assert_eq!(&c[..5], [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&c[15..20], [0.0, 0.0, 0.5, 0.5, 0.0]);
        // Bidirectional: one either side.
        let c = averages((0, 5), 5, 2, false);
        assert_eq!(&c[..5], [0.5, 0.5, 0.0, 0.0, 0.0]);
        let third = 1.0 / 3.0;
        assert_eq!(&c[10..15], [0.0, third, third, third, 0.0]);
        // Rows of a decoded token: the last of the same matrix.
        assert_eq!(averages((4, 1), 5, 3, true), averages((0, 5), 5, 3, true)[20..]);
        // A window past the context: no window.
        let all = averages((0, 4), 4, 9, true);
        assert_eq!(&all[12..], [0.25; 4]);
    }
}
