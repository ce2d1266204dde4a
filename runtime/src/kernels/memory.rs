//! What a backend can tell of its device's memory, for `blkc bench`: the
//! bytes a GPU's allocator holds. The CPU backends answer `None` (the
//! `blkc` binary counts host bytes itself: `crate::alloc`).

use burn::tensor::backend::Backend;

/// A device's memory as its allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceBytes {
    /// Bytes in live tensors.
    pub in_use: u64,
    /// Bytes the allocator holds from the device (pages, free or not).
    pub reserved: u64,
}

pub trait DeviceMemory: Backend {
    /// The device's memory now (after the work queued so far has run), or
    /// `None` where the backend has no memory of its own.
    fn device_bytes(_device: &Self::Device) -> Option<DeviceBytes> {
        None
    }

    /// Marks the kernel profile here (`crate::profile::mark`): a GPU
    /// backend launches the marker kernel, others do nothing.
    fn profile_mark(_device: &Self::Device) {}
}

impl<B: DeviceMemory, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> DeviceMemory
    for burn::backend::Autodiff<B, C>
{
    fn device_bytes(device: &Self::Device) -> Option<DeviceBytes> {
        B::device_bytes(device)
    }

    fn profile_mark(device: &Self::Device) {
        B::profile_mark(device)
    }
}

#[cfg(feature = "flex")]
impl DeviceMemory for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
impl DeviceMemory for burn::backend::NdArray {}

/// The memory of a CubeCL runtime's device.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn cube_bytes<R: burn::cubecl::Runtime>(device: &R::Device) -> Option<DeviceBytes> {
    let usage = R::client(device).memory_usage().ok()?;
    Some(DeviceBytes { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl<
        R: burn_cubecl::CubeRuntime,
        F: burn_cubecl::FloatElement,
        I: burn_cubecl::IntElement,
        BT: burn_cubecl::BoolElement,
    > DeviceMemory for burn_cubecl::CubeBackend<R, F, I, BT>
{
    fn device_bytes(device: &Self::Device) -> Option<DeviceBytes> {
        Self::sync(device).ok()?;
        cube_bytes::<R>(device)
    }

    fn profile_mark(device: &Self::Device) {
        crate::profile::mark::<R>(device)
    }
}

/// With operation fusion, `Cuda` and `Wgpu` are fused backends over the
/// same runtimes.
#[cfg(feature = "fusion")]
macro_rules! fused_memory {
    ($B:ty, $R:ty) => {
        impl DeviceMemory for $B {
            fn device_bytes(device: &Self::Device) -> Option<DeviceBytes> {
                <$B as Backend>::sync(device).ok()?;
                cube_bytes::<$R>(device)
            }

            fn profile_mark(device: &Self::Device) {
                <$B as Backend>::sync(device).ok();
                crate::profile::mark::<$R>(device)
            }
        }
    };
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
fused_memory!(burn::backend::Cuda, burn::cubecl::cuda::CudaRuntime);

#[cfg(all(feature = "wgpu", feature = "fusion"))]
fused_memory!(burn::backend::Wgpu, burn::cubecl::wgpu::WgpuRuntime);
