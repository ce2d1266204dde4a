//! How burn's CubeCL backends run an attention (softmax or shaped): by
//! rows, blkc's kernels that never write the T×T weights (fp32 multiply-
//! adds, one unit per row), or as products, the reference maths — `q · kᵀ`
//! and `p · v` as batched products in the precision of the scope (bf16 on
//! tensor cores), the softmax and the shaped mix one kernel each — which
//! keeps the weights for the backward (`[batch, heads, tokens, tokens]`
//! f32 per layer).
//!
//! By default (`auto`) a bf16 or tf32 scope — the precisions of tensor
//! cores — runs products up to [`PRODUCTS_UP_TO`] tokens, as
//! `torch.autocast` (or `allow_tf32`) runs the attention of a model
//! written with matrix products, and everything else by rows (fp32's
//! products would be cubek's unit matmuls, fp32 multiply-adds as the rows
//! are: `bench/gpu-check.sh` times that route too).
//! `BLKC_ATTENTION=rows|products|auto` (read by the command line) sets it
//! for a run, so that the two can be timed side by side
//! (`bench/gpu-check.sh`); [`Route::scope`] sets it for one thread (the
//! tests).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::kernels::precision::{self, Precision};

/// How an attention runs on the CubeCL backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// Products in bf16 or tf32 up to [`PRODUCTS_UP_TO`] tokens, rows
    /// otherwise.
    #[default]
    Auto,
    Rows,
    Products,
}

/// The longest sequence that `auto` runs as products (in bf16 or tf32): the weights
/// a layer keeps grow with its square (at 1024 tokens, 4 MiB per head and
/// sequence).
pub const PRODUCTS_UP_TO: usize = 1024;

static DEFAULT: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static THREAD: Cell<Option<Route>> = const { Cell::new(None) };
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Auto => "auto",
            Route::Rows => "rows",
            Route::Products => "products",
        }
    }

    /// `auto`, `rows` or `products`.
    pub fn parse(s: &str) -> Result<Route, String> {
        match s {
            "auto" => Ok(Route::Auto),
            "rows" => Ok(Route::Rows),
            "products" => Ok(Route::Products),
            _ => Err(format!("`{s}` is not an attention route: use auto, rows or products")),
        }
    }

    fn code(self) -> u8 {
        match self {
            Route::Auto => 0,
            Route::Rows => 1,
            Route::Products => 2,
        }
    }

    fn of(code: u8) -> Route {
        match code {
            1 => Route::Rows,
            2 => Route::Products,
            _ => Route::Auto,
        }
    }

    /// Sets the route of every thread that has not set its own.
    pub fn set_default(self) {
        DEFAULT.store(self.code(), Ordering::Relaxed);
    }

    /// Runs `f` with this thread's attentions on `self`'s route.
    pub fn scope<T>(self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Route>);
        impl Drop for Restore {
            fn drop(&mut self) {
                THREAD.with(|t| t.set(self.0));
            }
        }
        let _restore = Restore(THREAD.with(|t| t.replace(Some(self))));
        f()
    }

    /// The route of this thread now.
    pub fn current() -> Route {
        THREAD.with(Cell::get).unwrap_or_else(|| Route::of(DEFAULT.load(Ordering::Relaxed)))
    }
}

/// Whether an attention over `tokens` tokens runs as products here (on
/// the CubeCL backends; the CPU's kernels have one route).
#[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), allow(dead_code))]
pub(crate) fn as_products(tokens: usize) -> bool {
    products_in(precision::current(), tokens)
}

/// Whether this thread's route runs an attention over `tokens` tokens as
/// products with the products in `precision` (on the CubeCL backends).
pub fn products_in(precision: Precision, tokens: usize) -> bool {
    match Route::current() {
        Route::Products => true,
        Route::Rows => false,
        Route::Auto => precision != Precision::Fp32 && tokens <= PRODUCTS_UP_TO,
    }
}

#[cfg(test)]
mod tests {
    use super::{as_products, Route};
    use crate::kernels::precision::{scope, Precision};

    #[test]
    fn auto_runs_products_on_tensor_cores_up_to_the_limit() {
        assert!(!as_products(128), "fp32 runs by rows");
        assert!(scope(Precision::Bf16, || as_products(128) && !as_products(4096)));
        assert!(scope(Precision::Tf32, || as_products(1024) && !as_products(1025)));
        assert!(Route::Products.scope(|| as_products(4096)));
        assert!(!Route::Rows.scope(|| scope(Precision::Bf16, || as_products(128))));
        assert_eq!(Route::current(), Route::Auto, "the scope is put back");
        assert_eq!(Route::parse("rows"), Ok(Route::Rows));
        assert!(Route::parse("fast").is_err_and(|e| e.contains("auto, rows or products")));
    }
}
