//! Sliding-window attention (`window = N` in an attention section): a
//! query sees the `N` latest tokens, its own included (causal), or those
//! less than `N` positions away (bidirectional). Its softmax is masked to
//! them, and its `centre` term averages them. blkc's kernels take the
//! window (`kernels::Keys`: the attention family's softmax, the shaped
//! family's mix and `centre`); here is the mask of the composed weights,
//! for what they do not take (dropout on the weights, decoding).

use burn::tensor::{Bool, Tensor};

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
}
