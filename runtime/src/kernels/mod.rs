//! Kernels: the operations of a training step that burn's generic tensor
//! API makes slow, by op family, after burn's own design (its `Backend` is
//! made of op-family traits).
//!
//! Each family is one folder with the same files: `mod.rs`, the family's
//! trait, whose default methods are its reference maths (`reference.rs`,
//! from burn's primitive ops: what a backend without its own kernels runs,
//! and what the CPU kernels fall back to for other dtypes), and the
//! functions on `Tensor`s that the layers call; `autodiff.rs`, the
//! family's graph nodes on `Autodiff<B>`, whose backward calls `B`'s
//! kernels; `cpu.rs` (and `loops.rs`), the fused kernels on burn's `flex`
//! CPU backend; `tests.rs`, every kernel against burn's own ops and the
//! CPU's against the reference. A GPU implementation is one more file
//! beside them. [`Kernels`] is every family at once; what the families
//! share is in `tensor.rs` (views), `graph.rs` (autodiff plumbing) and
//! `cpu/` (rows, shared loops, and `cpu/raw/`, the only `unsafe` code).
//!
//! | family | the layers call | spec | autodiff | CPU | GPU | tests |
//! |---|---|---|---|---|---|---|
//! | `dense` | `linear`, `relu_mlp`, `gated`, `linear_transposed`, `matmul` | `dense/reference.rs` | `dense/autodiff.rs` | `dense/cpu.rs` | `dense/cube.rs` | `dense/tests.rs` |
//! | `attention` | `attention` | `attention/reference.rs` | `attention/autodiff.rs` | `attention/cpu.rs` | `attention/cube.rs` | `attention/tests.rs` |
//! | `shaped` | `shaped_attention`, `mix`, `centre` | `shaped/reference.rs` | `shaped/autodiff.rs` | `shaped/cpu.rs` | `shaped/cube/` | `shaped/tests.rs` |
//! | `gains` | `scaled_sum`, `scale_groups` | `gains/reference.rs` | `gains/autodiff.rs` | `gains/cpu.rs` | `gains/cube.rs` | `gains/tests.rs` |
//! | `norm` | `normalise` | `norm/reference.rs` | `norm/autodiff.rs` | `norm/cpu.rs` | `norm/cube.rs` | `norm/tests.rs` |
//! | `loss` | `nll_mean`, `nll`, `total` | `loss/reference.rs` | `loss/autodiff.rs` | `loss/cpu.rs` | `loss/cube.rs` | `loss/tests.rs` |
//! | `embed` | `embed` | `embed/reference.rs` | `embed/autodiff.rs` | `embed/cpu.rs` | `embed/cube.rs` | `embed/tests.rs` |
//! | `rope` | `rope` | `rope/reference.rs` | `rope/autodiff.rs` | `rope/cpu.rs` | `rope/cube.rs` | `rope/tests.rs` |
//! | `adam` | `Kernels::adam` (the optimiser) | `adam/reference.rs` | — | `adam/cpu.rs` | `adam/cube.rs` | `adam/tests.rs` |
//!
//! The GPU column is burn's CubeCL backends (CUDA, wgpu) without operation
//! fusion (`cube.rs`): a family's CubeCL kernels. An attention there runs
//! by rows or as products (`attention/route.rs`). With fusion (feature `fusion`) the same kernels run as
//! custom operations of burn's fusion streams (each family's `fused.rs`,
//! and `fused.rs` here); the gained sums stay reference there, which
//! fusion joins to the element-wise work around them.
//! `the_family_table_is_true` keeps this table in step with the folders.

pub mod adam;
pub mod attention;
#[cfg(feature = "flex")]
pub mod cpu;
pub mod dense;
pub mod embed;
pub mod gains;
mod graph;
pub mod loss;
pub mod memory;
pub mod norm;
pub mod precision;
pub mod rope;
pub mod shaped;
pub mod tensor;
#[cfg(all(test, feature = "flex"))]
mod testing;

pub use adam::{AdamOps, AdamStep};
pub use attention::{alibi_bias, attention, AttentionOps, Keys, Scores};
#[cfg(feature = "flex")]
pub use cpu::product_time;
pub use dense::{linear, linear_transposed, matmul, relu_mlp, DenseOps, Projection, ReluMask};
pub use embed::{embed, EmbedOps};
pub use gains::{scale_groups, scaled_sum, GainOps};
pub use loss::{nll, nll_mean, softcap, total, LossOps};
pub use memory::{DeviceBytes, DeviceMemory};
pub use norm::{normalise, NormOps};
pub use rope::{rope, RopeOps};
pub use shaped::{centre, mix, shaped_attention, MixAddend, Shaped, ShapedGrads, ShapedOps};

use burn::tensor::backend::AutodiffBackend;

/// A backend with every family of kernels.
pub trait Kernels:
    DenseOps + AttentionOps + ShapedOps + GainOps + NormOps + LossOps + EmbedOps + RopeOps + AdamOps + DeviceMemory
{
}

impl<
        B: DenseOps + AttentionOps + ShapedOps + GainOps + NormOps + LossOps + EmbedOps + RopeOps + AdamOps + DeviceMemory,
    > Kernels for B
{
}

/// An autodiff backend whose inner backend has the kernels too (what
/// training needs: the model runs on both).
pub trait TrainKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainKernels for B {}

impl<B: Kernels, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> AdamOps
    for burn::backend::Autodiff<B, C>
{
}

/// A backend that runs every family's reference maths.
#[allow(unused_macros)]
macro_rules! reference_backend {
    ($B:ty) => {
        impl DenseOps for $B {}
        impl AttentionOps for $B {}
        impl ShapedOps for $B {}
        impl GainOps for $B {}
        impl NormOps for $B {}
        impl LossOps for $B {}
        impl EmbedOps for $B {}
        impl RopeOps for $B {}
        impl AdamOps for $B {}
    };
}

#[cfg(feature = "ndarray")]
reference_backend!(burn::backend::NdArray);

// burn's CubeCL backends: the CubeCL kernels where a family has them
// (`cube.rs`).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod cube;

// With fusion, the same kernels as custom operations of its streams
// (`fused.rs`, and each family's `fused.rs`).
#[cfg(all(feature = "fusion", any(feature = "cuda", feature = "wgpu")))]
mod fused;

#[cfg(test)]
mod tests {
    /// Every row of the family table names files that exist and functions
    /// that its folder defines, and every family folder has a row.
    #[test]
    fn the_family_table_is_true() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
        let doc = std::fs::read_to_string(dir.join("mod.rs")).expect("kernels/mod.rs");
        let rows: Vec<Vec<String>> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .map(|l| l.split(" | ").map(|c| c.trim_matches(|c| c == '`' || c == ' ' || c == '|').to_string()).collect())
            .collect();
        let mut families = Vec::new();
        for row in &rows {
            let family = &row[0];
            families.push(family.clone());
            let source = std::fs::read_to_string(dir.join(family).join("mod.rs")).expect("the family's mod.rs");
            for call in row[1].split(", ").filter(|c| !c.contains("::")) {
                let call = call.trim_matches('`');
                assert!(source.contains(&format!("pub fn {call}<")), "{family}/mod.rs defines `{call}`");
            }
            for file in row[2..].iter().filter(|f| f.ends_with(".rs")) {
                assert!(dir.join(file).is_file(), "{file} exists");
                assert!(file.starts_with(&format!("{family}/")), "{file} is in {family}/");
            }
        }
        let shared = ["cpu"];
        for entry in std::fs::read_dir(&dir).expect("kernels/") {
            let entry = entry.expect("an entry");
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_dir() && !shared.contains(&name.as_str()) {
                assert!(families.contains(&name), "the table has a row for {name}/");
            }
        }
        assert_eq!(families.len(), 9);
    }

    /// `unsafe` code is in `kernels/cpu/raw/` and the allocator's file
    /// only (the workspace denies it elsewhere; this names where).
    #[test]
    fn the_unsafe_folder_is_the_only_one() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // Spelt apart so that this test does not find itself.
        let word = ["un", "safe"].concat();
        let marks = [format!("{word} {{"), format!("{word} fn"), format!("{word} impl"), format!("{word}_code")];
        let mut found = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source folder").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let code = text
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .any(|l| marks.iter().any(|m| l.contains(m)));
                let rel = path.strip_prefix(&src).unwrap_or(&path).to_string_lossy().to_string();
                if code && !rel.starts_with("kernels/cpu/raw/") && rel != "alloc.rs" {
                    found.push(rel);
                }
            }
        }
        assert!(found.is_empty(), "unsafe code outside kernels/cpu/raw/: {found:?}");
    }
}
