//! What the CPU kernels share: they run on burn's `flex` backend, for f32
//! (other dtypes take the family's reference maths), on rows of tensors
//! (`rows.rs`), with loops compiled per instruction set (`simd.rs`) and
//! products through `gemm` (`raw/`, the only `unsafe` code).
//!
//! Every CPU override has one shape: it checks that its operands suit the
//! kernel (f32, the shapes it handles) and otherwise returns the family's
//! reference maths on the same operands (`reference::op::<Flex>(…)`);
//! helpers that may not apply hand their operands back (`Err`/`None`) for
//! the caller to do so.
//!
//! Matrix products call `gemm` straight into an output that is allocated
//! and not zeroed: flex 0.21 allocates a product's output zeroed and then
//! copies it once more to realign it (`FlexTensor::empty`), which cost 19 %
//! of a step of the small model (perf: `memcpy`, `memset`, page clearing
//! under `matmul_gemm`).

pub mod raw;
pub mod rows;
pub mod simd;

pub use raw::product_time;

/// Element-wise kernels on fewer elements than this run on one thread.
pub const PARALLEL_ELEMENTS: usize = 1 << 16;

/// Whether a kernel over `elements` elements runs on several threads:
/// when there are several and the work is worth it.
pub fn parallel(elements: usize) -> bool {
    elements >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1
}
