//! Stopping a run cleanly. SIGINT (Ctrl-C), SIGTERM (what schedulers,
//! `kill` and `docker stop` send) and SIGHUP (a closed terminal) all ask the
//! training loop to finish its step, write a checkpoint and stop; the exit
//! status is then 128 + the signal (130, 143, 129). A second signal exits at
//! once: checkpoints are atomic, so nothing half-written is left.
//!
//! While a run is still being prepared (its tokenizer trained, its corpus
//! encoded: minutes on a large corpus), there is no step to finish and
//! nothing to save: a stop signal exits at once, removing a fresh run's
//! directory as a failed start does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// The first stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Whether a run's steps have begun (a signal then asks for a checkpoint).
static TRAINING: AtomicBool = AtomicBool::new(false);

/// The fresh run being prepared: its directory, and the file whose
/// presence makes it a run to keep.
static FRESH: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

/// A run is being prepared: a stop signal exits at once, removing `fresh`
/// (a new run directory, and its `run.json`) unless that file exists by
/// then.
pub fn preparing(fresh: Option<(PathBuf, PathBuf)>) {
    *FRESH.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    TRAINING.store(false, Ordering::SeqCst);
}

/// The run's steps begin: a stop signal now finishes the step and saves.
pub fn training() {
    TRAINING.store(true, Ordering::SeqCst);
    *FRESH.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
}

/// SIGINT's number, for code that stops as if interrupted (`--stop-at`).
pub const SIGINT: i32 = 2;

/// Installs the handlers (once per process).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(listen);
}

#[cfg(unix)]
fn listen() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        errln!("warning: cannot install signal handlers; a stop signal will end the run without a checkpoint");
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            stop(sig);
        }
    });
}

#[cfg(not(unix))]
fn listen() {
    let _ = ctrlc::set_handler(|| stop(SIGINT));
}

/// Records a stop signal: the first asks for a checkpoint, the second quits;
/// before the steps, the first quits.
fn stop(sig: i32) {
    if !TRAINING.load(Ordering::SeqCst) {
        errln!("\n{}: stopping before the first step (nothing to save)", name(sig));
        if let Some((root, keep)) = FRESH.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            if !keep.exists() {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        std::process::exit(128 + sig);
    }
    if RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        errln!("\n{} again: exiting without a new checkpoint", name(sig));
        std::process::exit(128 + sig);
    }
    errln!("\n{}: finishing this step and writing a checkpoint (send it again to quit now)", name(sig));
}

/// The stop signal received so far, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status of a run stopped by `sig`: 128 + its number.
pub fn exit_status(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

/// How a signal is named to the user.
pub fn name(sig: i32) -> &'static str {
    match sig {
        1 => "hang-up (SIGHUP)",
        2 => "interrupted (SIGINT)",
        15 => "terminated (SIGTERM)",
        _ => "stop signal",
    }
}
