//! Opening what a run left on disk: its saved model (recompiled from
//! `source.json`), its settings (validated as `--set` is), and a
//! checkpoint's weights and optimiser state, each checked against the
//! rebuilt model, so a damaged or foreign file is an error that names it.

use std::path::{Path, PathBuf};

use blkc::graph::{Model as ModelIr, Program};
use blkc::{MemLoader, SourceMap};
use burn::module::Module;
use burn::tensor::backend::Backend;

use super::optim::{Optimizer, Rule};
use super::rundir::{self, Found, InitFrom, Need, RunDir, RunInfo, State};
use super::settings::Settings;
use super::tokenizer::Tokenizer;
use super::{model_of, tokens};
use crate::checkpoint;
use crate::kernels::Kernels;
use crate::model::Model;

/// Recompiles a run's model from the copy of its sources in `source.json`.
pub fn compile_saved(dir: &RunDir) -> Result<(Program, SourceMap), String> {
    let p = dir.sources();
    let text = std::fs::read_to_string(&p).map_err(|e| crate::durable::describe("read", &p, &e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("`{}` is damaged: {e}", p.display()))?;
    let entry = v.get("entry").and_then(|e| e.as_str()).ok_or_else(|| format!("`{}` has no entry", p.display()))?;
    let mut loader = MemLoader::default();
    if let Some(files) = v.get("files").and_then(|f| f.as_object()) {
        for (path, text) in files {
            loader = loader.with(path, text.as_str().unwrap_or_default());
        }
    }
    // The `--set` model settings and params the run was started with.
    let sets: Vec<String> = v
        .get("set")
        .and_then(|s| s.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let c =
        blkc::compile_with(Path::new(entry), &loader, &sets).map_err(|e| format!("cannot rebuild the model: {e}"))?;
    match c.program {
        Some(mut p) => {
            if p.model.is_none() {
                // A bare block trained in the small model: the block
                // run.json names.
                let info = dir.read_info()?;
                p.model = super::small_model(&p, &info.block, &info.model);
            }
            Ok((p, c.sources))
        }
        None => Err(format!(
            "the run's saved model (`{}`) no longer compiles:\n{}",
            p.display(),
            blkc::diag::render_plain(&c.diagnostics, &c.sources)
        )),
    }
}

/// A run's `run.json`, its settings validated.
pub fn read_info(dir: &RunDir) -> Result<RunInfo, String> {
    let info = dir.read_info()?;
    info.settings
        .validate()
        .map_err(|e| format!("`{}` holds settings blkc refuses:\n{e}", dir.info_path().display()))?;
    Ok(info)
}

/// The run directory `path` belongs to, and the checkpoint it names when
/// it is one (`RUN/checkpoints/step-N`) rather than the run itself.
pub fn split(path: &Path) -> (PathBuf, Option<PathBuf>) {
    if path.join("state.json").is_file() {
        return (run_of(path), Some(path.to_path_buf()));
    }
    (path.to_path_buf(), None)
}

/// The run directory of the checkpoint directory `ckpt`
/// (`RUN/checkpoints/step-N`), whether or not it is still there.
fn run_of(ckpt: &Path) -> PathBuf {
    ckpt.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// The checkpoint `path` names: a run directory (its newest checkpoint
/// complete for `need`) or one of its `checkpoints/step-…` directories.
/// `Ok(None)` for a run with no checkpoint yet; an error for one whose
/// checkpoints cannot be used, saying why.
pub fn locate(path: &Path, need: Need) -> Result<(RunDir, Option<Found>), String> {
    if let (root, Some(ckpt)) = split(path) {
        let state = rundir::read_state(&ckpt)?;
        return Ok((RunDir::new(&root), Some(Found { path: ckpt, state, note: None })));
    }
    let dir = RunDir::new(path);
    if !dir.info_path().exists() {
        return Err(format!("`{}` is neither a run directory (no run.json) nor a checkpoint", path.display()));
    }
    let found = dir.latest(need);
    if found.is_none() {
        if let Some(why) = dir.unreadable(need) {
            return Err(format!("`{}` holds no checkpoint blkc can use: {why}", path.display()));
        }
    }
    Ok((dir, found))
}

/// The checkpoint a run is to start from (`--init-from PATH`): PATH's
/// newest complete one, or PATH itself when it is one, fixed now (the run
/// it belongs to may write newer ones).
pub fn init_from(path: &Path) -> Result<InitFrom, String> {
    let (_, found) = locate(path, Need::Weights)?;
    let found = found.ok_or_else(|| format!("`{}` holds no checkpoint yet", path.display()))?;
    let checkpoint = std::path::absolute(&found.path).map_err(|e| crate::durable::describe("find", &found.path, &e))?;
    Ok(InitFrom { checkpoint, step: found.state.step, copy: None, newest: split(path).1.is_none() })
}

/// The checkpoint `init` (`--init-from`) names, found again. Given as a
/// run directory, it may have been removed by that run (it keeps two)
/// since the run starting from it began: then the run's newest one now.
fn init_checkpoint(init: &InitFrom) -> Result<(PathBuf, Found), String> {
    let gone = || {
        format!("the run starts from the weights of `{}`, which is no longer a checkpoint", init.checkpoint.display())
    };
    let run = run_of(&init.checkpoint);
    match locate(&init.checkpoint, Need::Weights) {
        Ok((_, Some(found))) if !init.newest => Ok((init.checkpoint.clone(), found)),
        Ok((_, Some(found))) => Ok((run, found)),
        _ if init.newest => match locate(&run, Need::Weights) {
            Ok((_, Some(found))) => Ok((run, found)),
            _ => Err(gone()),
        },
        _ => Err(gone()),
    }
}

/// A model `build` gives, with the weights of the checkpoint `init`
/// (`--init-from`); and that checkpoint, which is another than `init`'s
/// where the run it was given by removed that one (see
/// [`InitFrom::newest`]).
pub fn load_init<B: Kernels>(
    build: impl Fn() -> Model<B>,
    init: &InitFrom,
    device: &B::Device,
) -> Result<(Model<B>, InitFrom), String> {
    let (path, found) = init_checkpoint(init)?;
    let (model, found) = loaded(&path, found, |f| load_weights(build(), f, device))
        .map_err(|e| format!("--init-from `{}`: {e}", init.checkpoint.display()))?;
    let checkpoint = std::path::absolute(&found.path).unwrap_or(found.path);
    Ok((model, InitFrom { checkpoint, step: found.state.step, ..init.clone() }))
}

/// The tokenizer of the run that wrote the checkpoint `init`.
pub fn init_tokenizer(init: &InitFrom) -> Result<(Tokenizer, PathBuf), String> {
    let (root, _) = split(&init.checkpoint);
    let path = RunDir::new(&root).tokenizer();
    Ok((Tokenizer::load(&path)?, path))
}

/// A checkpoint's weights loaded into `model`, verified against the
/// checksum its state recorded.
pub fn load_weights<B: Kernels>(model: Model<B>, ckpt: &Found, device: &B::Device) -> Result<Model<B>, String> {
    let path = rundir::weights(&ckpt.path);
    let sum = path.file_name().and_then(|n| ckpt.state.checksums.get(n.to_string_lossy().as_ref())).copied();
    checkpoint::load(model, &path, sum, device)
}

/// A checkpoint's optimiser state, verified and checked against `model`
/// and against the checkpoint's step.
pub fn load_optimizer<AB: Backend, B: Kernels, M: Module<AB>>(
    settings: &Settings,
    ckpt: &Found,
    model: &M,
    device: &B::Device,
) -> Result<Optimizer<B>, String> {
    let path = ckpt.path.join("optimizer.bin");
    let sum = ckpt.state.checksums.get("optimizer.bin").copied();
    let opt = Optimizer::load(settings.optimizer_config(), &path, sum, device)?;
    opt.check(model, &path)?;
    if opt.t != ckpt.state.step {
        return Err(format!(
            "`{}` has made {} updates but its checkpoint is at step {}: the two files belong to different runs",
            path.display(),
            opt.t,
            ckpt.state.step
        ));
    }
    let rule = settings.optimizer_config().rule;
    if rule != Rule::Sgd && opt.t > 0 && opt.is_empty() {
        return Err(format!("`{}` holds no moments after {} updates: it is damaged", path.display(), opt.t));
    }
    Ok(opt)
}

/// Refuses a checkpoint the run's settings cannot continue.
pub fn check_state(state: &State, settings: &Settings, ckpt: &Path) -> Result<(), String> {
    if state.step > settings.steps {
        return Err(format!(
            "`{}` is at step {}, past the {} steps the run is set for; give --steps {} or more (with --reschedule)",
            ckpt.display(),
            state.step,
            settings.steps,
            state.step
        ));
    }
    Ok(())
}

/// A run opened for evaluation or sampling.
#[derive(Debug)]
pub struct Opened<B: Kernels> {
    pub dir: RunDir,
    pub checkpoint: PathBuf,
    pub info: RunInfo,
    pub program: Program,
    pub sources: SourceMap,
    pub ir: ModelIr,
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub state: State,
    /// Why another checkpoint than `latest` was opened.
    pub note: Option<String>,
}

/// `load` of the checkpoint `found` in the run or checkpoint at `path`.
/// A run being trained removes its older checkpoints, so the newest one
/// found may be gone by the time it is read: then `load` runs again on
/// the newest one now (a few times at most). A checkpoint named by its own
/// path is read once.
fn loaded<T>(
    path: &Path,
    mut found: Found,
    mut load: impl FnMut(&Found) -> Result<T, String>,
) -> Result<(T, Found), String> {
    let named = split(path).1.is_some();
    for _ in 0..3 {
        match load(&found) {
            Err(_) if !named && !found.path.exists() => match RunDir::new(path).latest(Need::Weights) {
                Some(newer) => found = newer,
                None => break,
            },
            result => return result.map(|t| (t, found)),
        }
    }
    load(&found).map(|t| (t, found))
}

/// Loads the newest checkpoint of a run (or the checkpoint directory
/// given) into a freshly built model.
pub fn open<B: Kernels>(path: &Path, device: &B::Device) -> Result<Opened<B>, String> {
    let (dir, found) = locate(path, Need::Weights)?;
    let found = found.ok_or_else(|| {
        format!(
            "`{}` holds no checkpoint yet (the run stopped before its first); continue it with \
             `blkc train --resume {}`",
            path.display(),
            path.display()
        )
    })?;
    let info = read_info(&dir)?;
    let (program, sources) = compile_saved(&dir)?;
    let ir = model_of(&program)?.clone();
    let tok = Tokenizer::load(&dir.tokenizer())?;
    if tok.vocab_size() > ir.vocab as usize {
        return Err(format!(
            "`{}` has {} tokens, more than the model's vocabulary of {}: it is not this run's tokenizer",
            dir.tokenizer().display(),
            tok.vocab_size(),
            ir.vocab
        ));
    }
    tokens::check_ids(&[tok.end_of_text(), tok.mask()], ir.vocab as usize)?;
    let build = || Model::<B>::build(&program, &ir, info.settings.seed, device);
    let (model, found) = loaded(path, found, |f| load_weights(build(), f, device))?;
    Ok(Opened {
        dir,
        checkpoint: found.path,
        info,
        program,
        sources,
        ir,
        model,
        tokenizer: tok,
        state: found.state,
        note: found.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::rundir::tests::fake;

    /// A run directory of its own for the test `name`, with a `run.json`.
    fn scratch(name: &str) -> RunDir {
        let run = super::super::rundir::tests::scratch(&format!("open-{name}"));
        let _ = std::fs::create_dir_all(run.checkpoints());
        let _ = std::fs::write(run.info_path(), "{}");
        run
    }

    #[test]
    fn a_checkpoint_pruned_while_it_is_opened_gives_way_to_the_newest() {
        let run = scratch("pruned");
        let root = run.root.clone();
        fake(&run, 4);
        let first = run.latest(Need::Weights).unwrap_or_else(|| panic!("no checkpoint"));
        // While step 4 is being read, the run writes 5 and 6 and removes 4.
        let mut seen = Vec::new();
        let got = loaded(&root, first, |f| {
            seen.push(f.state.step);
            if f.state.step == 4 {
                fake(&run, 5);
                fake(&run, 6);
                return Err("cannot read: no such file".into());
            }
            Ok(f.state.step)
        });
        assert_eq!(got.map(|(n, f)| (n, f.state.step)), Ok((6, 6)));
        assert_eq!(seen, vec![4, 6]);
        // A checkpoint named by its path is read once: its failure is the answer.
        let named = run.checkpoints().join("step-00000006");
        let state = rundir::read_state(&named).unwrap_or_else(|e| panic!("{e}"));
        let mut calls = 0;
        let got = loaded(&named, Found { path: named.clone(), state, note: None }, |_| {
            calls += 1;
            let _ = std::fs::remove_dir_all(&named);
            Err::<(), _>("gone".to_string())
        });
        assert!(got.is_err() && calls == 1, "{calls}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_run_started_from_a_run_that_trains_on_takes_its_newest_checkpoint() {
        let run = scratch("init");
        let root = run.root.clone();
        fake(&run, 4);
        let by_run = init_from(&root).unwrap_or_else(|e| panic!("{e}"));
        let by_path = init_from(&root.join("checkpoints/step-00000004")).unwrap_or_else(|e| panic!("{e}"));
        assert!(by_run.newest && !by_path.newest);
        assert_eq!(init_checkpoint(&by_run).map(|(_, f)| f.state.step), Ok(4));
        // The run writes 5 and 6 and removes 4 before the weights are read.
        fake(&run, 5);
        fake(&run, 6);
        assert_eq!(init_checkpoint(&by_run).map(|(_, f)| f.state.step), Ok(6));
        let err = init_checkpoint(&by_path).err().unwrap_or_default();
        assert!(err.contains("no longer a checkpoint"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
