//! Adam(W)'s loop over a chunk of a parameter.

use crate::kernels::cpu::raw::multiversion;

/// The constants of an Adam(W) update, in f32 (see `kernels::AdamStep`).
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    /// `lr / (1 − β₁ᵗ)`.
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// `1 − β₁`, `1 − β₂`, taken in f64 (in f32, `1 − 0.999` is 5·10⁻⁵ off).
    pub rest1: f32,
    pub rest2: f32,
    pub eps: f32,
    /// `1 / (1 − β₂ᵗ)`.
    pub inv_bc2: f32,
    pub grad_scale: f32,
    pub l2: f32,
    /// `1 − decay`.
    pub keep: f32,
}

multiversion! {
    /// One Adam(W) update of the parameters `p` and moments `m`, `v` from
    /// the gradient `g`, in place.
    pub fn adam(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: Adam) {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let g = g * k.grad_scale + k.l2 * *p;
            *m = k.beta1 * *m + k.rest1 * g;
            *v = k.beta2 * *v + k.rest2 * g * g;
            *p = *p * k.keep - k.lr * *m / ((*v * k.inv_bc2).sqrt() + k.eps);
        }
    }
}
