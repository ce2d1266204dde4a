//! A run directory:
//!
//! ```text
//! run.json            what was run: model, resolved settings, sizes
//! source/…            copies of every .blk file the model was built from
//! tokenizer.json      the tokenizer (BPE JSON, or a marker for bytes)
//! metrics.jsonl       one JSON object per logged step
//! loss.png, loss.svg  the loss curves
//! checkpoints/latest  the name of the newest complete checkpoint
//! checkpoints/step-NNNNNNNN/{model.mpk, optimizer.bin, state.json}
//! ```
//!
//! A checkpoint is written into a hidden directory and renamed into place,
//! then `latest` is replaced (write + rename): a crash at any point leaves
//! the previous checkpoint intact and `latest` naming a whole one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::Settings;

/// Checkpoints kept (the newest ones).
const KEEP: usize = 2;

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub blkc_version: String,
    /// The .blk file as given on the command line.
    pub file: String,
    /// Its path inside `source/`.
    pub entry: String,
    pub model: String,
    pub block: String,
    pub params: u64,
    pub settings: Settings,
    pub tokenizer_vocab: u64,
    pub train_tokens: u64,
    pub valid_tokens: u64,
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Steps done.
    pub step: u64,
    pub loss: f64,
    pub eval_loss: Option<f64>,
    pub tokens: u64,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: &Path) -> RunDir {
        RunDir { root: root.to_path_buf() }
    }

    pub fn info_path(&self) -> PathBuf {
        self.root.join("run.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }

    pub fn source(&self) -> PathBuf {
        self.root.join("source")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Creates the directory for a fresh run; refuses one that already
    /// holds a run (so a run is never overwritten by accident).
    pub fn create(&self) -> Result<(), String> {
        if self.info_path().exists() {
            return Err(format!(
                "`{}` already holds a run; continue it with `--resume {}` or choose another --out",
                self.root.display(),
                self.root.display()
            ));
        }
        std::fs::create_dir_all(self.checkpoints())
            .map_err(|e| format!("cannot create the run directory `{}`: {e}", self.root.display()))
    }

    pub fn write_info(&self, info: &RunInfo) -> Result<(), String> {
        let text = serde_json::to_string_pretty(info).map_err(|e| e.to_string())?;
        write_atomic(&self.info_path(), text.as_bytes())
    }

    pub fn read_info(&self) -> Result<RunInfo, String> {
        let p = self.info_path();
        let text = std::fs::read_to_string(&p)
            .map_err(|_| format!("`{}` is not a run directory (no run.json)", self.root.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("`{}` is damaged: {e}", p.display()))
    }

    /// Copies the sources (relative display names kept) into `source/`.
    pub fn write_sources(&self, files: &[(String, String)]) -> Result<(), String> {
        for (name, text) in files {
            let p = self.source().join(name);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| format!("cannot write `{}`: {e}", d.display()))?;
            }
            write_atomic(&p, text.as_bytes())?;
        }
        Ok(())
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.checkpoints().join("latest")).ok()?;
        let p = self.checkpoints().join(name.trim());
        p.join("state.json").is_file().then_some(p)
    }

    /// Writes checkpoint `step`: `fill` puts the weights and optimiser state
    /// into the directory it is given.
    pub fn checkpoint(&self, state: &State, fill: impl FnOnce(&Path) -> Result<(), String>) -> Result<PathBuf, String> {
        let name = format!("step-{:08}", state.step);
        let dir = self.checkpoints().join(&name);
        let tmp = self.checkpoints().join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot write a checkpoint: {e}"))?;
        fill(&tmp)?;
        let text = serde_json::to_string_pretty(state).map_err(|e| e.to_string())?;
        write_atomic(&tmp.join("state.json"), text.as_bytes())?;
        if dir.exists() {
            // The same step written again (e.g. an interrupt right after a
            // scheduled checkpoint): replace it.
            std::fs::remove_dir_all(&dir).map_err(|e| format!("cannot replace `{}`: {e}", dir.display()))?;
        }
        // The files' entries reach the disk before the directory is renamed
        // (each file was synced as it was written).
        sync_dir(&tmp);
        std::fs::rename(&tmp, &dir).map_err(|e| format!("cannot move the checkpoint into place: {e}"))?;
        sync_dir(&self.checkpoints());
        write_atomic(&self.checkpoints().join("latest"), name.as_bytes())?;
        self.prune(&name);
        Ok(dir)
    }

    /// Removes all but the newest [`KEEP`] checkpoints (never `current`).
    fn prune(&self, current: &str) {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("step-"))
            .collect();
        names.sort();
        // Half-written checkpoints of killed runs.
        if let Ok(entries) = std::fs::read_dir(self.checkpoints()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".step-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let excess = names.len().saturating_sub(KEEP);
        for n in names.into_iter().take(excess) {
            if n != current {
                let _ = std::fs::remove_dir_all(self.checkpoints().join(n));
            }
        }
    }

    /// Keeps the metrics lines up to `step` (a resumed run continues from
    /// its checkpoint, so later lines from the interrupted run go).
    pub fn truncate_metrics(&self, step: u64) -> Result<(), String> {
        let p = self.metrics();
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&p, kept.as_bytes())
    }

    /// Appends one metrics line (flushed, so a killed run keeps it).
    pub fn log(&self, line: &serde_json::Value) -> Result<(), String> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.metrics())
            .map_err(|e| format!("cannot write metrics: {e}"))?;
        writeln!(f, "{line}").map_err(|e| format!("cannot write metrics: {e}"))
    }
}

/// Reads a checkpoint's state.
pub fn read_state(ckpt: &Path) -> Result<State, String> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("`{}` is damaged: {e}", p.display()))
}

/// Writes `bytes` to a sibling temporary file, syncs it and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let err = |e: std::io::Error| format!("cannot write `{}`: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
