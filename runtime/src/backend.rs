//! The burn backends blkc runs on, chosen at build time by feature:
//! `flex` (the CPU default), `ndarray` (CPU), `cuda` and `wgpu` (Vulkan,
//! Metal or DX12).

/// The CPU backend of this build: burn's `flex` unless only `ndarray` is
/// enabled.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// The CPU backend of this build: burn's `flex` unless only `ndarray` is
/// enabled.
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type Cpu = burn::backend::NdArray;

/// The CUDA backend (feature `cuda`): burn's operation fusion over
/// [`CudaUnfused`] in a build with the `fusion` feature.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// burn's CUDA backend without operation fusion, where blkc's CubeCL
/// kernels run as they are (`Cuda` itself without the `fusion` feature).
#[cfg(feature = "cuda")]
pub type CudaUnfused = burn_cubecl::CubeBackend<burn::cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// burn's WebGPU backend (feature `wgpu`): the CubeCL kernels of the
/// CUDA backend, on Vulkan, Metal or DX12 (Mesa's llvmpipe where there is
/// no GPU); with the `fusion` feature, burn's operation fusion over
/// [`WgpuUnfused`].
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// burn's WebGPU backend without operation fusion.
#[cfg(feature = "wgpu")]
pub type WgpuUnfused = burn_cubecl::CubeBackend<burn::cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// Set when a build with burn's operation fusion runs without it.
static UNFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the GPU backends run under burn's operation fusion: in a build
/// with the `fusion` feature, unless [`set_fusion`] turned it off. Both
/// backends are compiled into such a build, so that one binary times them
/// side by side.
pub fn fusion() -> bool {
    cfg!(feature = "fusion") && !UNFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Turns burn's operation fusion on or off for this process, from the
/// value of `BLKC_FUSION` (`on` or `off`): an error for any other value,
/// and for `on` in a build without fusion.
pub fn set_fusion(value: &str) -> Result<(), String> {
    let off = match value {
        "off" => true,
        "on" if cfg!(feature = "fusion") => false,
        "on" => {
            return Err("this blkc was built without burn's operation fusion; rebuild with `cargo build --release -p \
                        blkc-runtime --features cuda,fusion` (or wgpu,fusion)"
                .into())
        }
        other => return Err(format!("`{other}`: expected on or off")),
    };
    UNFUSED.store(off, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Runs `$body` with the type `$B` the backend this process runs on
/// `Cuda` or `Wgpu`: burn's operation fusion over it ([`fusion`]), or
/// `CudaUnfused` / `WgpuUnfused` (one type with the other in a build
/// without the `fusion` feature).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
macro_rules! fused_or_not {
    (Cuda, |$B:ident| $body:expr) => {
        $crate::backend::fused_or_not!(@ $crate::backend::Cuda, $crate::backend::CudaUnfused, $B, $body)
    };
    (Wgpu, |$B:ident| $body:expr) => {
        $crate::backend::fused_or_not!(@ $crate::backend::Wgpu, $crate::backend::WgpuUnfused, $B, $body)
    };
    (@ $fused:ty, $unfused:ty, $B:ident, $body:expr) => {{
        #[cfg(feature = "fusion")]
        {
            if $crate::backend::fusion() {
                type $B = $fused;
                $body
            } else {
                type $B = $unfused;
                $body
            }
        }
        #[cfg(not(feature = "fusion"))]
        {
            type $B = $unfused;
            $body
        }
    }};
}
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) use fused_or_not;

/// A GPU that answered the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub name: String,
    /// Free and total device memory, in bytes.
    pub free: u64,
    pub total: u64,
    /// GPUs of this kind the machine has (its CUDA devices).
    pub count: usize,
}

/// Checks, before burn touches it, that CUDA can run here: the driver
/// library loads, a device answers, NVRTC (which compiles the kernels)
/// loads. Where burn would panic on the first tensor (cudarc cannot load
/// `libcuda.so`, then a dead device thread), this says what is missing.
#[cfg(feature = "cuda")]
pub fn cuda() -> Result<Gpu, String> {
    let driver = quietly(cudarc::driver::result::init).ok_or(
        "CUDA's driver library (libcuda.so) cannot be loaded: this machine has no NVIDIA driver, or it is not on \
         the library path (LD_LIBRARY_PATH)",
    )?;
    driver.map_err(|e| format!("the NVIDIA driver does not start: {e}"))?;
    let count = quietly(cudarc::driver::result::device::get_count).and_then(Result::ok).unwrap_or(0);
    if count < 1 {
        return Err("the NVIDIA driver loads but sees no GPU (is CUDA_VISIBLE_DEVICES empty?)".into());
    }
    let ctx = quietly(|| cudarc::driver::CudaContext::new(0))
        .and_then(Result::ok)
        .ok_or("GPU 0 cannot be opened (it may be busy in exclusive mode, or in a bad state)")?;
    let name = ctx.name().unwrap_or_else(|_| "GPU 0".into());
    let (free, total) = ctx.mem_get_info().map_err(|e| format!("cannot read the memory of {name}: {e}"))?;
    let nvrtc = quietly(|| cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void probe() {}"));
    match nvrtc {
        None => {
            return Err("CUDA's runtime compiler (libnvrtc.so) cannot be loaded: install the CUDA toolkit's \
                            NVRTC, or add its lib64 folder to LD_LIBRARY_PATH"
                .into())
        }
        Some(Err(e)) => return Err(format!("CUDA's runtime compiler (NVRTC) does not work: {e}")),
        Some(Ok(_)) => {}
    }
    Ok(Gpu { name, free: free as u64, total: total as u64, count: count as usize })
}

/// Whether this build has CUDA, and CUDA runs here.
#[cfg(not(feature = "cuda"))]
pub fn cuda() -> Result<Gpu, String> {
    Err("this blkc was built without CUDA; rebuild with `cargo build --release -p blkc-runtime --features cuda`".into())
}

/// Checks, before a run starts, that burn's wgpu backend finds an adapter
/// and computes on it (burn panics in its device thread where there is
/// none). The memory of a WebGPU adapter is not known: `free` and `total`
/// are 0.
#[cfg(feature = "wgpu")]
pub fn wgpu() -> Result<Gpu, String> {
    let sum = quietly(|| {
        let device = Default::default();
        let t = burn::tensor::Tensor::<Wgpu, 1>::from_floats([1.0, 2.0], &device);
        t.sum().into_scalar()
    });
    match sum {
        Some(3.0) => Ok(Gpu { name: "WebGPU (default adapter)".into(), free: 0, total: 0, count: 1 }),
        Some(s) => Err(format!("the WebGPU adapter computes 1 + 2 = {s}")),
        None => Err("no WebGPU adapter answers: this machine has no Vulkan, Metal or DX12 driver (on Linux without \
                     a GPU, Mesa's software one is the package mesa-vulkan-drivers)"
            .into()),
    }
}

/// Whether this build has wgpu, and an adapter answers here.
#[cfg(not(feature = "wgpu"))]
pub fn wgpu() -> Result<Gpu, String> {
    Err("this blkc was built without wgpu; rebuild with `cargo build --release -p blkc-runtime --features wgpu`".into())
}

/// Runs `f`, turning a panic into `None` without printing it: for library
/// code that panics on bad input or a missing system library (cudarc when
/// CUDA cannot be loaded, burn's record loading on another architecture).
pub fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(hook);
    r
}

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
