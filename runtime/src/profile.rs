//! `blkc bench --profile`: which kernels a training step's time goes to, on
//! burn's CubeCL backends (CUDA, wgpu).
//!
//! CubeCL times every kernel it launches when its profiling log is on
//! (each launch waits for the one before, and is timed on the device); the
//! log is a line per launch, `| 1.234ms | KernelName | f32 | CudaRuntime`.
//! [`enable`] turns it on, into a file, before the device starts; [`read`]
//! sums the file by kernel. The bench launches a marker kernel (`marker::mark`, with a GPU backend)
//! between its warm-up and its timed steps, and only the launches after
//! the last marker are counted, over the timed steps: what a step launches
//! once the optimiser's state exists and every kernel is compiled. Without
//! a marker, every launch counts, over all steps run, and a kernel's first
//! launch (which compiles it) is left out of its mean time. The profiled
//! bench measures no forward pass and no product rate.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// One kernel's share of a training step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelTime {
    /// Its type name, without the runtime (`NormForward | f32`).
    pub kernel: String,
    pub launches_per_step: f64,
    pub ms_per_step: f64,
    /// Of the profiled kernels' time.
    pub share: f64,
}

/// Turns CubeCL's kernel profiling on, logging to `log`; before any device
/// is created (CubeCL reads its configuration once). An error where the
/// configuration was already read.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn enable(log: &Path) -> Result<(), String> {
    use cubecl::config::profiling::ProfilingLogLevel;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.profiling.logger.level = ProfilingLogLevel::Basic;
    config.profiling.logger.file = Some(log.to_path_buf());
    config.profiling.logger.append = false;
    crate::backend::quietly(|| CubeClRuntimeConfig::set(config))
        .ok_or_else(|| "CubeCL's configuration was read before the profile could be set".to_string())
}

/// Without a CubeCL backend in this build there is nothing to profile.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn enable(_: &Path) -> Result<(), String> {
    Err("this blkc has no GPU backend to profile (build with --features cuda or wgpu)".into())
}

/// The name the marker kernel has in the log.
const MARK: &str = "ProfileMark";

/// Launches the marker kernel on `device`'s CubeCL runtime: the log's
/// launches after it are the timed steps'.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub use marker::mark;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod marker {
    use cubecl::prelude::*;

    /// Named `ProfileMark` in the log.
    #[cube(launch)]
    fn profile_mark(out: &mut Tensor<f32>) {
        if ABSOLUTE_POS == 0 {
            out[0] = 0.0;
        }
    }

    pub fn mark<R: burn_cubecl::CubeRuntime>(device: &R::Device) {
        let client = R::client(device);
        let out = burn_cubecl::ops::numeric::empty_device_dtype(
            client.clone(),
            device.clone(),
            [1].into(),
            burn::tensor::DType::F32,
        );
        profile_mark::launch::<R>(&client, CubeCount::new_single(), CubeDim::new_single(), out.into_tensor_arg());
    }
}

/// The profile in `log` of a bench that ran `all` training steps, the last
/// `timed` of them after the marker, the kernels that take the most time
/// first. Waits (up to 10 s) for the log to stop growing: CubeCL writes it
/// from another thread.
pub fn read(log: &Path, all: usize, timed: usize) -> Result<Vec<KernelTime>, String> {
    let mut last = None;
    for _ in 0..50 {
        let len = std::fs::metadata(log).map(|m| m.len()).ok();
        if len.is_some() && len == last {
            break;
        }
        last = len;
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(log).map_err(|e| format!("cannot read the profile {}: {e}", log.display()))?;
    Ok(summarise(&text, all, timed))
}

/// Sums the launches of `text` (CubeCL's profiling log) by kernel: after
/// its last marker over `timed` steps, or all of them over `all` steps.
pub fn summarise(text: &str, all: usize, timed: usize) -> Vec<KernelTime> {
    let launches: Vec<(f64, String)> = text.lines().filter_map(launch).collect();
    let last_mark = launches.iter().rposition(|(_, name)| name.starts_with(MARK));
    let (warm, counted, steps) = match last_mark {
        Some(i) => (&launches[..i], &launches[i + 1..], timed),
        None => (&launches[..0], &launches[..], all),
    };
    // Per kernel: launches, those timed (all but a first, which compiled
    // it, unless it ran in the warm-up), and their time.
    let compiled: std::collections::HashSet<&str> = warm.iter().map(|(_, n)| n.as_str()).collect();
    let mut seen: HashMap<String, (usize, usize, f64)> = HashMap::new();
    for (ms, name) in counted {
        let entry = seen.entry(name.clone()).or_insert((0, 0, 0.0));
        if entry.0 > 0 || compiled.contains(name.as_str()) {
            entry.1 += 1;
            entry.2 += ms;
        }
        entry.0 += 1;
    }
    let steps = steps.max(1) as f64;
    let mut rows: Vec<KernelTime> = seen
        .into_iter()
        .map(|(kernel, (n, timed, ms))| {
            let mean = if timed > 0 { ms / timed as f64 } else { 0.0 };
            let launches = n as f64 / steps;
            KernelTime { kernel, launches_per_step: launches, ms_per_step: mean * launches, share: 0.0 }
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.ms_per_step).sum();
    for r in &mut rows {
        r.share = if total > 0.0 { r.ms_per_step / total } else { 0.0 };
    }
    rows.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step).then_with(|| a.kernel.cmp(&b.kernel)));
    rows
}

/// One launch line, `| 1.5ms | Name | args | Runtime`: its time in ms and
/// the kernel's short name. Other lines (the log's own summary tables)
/// are not launches.
fn launch(line: &str) -> Option<(f64, String)> {
    let mut cells = line.strip_prefix('|')?.split(" | ").map(str::trim);
    let ms = millis(cells.next()?)?;
    let parts: Vec<&str> = cells.filter(|c| !c.is_empty() && !c.ends_with("Runtime")).collect();
    let first = *parts.first()?;
    // Long generic names (burn's matrix products) by their kernel and the
    // families that choose its algorithm; others by their first two parts.
    let name = if parts.len() > 4 {
        let families: Vec<&str> = parts.iter().copied().filter(|p| p.ends_with("MatmulFamily")).collect();
        if families.is_empty() {
            first.to_string()
        } else {
            format!("{first} ({})", families.join(", "))
        }
    } else {
        parts.iter().take(2).copied().collect::<Vec<_>>().join(" | ")
    };
    Some((ms, name))
}

/// A duration as Rust's `Debug` writes it (`1.5ms`, `610.8µs`, `2.1s`,
/// `950ns`), in milliseconds.
fn millis(s: &str) -> Option<f64> {
    let units = [("ns", 1e-6), ("µs", 1e-3), ("us", 1e-3), ("ms", 1.0), ("s", 1e3)];
    units.iter().find_map(|(unit, scale)| s.strip_suffix(unit)?.parse::<f64>().ok().map(|v| v * scale))
}

/// The profile as a table for the terminal: the kernels that make up
/// `top` of the time, then the rest in one line.
pub fn table(rows: &[KernelTime], top: f64) -> String {
    let total: f64 = rows.iter().map(|r| r.ms_per_step).sum();
    let mut out = format!("{:<56} {:>10} {:>10} {:>7}\n", "kernel", "launches", "ms/step", "share");
    let mut shown = 0.0;
    let mut rest = (0usize, 0.0f64);
    for r in rows {
        if shown < top * total || r.share >= 0.01 {
            shown += r.ms_per_step;
            let name: String = r.kernel.chars().take(56).collect();
            out += &format!(
                "{name:<56} {:>10.1} {:>10.3} {:>6.1}%\n",
                r.launches_per_step,
                r.ms_per_step,
                r.share * 100.0
            );
        } else {
            rest.0 += 1;
            rest.1 += r.ms_per_step;
        }
    }
    if rest.0 > 0 {
        out += &format!(
            "{:<56} {:>10} {:>10.3} {:>6.1}%\n",
            format!("({} other kernels)", rest.0),
            "",
            rest.1,
            rest.1 / total.max(f64::MIN_POSITIVE) * 100.0
        );
    }
    out += &format!("{:<56} {:>10} {:>10.3}\n", "all kernels", "", total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
| 1.5ms      | NormForward | f32 | CudaRuntime
| 610.848µs  | SharedSumKernel | CudaRuntime
|⎺⎺⎺⎺⎺⎺⎺⎺⎺⎺| 
| Name                          | Duration   | Num Computed | Ratio |
| SharedSumKernel | CudaRuntime | 610.848µs  | 1            | 15 %  |
| 500µs      | NormForward | f32 | CudaRuntime
| 300µs      | NormForward | f32 | CudaRuntime
| 2s         | MatmulEntry | TensorArgs | DynamicScalar | __Lhs | SimpleMatmulFamily | UnitMatmulFamily | WgpuRuntime
| 4ms        | MatmulEntry | TensorArgs | DynamicScalar | __Lhs | SimpleMatmulFamily | UnitMatmulFamily | WgpuRuntime
| 950ns      | SharedSumKernel | CudaRuntime
";

    #[test]
    fn launches_are_summed_by_kernel_without_the_first_one() {
        let rows = summarise(LOG, 2, 1);
        let by = |k: &str| rows.iter().find(|r| r.kernel == k).cloned();
        let norm = by("NormForward | f32").unwrap_or_else(|| panic!("{rows:?}"));
        // Three launches over two steps; the mean of the two after the
        // first (which compiled it) is 0.4 ms.
        assert_eq!(norm.launches_per_step, 1.5);
        assert!((norm.ms_per_step - 0.6).abs() < 1e-12, "{norm:?}");
        let matmul = by("MatmulEntry (SimpleMatmulFamily, UnitMatmulFamily)").unwrap_or_else(|| panic!("{rows:?}"));
        assert!((matmul.ms_per_step - 4.0).abs() < 1e-12, "{matmul:?}");
        let sum = by("SharedSumKernel").unwrap_or_else(|| panic!("{rows:?}"));
        assert!((sum.ms_per_step - 0.00095).abs() < 1e-12, "{sum:?}");
        // The summary table's lines are not launches.
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].kernel, matmul.kernel, "the most time first");
        let shares: f64 = rows.iter().map(|r| r.share).sum();
        assert!((shares - 1.0).abs() < 1e-12);
        let t = table(&rows, 0.9);
        assert!(t.contains("NormForward | f32") && t.contains("all kernels"), "{t}");
    }

    /// With a marker, the launches after the last one, over the timed
    /// steps; a kernel that ran before it (compiled) has all its launches
    /// timed, one first seen after it all but the first.
    #[test]
    fn launches_after_the_marker_are_the_timed_steps() {
        let log = "\
| 9ms        | NormForward | f32 | CudaRuntime
| 7ms        | FullKernel | CudaRuntime
| 1µs        | ProfileMark | CudaRuntime
| 1ms        | NormForward | f32 | CudaRuntime
| 3ms        | NormForward | f32 | CudaRuntime
| 8ms        | LossRows | f32 | CudaRuntime
| 2ms        | LossRows | f32 | CudaRuntime
";
        let rows = summarise(log, 3, 2);
        let by = |k: &str| rows.iter().find(|r| r.kernel == k).cloned().unwrap_or_else(|| panic!("{k}: {rows:?}"));
        let norm = by("NormForward | f32");
        assert_eq!(norm.launches_per_step, 1.0);
        assert!((norm.ms_per_step - 2.0).abs() < 1e-12, "{norm:?}");
        let loss = by("LossRows | f32");
        assert_eq!(loss.launches_per_step, 1.0);
        assert!((loss.ms_per_step - 2.0).abs() < 1e-12, "{loss:?}");
        assert!(rows.iter().all(|r| r.kernel != "FullKernel" && !r.kernel.starts_with("ProfileMark")), "{rows:?}");
    }

    #[test]
    fn durations_read_in_every_unit() {
        assert_eq!(millis("1.5ms"), Some(1.5));
        assert_eq!(millis("2s"), Some(2000.0));
        assert_eq!(millis("250µs"), Some(0.25));
        assert!(millis("5ns").is_some_and(|m| (m - 5e-6).abs() < 1e-18));
        assert_eq!(millis("Duration"), None);
    }
}
