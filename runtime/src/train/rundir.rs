//! A run directory:
//!
//! ```text
//! run.json            what was run: model, resolved settings, sizes
//! source.json         every .blk file the model was built from
//! tokenizer.json      the tokenizer (BPE JSON, or a marker for bytes)
//! metrics.jsonl       one JSON object per logged step
//! metrics.csv         the same as a table
//! tensorboard/        the same as a TensorBoard event file
//! loss.{png,svg}      the loss curves; training.{png,svg} also lr, gradient norm, gains
//! .lock               held by the one process writing the run
//! init.safetensors    the weights a run started from (`--init-from`)
//! checkpoints/latest  the name of the newest complete checkpoint
//! checkpoints/step-NNNNNNNN/{model.safetensors, optimizer.bin, state.json}
//! ```
//!
//! A checkpoint is written into a hidden directory and renamed into place,
//! then `latest` is replaced (write + rename): a crash at any point leaves
//! the previous checkpoint intact. `state.json` records a checksum of each
//! file beside it. When `latest` is missing, damaged or points elsewhere,
//! the newest complete checkpoint is used instead, and the user is told.
//!
//! One process writes a run: [`RunDir::lock`] takes an advisory lock on
//! `.lock` for the writer's life. The operating system drops it when the
//! process ends, however it ends, so a killed run's lock is never stale.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::Settings;
use crate::durable::{self, write_atomic};

/// Checkpoints kept (the newest ones).
const KEEP: usize = 2;

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub blkc_version: String,
    /// The .blk file as given on the command line.
    pub file: String,
    /// Its path inside `source.json`.
    pub entry: String,
    pub model: String,
    pub block: String,
    pub params: u64,
    pub settings: Settings,
    pub tokenizer_vocab: u64,
    pub train_tokens: u64,
    pub valid_tokens: u64,
    /// Bytes of the validation text (none for token files): with
    /// `valid_tokens`, a loss per token in bits per byte.
    #[serde(default)]
    pub valid_bytes: Option<u64>,
    /// The model as resolved by the compiler (block, sizes, mask,
    /// positions, final norm, embeddings).
    #[serde(default)]
    pub resolved_model: serde_json::Value,
    /// The git commit of the repository holding the .blk file, if any.
    #[serde(default)]
    pub git: Option<Git>,
    /// Every command that trained this run: when, and its arguments.
    #[serde(default)]
    pub commands: Vec<Invocation>,
    /// When the run was started, and when a command last started training
    /// it (UTC, RFC 3339).
    #[serde(default)]
    pub started: String,
    #[serde(default)]
    pub updated: String,
    /// The checkpoint whose weights the run started from (`--init-from`),
    /// instead of an initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
}

/// A checkpoint a run started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFrom {
    /// Its directory (`RUN/checkpoints/step-N`), absolute.
    pub checkpoint: PathBuf,
    /// The step it was written at.
    pub step: u64,
    /// The checksum of the run's copy of its weights
    /// ([`RunDir::init_weights`]), once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<u32>,
    /// Given as a run directory (its newest checkpoint) rather than as a
    /// checkpoint: one removed by that run before its weights are read
    /// gives way to the newest then. Not kept: a resume reads the one
    /// recorded.
    #[serde(skip)]
    pub newest: bool,
}

impl RunInfo {
    /// `loss` (nats per validation token) in bits per byte of the
    /// validation text, comparable across tokenizers; none for token files.
    pub fn bits_per_byte(&self, loss: f64) -> Option<f64> {
        let bytes = self.valid_bytes.filter(|&b| b > 0)?;
        Some(loss / std::f64::consts::LN_2 * self.valid_tokens as f64 / bytes as f64)
    }
}

/// Where the source of a run came from in version control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Git {
    pub commit: String,
    /// The .blk files differed from the commit.
    pub dirty: bool,
}

/// One `blkc train` that wrote the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub at: String,
    pub argv: Vec<String>,
}

impl Git {
    /// The commit of the repository holding `file`, and whether `file` has
    /// changes since; `None` outside a repository or without git.
    pub fn of(file: &Path) -> Option<Git> {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let git = |args: &[&str]| {
            let o = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
            o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "HEAD"])?;
        let name = file.file_name()?.to_string_lossy().to_string();
        let dirty = git(&["status", "--porcelain", "--", &name]).is_some_and(|s| !s.is_empty());
        Some(Git { commit, dirty })
    }
}

/// The time now, UTC, as `2026-12-04T19:52:03Z`.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's days-to-civil).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
    /// CRC-32 of each file of the checkpoint, by name (absent in
    /// checkpoints of older blkc: then nothing is verified).
    #[serde(default)]
    pub checksums: BTreeMap<String, u32>,
}

/// A checkpoint found in a run, and why it was chosen when it is not the
/// one `latest` names.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub state: State,
    pub note: Option<String>,
}

/// The lock of a run directory, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
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

    pub fn sources(&self) -> PathBuf {
        self.root.join("source.json")
    }

    /// The weights a run started from (`--init-from`), copied in.
    pub fn init_weights(&self) -> PathBuf {
        self.root.join("init.safetensors")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Takes the run's writer lock (creating the directory), or says which
    /// process holds it. Then removes what killed writers left half-written.
    pub fn lock(&self) -> Result<Lock, String> {
        std::fs::create_dir_all(&self.root).map_err(|e| durable::describe("create", &self.root, &e))?;
        let path = self.root.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| durable::describe("open", &path, &e))?;
        if let Err(e) = file.try_lock() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim();
            let who = if pid.is_empty() { "another process".to_string() } else { format!("process {pid}") };
            return Err(match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "`{}` is being written by {who} (another `blkc train`); one run directory has one writer: \
                     wait for it to finish, stop it, or choose another --out",
                    self.root.display()
                ),
                std::fs::TryLockError::Error(e) => durable::describe("lock", &path, &e),
            });
        }
        // The pid, for the message above; the lock itself is the flock.
        let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
        let _ = durable::remove_temporaries(&self.root);
        Ok(Lock { _file: file })
    }

    /// Prepares the directory for a fresh run (the caller holds the lock).
    /// Refuses a directory holding a run with checkpoints (readable or
    /// not), or checkpoints and metrics without `run.json` (they belong to
    /// something else). A run stopped before its first checkpoint is taken
    /// over: returns a note.
    pub fn create(&self) -> Result<Option<String>, String> {
        let (usable, unusable) = self.survey(Need::Training);
        let has_run = self.info_path().exists();
        if has_run && !usable.is_empty() {
            return Err(format!(
                "`{}` already holds a run; continue it with `--resume {}` or choose another --out",
                self.root.display(),
                self.root.display()
            ));
        }
        if has_run && !unusable.is_empty() {
            // Never written over: their weights may be all that is left of
            // the run.
            return Err(format!(
                "`{}` holds checkpoints blkc cannot continue from ({}); a new run does not start over them: \
                 move them out of `{}` to start again, or choose another --out",
                self.root.display(),
                unusable.join("; "),
                self.checkpoints().display()
            ));
        }
        if !has_run && (!usable.is_empty() || !unusable.is_empty() || self.metrics().exists()) {
            return Err(format!(
                "`{}` holds checkpoints or metrics but no run.json, so it is not a run blkc can continue or \
                 replace; choose another --out, or remove the directory",
                self.root.display()
            ));
        }
        std::fs::create_dir_all(self.checkpoints()).map_err(|e| durable::describe("create", &self.root, &e))?;
        if !has_run {
            return Ok(None);
        }
        let _ = std::fs::remove_file(self.metrics());
        Ok(Some(format!("`{}` held a run stopped before its first checkpoint: starting it again", self.root.display())))
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

    /// The `checkpoints/step-N` directories, by name (complete or not).
    fn step_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return Vec::new() };
        let mut v: Vec<PathBuf> =
            entries.flatten().filter(|e| valid_name(&e.file_name().to_string_lossy())).map(|e| e.path()).collect();
        v.sort();
        v
    }

    /// The checkpoint directories, each read once: those complete for
    /// `need` (a `state.json` that reads, beside a weights file, and for
    /// training an optimiser state) by step, and why each other one cannot
    /// be used.
    fn survey(&self, need: Need) -> (Vec<Found>, Vec<String>) {
        let (mut usable, mut why) = (Vec::new(), Vec::new());
        for path in self.step_dirs() {
            match complete(&path, need) {
                Ok(state) => usable.push(Found { path, state, note: None }),
                Err(e) => why.push(e),
            }
        }
        usable.sort_by_key(|f| f.state.step);
        (usable, why)
    }

    /// Why each checkpoint directory that is not complete for `need`
    /// cannot be used, joined for a message; `None` when every one can
    /// (or there are none).
    pub fn unreadable(&self, need: Need) -> Option<String> {
        let (_, why) = self.survey(need);
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// The newest checkpoint complete for `need`: the one `latest` names,
    /// else (it is missing, damaged, incomplete or points outside the run)
    /// the newest complete one, with a note saying so.
    pub fn latest(&self, need: Need) -> Option<Found> {
        let named = std::fs::read_to_string(self.checkpoints().join("latest")).map(|n| n.trim().to_string());
        let why = match &named {
            Ok(n) if !valid_name(n) => format!("`latest` names `{n}`, which is not a checkpoint of this run"),
            Ok(n) => match complete(&self.checkpoints().join(n), need) {
                Ok(state) => return Some(Found { path: self.checkpoints().join(n), state, note: None }),
                Err(_) if !self.checkpoints().join(n).exists() => format!("`latest` names `{n}`, which is missing"),
                Err(e) => format!("`latest` names `{n}`, which cannot be used ({e})"),
            },
            Err(_) => "`latest` is missing".to_string(),
        };
        let newest = self.survey(need).0.pop()?;
        let note = format!("{why}; using the newest complete checkpoint, {}", newest.path.display());
        Some(Found { note: Some(note), ..newest })
    }

    /// Writes checkpoint `state.step`: `fill` puts the weights and optimiser
    /// state into the directory it is given and returns their checksums.
    pub fn checkpoint(
        &self,
        state: &State,
        fill: impl FnOnce(&Path) -> Result<BTreeMap<String, u32>, String>,
    ) -> Result<PathBuf, String> {
        let name = format!("step-{:08}", state.step);
        let dir = self.checkpoints().join(&name);
        let tmp = durable::temporary(&dir);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| durable::describe("create", &tmp, &e))?;
        let result = self.fill_and_place(state, fill, &tmp, &dir);
        if result.is_err() {
            // A full disk must not be left fuller: the half-written
            // directory goes, the previous checkpoint stays.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        write_atomic(&self.checkpoints().join("latest"), name.as_bytes())?;
        self.prune(&name);
        Ok(dir)
    }

    fn fill_and_place(
        &self,
        state: &State,
        fill: impl FnOnce(&Path) -> Result<BTreeMap<String, u32>, String>,
        tmp: &Path,
        dir: &Path,
    ) -> Result<(), String> {
        let checksums = fill(tmp)?;
        let state = State { checksums, ..state.clone() };
        let text = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
        write_atomic(&tmp.join("state.json"), text.as_bytes())?;
        if dir.exists() {
            // The same step written again (e.g. an interrupt right after a
            // scheduled checkpoint): replace it.
            std::fs::remove_dir_all(dir).map_err(|e| durable::describe("replace", dir, &e))?;
        }
        durable::sync_dir(tmp);
        std::fs::rename(tmp, dir).map_err(|e| durable::describe("move into place", dir, &e))?;
        durable::sync_dir(&self.checkpoints());
        Ok(())
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
        let excess = names.len().saturating_sub(KEEP);
        for n in names.into_iter().take(excess) {
            if n != current {
                let _ = std::fs::remove_dir_all(self.checkpoints().join(n));
            }
        }
    }

    /// Removes the checkpoints after `step` (a run resumed from an older
    /// checkpoint abandons them); returns their names.
    pub fn drop_after(&self, step: u64) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return Vec::new() };
        let mut gone = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let later = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > step);
            if later && std::fs::remove_dir_all(e.path()).is_ok() {
                gone.push(name);
            }
        }
        gone.sort();
        gone
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
        let p = self.metrics();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| durable::describe("write", &p, &e))?;
        writeln!(f, "{line}").map_err(|e| durable::describe("write", &p, &e))
    }
}

/// Whether `name` can be a checkpoint directory of this run (`step-N`, no
/// path separators, nothing that leaves `checkpoints/`).
fn valid_name(name: &str) -> bool {
    name.strip_prefix("step-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a checkpoint is opened for: evaluation and sampling read its
/// weights alone, training (resuming) its optimiser state too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Weights,
    Training,
}

/// The state of `ckpt` when the checkpoint is complete for `need`, else
/// what it lacks.
fn complete(ckpt: &Path, need: Need) -> Result<State, String> {
    let state = read_state(ckpt)?;
    let weights =
        [crate::checkpoint::WEIGHTS, crate::checkpoint::LEGACY_WEIGHTS].iter().any(|w| ckpt.join(w).is_file());
    if !weights {
        return Err(format!("`{}` holds no {}", ckpt.display(), crate::checkpoint::WEIGHTS));
    }
    if need == Need::Training && !ckpt.join("optimizer.bin").is_file() {
        return Err(format!(
            "`{}` holds no optimizer.bin (its weights can start a new run: --init-from)",
            ckpt.display()
        ));
    }
    Ok(state)
}

/// Reads a checkpoint's state.
pub fn read_state(ckpt: &Path) -> Result<State, String> {
    let p = ckpt.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| durable::describe("read", &p, &e))?;
    serde_json::from_str(&text).map_err(|e| format!("`{}` is damaged: {e}", p.display()))
}

/// The weights file of a checkpoint (legacy name where that is what it holds).
pub fn weights(ckpt: &Path) -> PathBuf {
    let legacy = ckpt.join(crate::checkpoint::LEGACY_WEIGHTS);
    if !ckpt.join(crate::checkpoint::WEIGHTS).exists() && legacy.exists() {
        return legacy;
    }
    ckpt.join(crate::checkpoint::WEIGHTS)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An empty run directory of its own for the test `name`.
    pub(in crate::train) fn scratch(name: &str) -> RunDir {
        let d = std::env::temp_dir().join(format!("blkc-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        RunDir::new(&d)
    }

    /// Writes checkpoint `step` of `run` as training does (the newest two
    /// kept), its files stand-ins.
    pub(in crate::train) fn fake(run: &RunDir, step: u64) {
        let state = State { step, loss: 1.0, eval_loss: None, tokens: 0, seconds: 0.0, checksums: BTreeMap::new() };
        let made = run.checkpoint(&state, |d| {
            let _ = std::fs::write(d.join(crate::checkpoint::WEIGHTS), b"w");
            let _ = std::fs::write(d.join("optimizer.bin"), b"o");
            Ok(BTreeMap::new())
        });
        assert!(made.is_ok(), "{made:?}");
    }

    #[test]
    fn days_become_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_791), (2026, 12, 4));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert!(timestamp().ends_with('Z') && timestamp().len() == 20);
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let run = scratch("lock");
        let first = run.lock().unwrap_or_else(|e| panic!("{e}"));
        let err = run.lock().err().unwrap_or_default();
        assert!(err.contains(&format!("process {}", std::process::id())) && err.contains("one writer"), "{err}");
        drop(first);
        assert!(run.lock().is_ok(), "the lock is free once its holder is gone");
        let _ = std::fs::remove_dir_all(&run.root);
    }

    #[test]
    fn a_damaged_latest_falls_back_to_the_newest_complete_checkpoint() {
        let run = scratch("latest");
        let _ = std::fs::create_dir_all(run.checkpoints());
        fake(&run, 4);
        fake(&run, 8);
        assert_eq!(run.latest(Need::Training).map(|f| (f.state.step, f.note.is_none())), Some((8, true)));
        for (text, why) in [
            ("garbage\u{0}", "not a checkpoint"),
            ("../../elsewhere", "not a checkpoint"),
            ("step-00000099", "missing"),
        ] {
            let _ = std::fs::write(run.checkpoints().join("latest"), text);
            let f = run.latest(Need::Training).unwrap_or_else(|| panic!("no fallback for {text:?}"));
            assert_eq!(f.state.step, 8);
            assert!(f.note.as_deref().is_some_and(|n| n.contains(why) && n.contains("step-00000008")), "{:?}", f.note);
        }
        let _ = std::fs::remove_file(run.checkpoints().join("latest"));
        assert!(run.latest(Need::Training).and_then(|f| f.note).is_some_and(|n| n.contains("missing")));
        // An incomplete newest checkpoint is passed over.
        let _ = std::fs::remove_file(run.checkpoints().join("step-00000008/optimizer.bin"));
        assert_eq!(run.latest(Need::Training).map(|f| f.state.step), Some(4));
        let _ = std::fs::remove_dir_all(&run.root);
    }

    #[test]
    fn checkpoints_that_cannot_be_used_are_named_and_never_written_over() {
        let run = scratch("unreadable");
        let _ = std::fs::create_dir_all(run.checkpoints());
        let _ = std::fs::write(run.info_path(), "{}");
        fake(&run, 5);
        let ckpt = run.checkpoints().join("step-00000005");
        // Weights without the optimiser state: enough to evaluate, not to
        // resume.
        let _ = std::fs::remove_file(ckpt.join("optimizer.bin"));
        assert_eq!(run.latest(Need::Weights).map(|f| f.state.step), Some(5));
        assert!(run.latest(Need::Training).is_none());
        assert_eq!(run.unreadable(Need::Weights), None);
        let why = run.unreadable(Need::Training).unwrap_or_default();
        assert!(why.contains("step-00000005") && why.contains("no optimizer.bin"), "{why}");
        let err = run.create().err().unwrap_or_default();
        assert!(err.contains("cannot continue from") && err.contains("no optimizer.bin"), "{err}");
        // A damaged state: no use for anything, and still not replaced.
        let _ = std::fs::write(ckpt.join("state.json"), "{\"step\": 5");
        assert!(run.latest(Need::Weights).is_none());
        let why = run.unreadable(Need::Weights).unwrap_or_default();
        assert!(why.contains("state.json") && why.contains("damaged"), "{why}");
        assert!(run.create().is_err());
        assert!(ckpt.join(crate::checkpoint::WEIGHTS).is_file(), "the weights are still there");
        // Its weights gone too: still a checkpoint directory, still refused.
        let _ = std::fs::remove_file(ckpt.join(crate::checkpoint::WEIGHTS));
        assert!(run.create().is_err());
        let _ = std::fs::remove_dir_all(&run.root);
    }

    #[test]
    fn stray_checkpoints_without_run_json_are_refused_and_an_empty_run_is_taken_over() {
        let run = scratch("create");
        let _ = std::fs::create_dir_all(run.checkpoints());
        fake(&run, 3);
        let err = run.create().err().unwrap_or_default();
        assert!(err.contains("no run.json"), "{err}");
        let _ = std::fs::remove_dir_all(run.checkpoints());
        let _ = std::fs::write(run.info_path(), "{}");
        let _ = std::fs::write(run.metrics(), "{\"step\": 1}\n");
        let note = run.create().unwrap_or_else(|e| panic!("{e}"));
        assert!(note.is_some_and(|n| n.contains("before its first checkpoint")));
        assert!(!run.metrics().exists(), "the stopped run's metrics go");
        let _ = std::fs::remove_dir_all(&run.root);
    }
}
