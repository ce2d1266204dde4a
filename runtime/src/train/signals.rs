//! Stopping a run cleanly. SIGINT (Ctrl-C), SIGTERM (what schedulers,
//! `kill` and `docker stop` send) and SIGHUP (a closed terminal) all ask the
//! training loop to finish its step, write a checkpoint and stop; the exit
//! status is then 128 + the signal (130, 143, 129). A second signal exits at
//! once: checkpoints are atomic, so nothing half-written is left.

use std::sync::atomic::{AtomicI32, Ordering};

/// The first stop signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

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
        eprintln!("warning: cannot install signal handlers; a stop signal will end the run without a checkpoint");
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

/// Records a stop signal: the first asks for a checkpoint, the second quits.
fn stop(sig: i32) {
    if RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        eprintln!("\n{} again: exiting without a new checkpoint", name(sig));
        std::process::exit(128 + sig);
    }
    eprintln!("\n{}: finishing this step and writing a checkpoint (send it again to quit now)", name(sig));
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
