//! The progress line on stderr: step, loss, tokens/s and ETA. Redrawn in
//! place on a terminal; printed every `log_every` steps otherwise (logs,
//! CI), so the output stays readable in both.

use std::io::{IsTerminal, Write};
use std::time::Instant;

#[derive(Debug)]
pub struct Progress {
    total: u64,
    start_step: u64,
    started: Instant,
    terminal: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(start_step: u64, total: u64, quiet: bool) -> Progress {
        Progress { total, start_step, started: Instant::now(), terminal: std::io::stderr().is_terminal(), quiet }
    }

    /// After step `step` (1-based count of steps done).
    pub fn update(&self, step: u64, loss: f64, lr: f64, tokens_per_s: f64, eval: Option<f64>, log_line: bool) {
        if self.quiet || (!self.terminal && !log_line && eval.is_none()) {
            return;
        }
        let done = step.saturating_sub(self.start_step);
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = self.total.saturating_sub(step);
        let eta = if done > 0 { elapsed / done as f64 * left as f64 } else { 0.0 };
        let width = 24;
        let filled = (width as u64 * step / self.total.max(1)) as usize;
        let bar: String = (0..width)
            .map(|i| {
                if i < filled {
                    '='
                } else if i == filled {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        let eval = eval.map(|e| format!(" | eval {e:.4}")).unwrap_or_default();
        let line = format!(
            "step {step:>w$}/{} [{bar}] loss {loss:.4}{eval} | lr {lr:.2e} | {} tok/s | eta {}",
            self.total,
            thousands(tokens_per_s),
            clock(eta),
            w = self.total.to_string().len()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let end = if eval.is_empty() && !log_line { "" } else { "\n" };
            let _ = write!(err, "\r\x1b[2K{line}{end}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Ends an in-place line.
    pub fn finish(&self) {
        if self.terminal && !self.quiet {
            errln!();
        }
    }
}

pub use blkc::graph::render::thousands;

/// Seconds as `1h02m`, `3m05s` or `42s`.
pub fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(clock(3725.0), "1h02m");
        assert_eq!(clock(185.0), "3m05s");
        assert_eq!(clock(7.0), "7s");
    }
}
