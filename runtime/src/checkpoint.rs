//! Saving and loading weights: burn records (MessagePack with named
//! fields, full precision) as checkpoints, and safetensors for export.
//! Both are written to a temporary file and renamed, so an interrupted
//! write never leaves a half-written file behind. Structure is not saved:
//! a model is rebuilt from its `.blk` and its weights loaded into it.
//!
//! Safetensors names are the module paths, stable as long as the `.blk`
//! is unchanged (docs/lowering.md lists them): `embedding`, `positions`,
//! `blocks.L.norms.I.scale`, `blocks.L.attention.I.query`, `….value.weight`,
//! `….value.fixed` (a reparam's W_init), `….gains.G`, `blocks.L.mlp.I.up`,
//! `blocks.L.gains.G`, `final_norm.scale`, `head`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};

use crate::kernels::Kernels;
use crate::model::Model;

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

/// A sibling temporary path in the same directory (so the rename is atomic).
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Moves the finished temporary file `tmp` over `path` durably: its
/// contents reach the disk before the rename, and the rename before the
/// return (an interrupted or crashed run never leaves a renamed file with
/// missing contents).
pub fn persist(tmp: &Path, path: &Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot move `{}` into place: {e}", path.display());
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(err)?;
    std::fs::rename(tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A directory cannot be opened for syncing everywhere; the rename
        // itself has happened either way.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes the model's weights to `path` (a `.mpk` burn record), atomically.
pub fn save<B: Kernels>(model: &Model<B>, path: &Path) -> Result<(), String> {
    let tmp = temporary(path);
    // The recorder appends its extension; write to `tmp.mpk`.
    model.clone().save_file(tmp.clone(), &recorder()).map_err(|e| format!("cannot write checkpoint: {e}"))?;
    persist(&tmp.with_extension("mpk"), path)
}

/// Loads weights saved by [`save`] into `model` (built from the same file).
pub fn load<B: Kernels>(model: Model<B>, path: &Path, device: &B::Device) -> Result<Model<B>, String> {
    model
        .load_file(path.to_path_buf(), &recorder(), device)
        .map_err(|e| format!("cannot read checkpoint `{}`: {e}", path.display()))
}

/// Exports the weights as safetensors, atomically.
pub fn export<B: Kernels>(model: &Model<B>, path: &Path) -> Result<(), String> {
    let tmp = temporary(path);
    let mut store = SafetensorsStore::from_file(&tmp);
    model.save_into(&mut store).map_err(|e| format!("cannot export safetensors: {e}"))?;
    persist(&tmp, path)
}

/// Loads safetensors written by [`export`] into `model`.
pub fn import<B: Kernels>(mut model: Model<B>, path: &Path) -> Result<Model<B>, String> {
    let mut store = SafetensorsStore::from_file(path);
    let result = model.load_from(&mut store).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(format!(
            "`{}` does not fit the model: {} missing, {} errors",
            path.display(),
            result.missing.len(),
            result.errors.len()
        ));
    }
    Ok(model)
}

/// The names of the exported tensors, sorted.
pub fn names<B: Kernels>(model: &Model<B>) -> Vec<String> {
    let mut v: Vec<String> = model.collect(None, None, false).iter().map(|s| s.full_path()).collect();
    v.sort();
    v
}
