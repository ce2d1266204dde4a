//! The metrics of a run for the tools users read them with, beside
//! `metrics.jsonl` (the record every other file is made from):
//!
//! - `metrics.csv`: one row per logged step, a column per metric and per
//!   trainable gain (`gain.<layer>.<name>`), for spreadsheets and pandas;
//! - `tensorboard/events.out.tfevents.*`: TensorBoard's event file, the
//!   same scalars under `train/…`, `eval/loss` and `gains/…`.
//!
//! Both are rebuilt from `metrics.jsonl` whenever a run starts or resumes
//! (so a resumed run, which drops the lines after its checkpoint, never
//! shows the abandoned steps), then appended to line by line.
//!
//! TensorBoard's format is TFRecord: each record is its length (u64 LE),
//! the masked CRC-32C of the length, the data, the masked CRC-32C of the
//! data; the data is a serialised `tensorflow.Event` protocol buffer, which
//! the few fields needed here make easy to write by hand.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::durable;

/// Columns of `metrics.csv` before the gains.
const COLUMNS: &[&str] = &["step", "loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "tokens", "elapsed_s"];

/// The open `metrics.csv` (with its columns) and TensorBoard file of a
/// run, appended to as lines are logged.
#[derive(Debug)]
pub struct Logs {
    csv: (std::fs::File, PathBuf),
    /// Fixed by the first line (the gains are the same on every line).
    columns: Option<Vec<String>>,
    events: (std::fs::File, PathBuf),
}

impl Logs {
    /// Rebuilds `metrics.csv` and the TensorBoard file of the run in `dir`
    /// from its `metrics.jsonl`, and keeps them open for [`Logs::append`].
    pub fn rebuild(dir: &Path) -> Result<Logs, String> {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
        let csv = dir.join("metrics.csv");
        let _ = std::fs::remove_file(&csv);
        let tb = dir.join("tensorboard");
        let _ = std::fs::remove_dir_all(&tb);
        std::fs::create_dir_all(&tb).map_err(|e| durable::describe("create", &tb, &e))?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let events = tb.join(format!("events.out.tfevents.{secs}.blkc"));
        let mut logs = Logs { csv: (open_append(&csv)?, csv), columns: None, events: (open_append(&events)?, events) };
        logs.events.0.write_all(&record(&event(secs as f64, 0, Body::Version))).map_err(|e| logs.events_error(&e))?;
        for line in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            logs.append(&line)?;
        }
        Ok(logs)
    }

    /// Appends one metrics line: a row of `metrics.csv`, an event.
    pub fn append(&mut self, line: &serde_json::Value) -> Result<(), String> {
        self.append_csv(line)?;
        if let Some(e) = events(line) {
            self.events.0.write_all(&e).map_err(|e| self.events_error(&e))?;
        }
        Ok(())
    }

    fn events_error(&self, e: &std::io::Error) -> String {
        durable::describe("write", &self.events.1, e)
    }

    fn append_csv(&mut self, line: &serde_json::Value) -> Result<(), String> {
        let (f, path) = &mut self.csv;
        let columns = match &self.columns {
            Some(c) => c,
            None => {
                let mut c: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
                if let Some(g) = line.get("gains").and_then(|g| g.as_object()) {
                    c.extend(g.keys().map(|k| format!("gain.{k}")));
                }
                writeln!(f, "{}", c.join(",")).map_err(|e| durable::describe("write", path, &e))?;
                self.columns.insert(c)
            }
        };
        let cell = |c: &String| {
            let v = match c.strip_prefix("gain.") {
                Some(g) => line.get("gains").and_then(|gs| gs.get(g)),
                None => line.get(c.as_str()),
            };
            v.map(|v| v.to_string()).unwrap_or_default()
        };
        let row: Vec<String> = columns.iter().map(cell).collect();
        writeln!(f, "{}", row.join(",")).map_err(|e| durable::describe("write", path, &e))
    }
}

fn open_append(p: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| durable::describe("write", p, &e))
}

/// The TensorBoard record of a metrics line (`None` without a step).
fn events(line: &serde_json::Value) -> Option<Vec<u8>> {
    let step = line.get("step").and_then(|s| s.as_i64())?;
    let mut values: Vec<(String, f32)> = Vec::new();
    for (key, tag) in [
        ("loss", "train/loss"),
        ("lr", "train/lr"),
        ("grad_norm", "train/grad_norm"),
        ("tokens_per_s", "train/tokens_per_s"),
        ("eval_loss", "eval/loss"),
    ] {
        if let Some(x) = line.get(key).and_then(|x| x.as_f64()) {
            values.push((tag.to_string(), x as f32));
        }
    }
    if let Some(g) = line.get("gains").and_then(|g| g.as_object()) {
        values.extend(g.iter().filter_map(|(k, v)| v.as_f64().map(|x| (format!("gains/{k}"), x as f32))));
    }
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Some(record(&event(wall, step, Body::Scalars(&values))))
}

/// What an event carries.
enum Body<'a> {
    /// The file's first event: its format version.
    Version,
    Scalars(&'a [(String, f32)]),
}

/// A `tensorflow.Event`: wall_time (1, double), step (2, int64),
/// file_version (3, string) or summary (5, `Summary`).
fn event(wall: f64, step: i64, body: Body) -> Vec<u8> {
    let mut e = vec![0x09];
    e.extend_from_slice(&wall.to_le_bytes());
    e.push(0x10);
    varint(&mut e, step as u64);
    match body {
        Body::Version => bytes_field(&mut e, 3, b"brain.Event:2"),
        Body::Scalars(values) => {
            // Summary: repeated Value (1); Value: tag (1), simple_value (2, float).
            let mut summary = Vec::new();
            for (tag, x) in values {
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes());
                v.push(0x15);
                v.extend_from_slice(&x.to_le_bytes());
                bytes_field(&mut summary, 1, &v);
            }
            bytes_field(&mut e, 5, &summary);
        }
    }
    e
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One TFRecord.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut r = Vec::with_capacity(data.len() + 16);
    r.extend_from_slice(&len);
    r.extend_from_slice(&masked_crc(&len).to_le_bytes());
    r.extend_from_slice(data);
    r.extend_from_slice(&masked_crc(data).to_le_bytes());
    r
}

/// TFRecord's checksum: CRC-32C, rotated and offset.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bit by byte with a table built once.
fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// Reads the records back, checking both checksums of each.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap_or_default());
            assert_eq!(crc, masked_crc(len_bytes), "length checksum");
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap_or_default());
            assert_eq!(crc, masked_crc(data), "data checksum");
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    #[test]
    fn csv_and_events_follow_metrics_jsonl() {
        let dir = std::env::temp_dir().join(format!("blkc-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let line =
            |s: u64| serde_json::json!({"step": s, "loss": 5.0 - s as f64, "lr": 1e-3, "gains": {"0.beta_ff": 0.1}});
        let jsonl: String = (1..=3).map(|s| format!("{}\n", line(s))).collect();
        let _ = std::fs::write(dir.join("metrics.jsonl"), jsonl);
        let mut logs = Logs::rebuild(&dir).unwrap_or_else(|e| panic!("{e}"));
        logs.append(&serde_json::json!({"step": 4, "loss": 1.5, "eval_loss": 1.75, "gains": {"0.beta_ff": 0.2}}))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(logs);
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap_or_default();
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows[0], "step,loss,eval_loss,lr,grad_norm,tokens_per_s,tokens,elapsed_s,gain.0.beta_ff");
        assert_eq!(rows[1], "1,4.0,,0.001,,,,,0.1");
        assert_eq!(rows[4], "4,1.5,1.75,,,,,,0.2");
        let file = std::fs::read_dir(dir.join("tensorboard")).ok().and_then(|mut e| e.next()).and_then(Result::ok);
        let events = std::fs::read(file.map(|f| f.path()).unwrap_or_default()).unwrap_or_default();
        let recs = records(&events);
        assert_eq!(recs.len(), 5, "the version event and one per line");
        assert!(recs[0].windows(13).any(|w| w == b"brain.Event:2"));
        assert!(recs[4].windows(9).any(|w| w == b"eval/loss") && recs[4].windows(13).any(|w| w == b"gains/0.beta_"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
