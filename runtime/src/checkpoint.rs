//! Model weights on disk: safetensors named by module path, full
//! precision, the same format for checkpoints (`model.safetensors`) and for
//! export. Structure is not saved: a model is rebuilt from its `.blk` and
//! the weights are loaded into it, each tensor checked against the
//! rebuilt model's shape, so weights from another architecture are a clear
//! error naming the tensor, never a panic or a half-loaded model.
//!
//! Names are the module paths, stable as long as the `.blk` is unchanged
//! (docs/lowering.md lists them): `embedding`, `positions`,
//! `blocks.L.norms.I.scale`, `blocks.L.attention.I.query`, `….value.weight`,
//! `….value.fixed` (a reparam's W_init), `….gains.G`, `blocks.L.mlp.I.up`,
//! `blocks.L.gains.G`, `final_norm.scale`, `head`.
//!
//! Checkpoints of blkc 0.1 before this format (`model.mpk`, burn's named
//! MessagePack record) are still read.

use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::store::{ApplyError, ModuleSnapshot, SafetensorsStore};

use crate::durable;
use crate::kernels::Kernels;
use crate::model::Model;

/// The weights file of a checkpoint.
pub const WEIGHTS: &str = "model.safetensors";
/// The weights file of checkpoints written before safetensors.
pub const LEGACY_WEIGHTS: &str = "model.mpk";

/// The model's weights as safetensors bytes.
pub fn encode<B: Kernels>(model: &Model<B>) -> Result<Vec<u8>, String> {
    encode_with(model, &[])
}

/// The model's weights as safetensors bytes, with `metadata` (string
/// pairs in the file's header) beside burn's own.
pub fn encode_with<B: Kernels>(model: &Model<B>, metadata: &[(&str, String)]) -> Result<Vec<u8>, String> {
    let mut store = SafetensorsStore::from_bytes(None);
    for (k, v) in metadata {
        store = store.metadata(*k, v.clone());
    }
    model.save_into(&mut store).map_err(|e| format!("cannot encode the weights: {e}"))?;
    store.get_bytes().map_err(|e| format!("cannot encode the weights: {e}"))
}

/// Loads safetensors `bytes` (read from `path`, for messages) into `model`:
/// every tensor of the model must be there with its shape, and nothing else.
pub fn decode<B: Kernels>(mut model: Model<B>, bytes: Vec<u8>, path: &Path) -> Result<Model<B>, String> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).validate(false).allow_partial(true);
    let result = model.load_from(&mut store).map_err(|e| format!("`{}` is not a weights file: {e}", path.display()))?;
    let mut problems: Vec<String> = result.errors.iter().map(problem).collect();
    problems.extend(result.missing.iter().map(|(p, _)| format!("`{p}` is missing")));
    problems.extend(result.unused.iter().map(|p| format!("`{p}` is not in this model")));
    if problems.is_empty() {
        return Ok(model);
    }
    let n = problems.len();
    problems.truncate(4);
    let more = if n > 4 { format!(" (and {} more)", n - 4) } else { String::new() };
    Err(format!(
        "`{}` does not fit this model: {}{more}; it was written for another architecture or another .blk",
        path.display(),
        problems.join("; ")
    ))
}

fn problem(e: &ApplyError) -> String {
    match e {
        ApplyError::ShapeMismatch { path, expected, found } => {
            format!("`{path}` has shape {:?}, the model's is {:?}", found.as_slice(), expected.as_slice())
        }
        ApplyError::DTypeMismatch { path, expected, found } => {
            format!("`{path}` holds {found:?}, the model's is {expected:?}")
        }
        other => other.to_string(),
    }
}

/// Writes the model's weights to `path` atomically; returns their checksum.
pub fn save<B: Kernels>(model: &Model<B>, path: &Path) -> Result<u32, String> {
    let bytes = encode(model)?;
    durable::write_atomic(path, &bytes)?;
    Ok(durable::checksum(&bytes))
}

/// Loads weights written by [`save`] (or a legacy `model.mpk`) into
/// `model`, verifying the checksum when one was recorded.
pub fn load<B: Kernels>(
    model: Model<B>,
    path: &Path,
    checksum: Option<u32>,
    device: &B::Device,
) -> Result<Model<B>, String> {
    let bytes = durable::read_verified(path, checksum).map_err(|e| format!("cannot read checkpoint: {e}"))?;
    if path.extension().is_some_and(|e| e == "mpk") {
        return load_legacy(model, bytes, path, device);
    }
    decode(model, bytes, path)
}

/// A burn record: decoded, then checked tensor by tensor against the model
/// (burn's own loading asserts on some mismatches and ignores others).
fn load_legacy<B: Kernels>(
    model: Model<B>,
    bytes: Vec<u8>,
    path: &Path,
    device: &B::Device,
) -> Result<Model<B>, String> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record = Recorder::<B>::load(&recorder, bytes, device)
        .map_err(|e| format!("`{}` does not fit this model: {e}", path.display()))?;
    let target = model.clone();
    let loaded = crate::backend::quietly(|| model.load_record(record))
        .ok_or_else(|| format!("`{}` does not fit this model (another architecture)", path.display()))?;
    // Through safetensors into the model as built: `decode`'s shape check.
    decode(target, encode(&loaded)?, path)
}

/// Exports the weights as safetensors, atomically.
pub fn export<B: Kernels>(model: &Model<B>, path: &Path) -> Result<(), String> {
    save(model, path).map(|_| ())
}

/// Loads safetensors written by [`export`] into `model`.
pub fn import<B: Kernels>(model: Model<B>, path: &Path) -> Result<Model<B>, String> {
    let bytes = durable::read_verified(path, None)?;
    decode(model, bytes, path)
}

/// The names of the exported tensors, sorted.
pub fn names<B: Kernels>(model: &Model<B>) -> Vec<String> {
    let mut v: Vec<String> = model.collect(None, None, false).iter().map(|s| s.full_path()).collect();
    v.sort();
    v
}
