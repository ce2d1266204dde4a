//! Output that cannot be written: a pipe whose reader left (`blkc graph
//! m.blk | head -1`), a full disk behind `>`, a terminal that went away.
//! Each used to end in a panic (exit 101 and a backtrace), or, for `blkc
//! sample`, in a generation that never stopped (`src/output.rs`).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::train::{blkc, command, losses, ok, scratch, text, tiny};

/// A pipe whose reading end is already closed: every write fails with
/// `BrokenPipe`, as after `| head` has taken its lines.
fn abandoned() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap_or_else(|e| panic!("{e}"));
    drop(reader);
    writer.into()
}

/// `c` run to its end, `limit` at most (killed after: a hang fails).
fn within(mut c: Command, limit: Duration) -> Output {
    let mut child = c.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    while child.try_wait().unwrap_or_else(|e| panic!("{e}")).is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            panic!("still running after {limit:?}:\n{}", text(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

fn no_panic(o: &Output, what: &str) {
    let err = text(&o.stderr);
    assert!(!err.contains("panicked") && o.status.code() != Some(101), "{what} panicked:\n{err}");
}

/// A tiny trained run in `d/run` (10 steps).
fn trained(d: &Path) {
    tiny(d, "sas_p", "causal", 258, "steps = 10");
    ok(&blkc(d, &["train", "tiny.blk", "--out", "run"]));
}

#[test]
fn a_reader_that_left_is_no_error() {
    let d = scratch("abandoned");
    trained(&d);
    let commands: [&[&str]; 9] = [
        &["check", "tiny.blk"],
        &["check", "--format", "json", "tiny.blk"],
        &["check", "skipless-naive.blk"],
        &["graph", "tiny.blk"],
        &["params", "tiny.blk"],
        &["fmt", "--check", "tiny.blk"],
        &["eval", "run"],
        &["export", "run", "--out", "w.safetensors"],
        &["--help"],
    ];
    for args in commands {
        let what = args.join(" ");
        let read = blkc(&d, args);
        let mut c = command(&d, args);
        c.stdout(abandoned());
        let gone = within(c, Duration::from_secs(60));
        no_panic(&gone, &what);
        // The status is the command's own: `check` still says rejected.
        assert_eq!(gone.status.code(), read.status.code(), "{what}:\n{}", text(&gone.stderr));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn sampling_stops_when_nobody_reads() {
    let d = scratch("sample-abandoned");
    trained(&d);
    // A hundred million tokens: only stopping at the closed pipe ends it.
    let mut c = command(&d, &["sample", "run", "--tokens", "100000000", "--temperature", "0", "--ignore-eot"]);
    c.stdout(abandoned());
    let o = within(c, Duration::from_secs(60));
    no_panic(&o, "sample");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(&d);
}

#[cfg(target_os = "linux")]
#[test]
fn output_lost_to_a_full_disk_fails_the_command() {
    let d = scratch("full");
    tiny(&d, "sas_p", "causal", 258, "");
    for args in [&["graph", "tiny.blk"][..], &["params", "tiny.blk"], &["check", "tiny.blk"]] {
        let full = std::fs::File::create("/dev/full").unwrap_or_else(|e| panic!("/dev/full: {e}"));
        let mut c = command(&d, args);
        c.stdout(full);
        let o = within(c, Duration::from_secs(60));
        no_panic(&o, &args.join(" "));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: a lost output is a failure:\n{err}");
        assert!(err.contains("could not write the output") && err.contains("No space left"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn training_goes_on_without_its_terminal() {
    let d = scratch("headless");
    tiny(&d, "sas_p", "causal", 258, "steps = 12");
    let mut c = command(&d, &["train", "tiny.blk", "--out", "run"]);
    c.stdout(abandoned());
    // Standard error closed as well: the progress lines go nowhere.
    let (reader, writer) = std::io::pipe().unwrap_or_else(|e| panic!("{e}"));
    drop(reader);
    let status = c.stdin(Stdio::null()).stderr(writer).status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
    let run = d.join("run");
    assert_eq!(losses(&run).len(), 12, "every step trained and logged");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap_or_default();
    assert_eq!(latest.trim(), "step-00000012");
    let _ = std::fs::remove_dir_all(&d);
}
