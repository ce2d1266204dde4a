//! The burn backends blkc runs on, chosen at build time by feature:
//! `flex` (the CPU default), `ndarray` (CPU) and `cuda`.

/// The CPU backend of this build: burn's `flex` unless only `ndarray` is
/// enabled.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// The CPU backend of this build: burn's `flex` unless only `ndarray` is
/// enabled.
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type Cpu = burn::backend::NdArray;

/// The CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// The name of the CPU backend compiled in.
pub fn cpu_name() -> &'static str {
    if cfg!(feature = "flex") {
        "flex"
    } else if cfg!(feature = "ndarray") {
        "ndarray"
    } else {
        "none"
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use burn::tensor::Tensor;

    use super::Cpu;

    #[test]
    fn cpu_backend_computes() {
        let device = Default::default();
        let a = Tensor::<Cpu, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let b = a.clone().matmul(a);
        let v: Vec<f32> = b.into_data().to_vec().unwrap_or_default();
        assert_eq!(v, vec![7.0, 10.0, 15.0, 22.0]);
    }
}
