//! `blkc tokenize DATA --tokenizer T --out DIR`: a text corpus as token
//! files (`DIR/train.bin` and `DIR/val.bin`, or `.npy` for vocabularies
//! over 65,536), split and packed exactly as `blkc train` splits and packs
//! the text, so that training on DIR sees the same batches as training on
//! DATA. The text is read one file at a time and the ids written as they
//! come, so a corpus of any size is tokenised in bounded memory; `blkc
//! train` then reads the files window by window (`train/token_files.rs`).

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{OK, REJECTED};
use crate::durable;
use crate::train::token_files::npy_header;
use crate::train::tokenizer::{self, Kind, Tokenizer};
use crate::train::{data, made_by};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The text: a directory, a file, a glob or `python-stdlib`, as
    /// `data` in a train section.
    pub data: String,
    /// `bytes`, a tokenizer.json (a run's own: `runs/NAME/tokenizer.json`),
    /// or `bpe`: a byte-level BPE of `--vocab` tokens trained on the
    /// training split, written to `DIR/tokenizer.json`.
    #[arg(long)]
    pub tokenizer: String,
    /// Tokens of the BPE to train (with `--tokenizer bpe`), as the model's
    /// `vocab`.
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Bytes of text the BPE is trained on: an evenly spread sample of the
    /// training split (`500M`, `2G`; `0` for all of it). A split no larger
    /// is used whole, and the BPE is then the one `blkc train` trains.
    #[arg(long, default_value = "1G", value_parser = bytes_setting)]
    pub sample_bytes: u64,
    /// The directory to write `train.*` and `val.*` to (made if missing;
    /// token files already there are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Share of the documents that validate, as `val_fraction` in a train
    /// section (the same documents are chosen).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// The text field of JSON-lines records, as `data_field`.
    #[arg(long, default_value = "text")]
    pub data_field: String,
}

pub fn run(args: &Args) -> u8 {
    match tokenize(args) {
        Ok(()) => OK,
        Err(e) => {
            errln!("error: {e}");
            REJECTED
        }
    }
}

fn tokenize(args: &Args) -> Result<(), String> {
    let start = Instant::now();
    if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
        return Err(format!("--val-fraction must be above 0 and below 1, not {}", args.val_fraction));
    }
    let kind = Kind::parse(&args.tokenizer);
    let trains = kind.is_some_and(|k| k != Kind::Bytes);
    match (trains, args.vocab) {
        (true, None) => return Err(format!("--tokenizer {} needs --vocab (the model's `vocab`)", args.tokenizer)),
        (false, Some(_)) => return Err("--vocab is for a tokenizer to train (`--tokenizer bpe`)".into()),
        (true, Some(v)) => tokenizer::bpe_vocab(v)?,
        _ => {}
    }
    let loaded = match kind {
        Some(Kind::Bytes) => Some(Tokenizer::Bytes),
        Some(_) => None,
        None => Some(Tokenizer::load(Path::new(&args.tokenizer))?),
    };
    let mut outputs = vec!["train.bin", "train.npy", "val.bin", "val.npy"];
    if trains {
        outputs.push("tokenizer.json");
    }
    outputs.push(made_by::FILE);
    if let Some(p) = outputs.iter().map(|f| args.out.join(f)).find(|p| p.exists()) {
        return Err(format!(
            "`{}` exists; choose another --out (what `tokenize` writes is never overwritten)",
            p.display()
        ));
    }
    let plan = data::plan(&args.data, args.val_fraction, &args.data_field, true)?;
    errln!(
        "data: `{}`: {} training and {} validation documents; skipped: {}",
        args.data,
        plan.documents(false),
        plan.documents(true),
        plan.skipped.describe()
    );
    std::fs::create_dir_all(&args.out).map_err(|e| durable::describe("create", &args.out, &e))?;
    let named = write_all(args, &plan, loaded, start)?;
    errln!(
        "tokenised in {:.1} s; train on it with `data = \"{}\"` and `tokenizer = \"{}\"`",
        start.elapsed().as_secs_f64(),
        args.out.display(),
        named
    );
    Ok(())
}

/// Writes the tokenizer (when it is trained here: `loaded` is `None`) and
/// the token files of both splits; returns the tokenizer's name for the
/// settings. What it wrote is removed if it fails before the end, so that
/// a second try finds nothing of the first in its way.
fn write_all(args: &Args, plan: &data::Plan, loaded: Option<Tokenizer>, start: Instant) -> Result<String, String> {
    let mut written = Vec::new();
    let done = write_outputs(args, plan, loaded, &mut written, start);
    if done.is_err() {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
    }
    done
}

/// [`write_all`]'s work, each path into `written` once it is there.
fn write_outputs(
    args: &Args,
    plan: &data::Plan,
    loaded: Option<Tokenizer>,
    written: &mut Vec<PathBuf>,
    start: Instant,
) -> Result<String, String> {
    let (tok, named) = match loaded {
        Some(t) => (t, args.tokenizer.clone()),
        None => {
            let path = args.out.join("tokenizer.json");
            let t = train_bpe(plan, args.vocab.unwrap_or(0), args.sample_bytes)?;
            t.save(&path)?;
            written.push(path.clone());
            outln!("{}: a byte-level BPE of {} tokens", path.display(), t.vocab_size());
            (t, path.display().to_string())
        }
    };
    let wide = tok.vocab_size() > 1 << 16;
    for (valid, stem) in [(false, "train"), (true, "val")] {
        let path = args.out.join(format!("{stem}.{}", if wide { "npy" } else { "bin" }));
        // The split's own failure (a file changed, an encoding error), kept
        // apart from the writer's.
        let (mut failed, mut count) = (None, 0);
        let done = durable::write_atomic_with(&path, |out| {
            if wide {
                // Rewritten with the count when finished.
                out.write_all(&npy_header("<u4", 0))?;
            }
            let mut ids = Ids { path: &path, out, wide, count: 0 };
            if let Err(e) = write_split(plan, valid, &tok, &mut ids, start) {
                failed = Some(e);
                return Err(std::io::Error::other("the split failed"));
            }
            count = ids.count;
            if wide {
                out.flush()?;
                let file = out.get_mut();
                file.rewind()?;
                file.write_all(&npy_header("<u4", count))?;
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        done?;
        written.push(path.clone());
        outln!("{}: {} tokens of {} documents", path.display(), count, plan.documents(valid));
    }
    // Which tokenizer made the ids, for the runs that read them.
    written.push(made_by::write(&args.out, &tok, &named)?);
    Ok(named)
}

/// A byte-level BPE of `vocab` tokens trained on an evenly spread sample of
/// `budget` bytes of the plan's training split (all of it for 0).
fn train_bpe(plan: &data::Plan, vocab: usize, budget: u64) -> Result<Tokenizer, String> {
    let start = Instant::now();
    let total = plan.bytes(false);
    let budget = if budget == 0 { total } else { budget.min(total) };
    let sample = plan.sample(budget);
    let which = if budget < total { "an evenly spread sample of " } else { "" };
    errln!(
        "tokenizer: training a byte-level BPE of {vocab} tokens on {which}{:.1} MB of the {:.1} MB training split…",
        budget as f64 / 1e6,
        total as f64 / 1e6
    );
    let t = tokenizer::train_bpe_streamed(vocab, |give| {
        let (mut told, mut given) = (Instant::now(), 0u64);
        let read = sample.texts(|_, text| {
            given += text.len() as u64;
            if told.elapsed().as_secs() >= 10 {
                told = Instant::now();
                errln!("tokenizer: {:.0} of the sample's {:.0} MB read", given as f64 / 1e6, budget as f64 / 1e6);
            }
            if give(text) {
                Ok(())
            } else {
                Err("stopped".into())
            }
        });
        if read.is_ok() {
            errln!("tokenizer: text read in {:.0} s; merging pairs…", start.elapsed().as_secs_f64());
        }
        read
    })?;
    errln!("tokenizer: trained in {:.1} s", start.elapsed().as_secs_f64());
    // A model of `vocab` tokens would refuse this tokenizer (E5002): say so
    // before the corpus is encoded.
    if t.vocab_size() < vocab {
        let more = if budget < total { "a larger --sample-bytes" } else { "more text" };
        return Err(format!(
            "the training text gave a BPE of only {} tokens, not {vocab}: give --vocab {} (and the model \
             `vocab = {}`), or {more}",
            t.vocab_size(),
            t.vocab_size(),
            t.vocab_size()
        ));
    }
    Ok(t)
}

/// A number of bytes: digits with an optional `K`, `M`, `G` or `T`
/// (powers of 1,000, as the sizes printed), e.g. `500M` or `1.5G`.
fn bytes_setting(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                'T' => 1e12,
                _ => return Err(format!("`{s}`: the unit is K, M, G or T")),
            };
            (&t[..i], scale)
        }
        _ => (t, 1.0),
    };
    match num.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale < 1.8e19 => Ok((n * scale) as u64),
        _ => Err(format!("`{s}` is not a number of bytes (e.g. 500M, 2G, or 0 for all)")),
    }
}

/// Bytes of text encoded at once (the tokenizer works on a group in
/// parallel).
const GROUP_BYTES: usize = 8 << 20;

/// The split's documents, encoded and each followed by the end of text, as
/// `train/tokens.rs` packs them.
fn write_split(
    plan: &data::Plan,
    valid: bool,
    tok: &Tokenizer,
    ids: &mut Ids<'_>,
    start: Instant,
) -> Result<(), String> {
    let mut group: Vec<String> = Vec::new();
    let mut bytes = 0;
    let (mut done, total) = (0usize, plan.documents(valid));
    let mut told = Instant::now();
    let mut flush = |group: &mut Vec<String>, ids: &mut Ids<'_>| -> Result<(), String> {
        let texts: Vec<&str> = group.iter().map(String::as_str).collect();
        for doc in tok.encode_all(&texts)? {
            ids.push(&doc)?;
            ids.push(&[tok.end_of_text()])?;
        }
        done += group.len();
        group.clear();
        if told.elapsed().as_secs() >= 10 {
            told = Instant::now();
            let split = if valid { "validation" } else { "training" };
            errln!("{done} of {total} {split} documents ({:.0} s)", start.elapsed().as_secs_f64());
        }
        Ok(())
    };
    plan.texts(valid, |_, text| {
        group.push(text.to_string());
        bytes += text.len();
        if bytes >= GROUP_BYTES || group.len() >= 1024 {
            bytes = 0;
            flush(&mut group, ids)?;
        }
        Ok(())
    })?;
    flush(&mut group, ids)
}

/// The ids of a token file being written (through
/// [`durable::write_atomic_with`]): u32 in a `.npy`, else u16 in a `.bin`.
struct Ids<'a> {
    path: &'a Path,
    out: &'a mut std::io::BufWriter<std::fs::File>,
    wide: bool,
    count: u64,
}

impl Ids<'_> {
    fn push(&mut self, ids: &[u32]) -> Result<(), String> {
        let bytes: Vec<u8> = if self.wide {
            ids.iter().flat_map(|i| i.to_le_bytes()).collect()
        } else {
            // Ids fit: the vocabulary has at most 65,536 tokens.
            ids.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect()
        };
        self.count += ids.len() as u64;
        self.out.write_all(&bytes).map_err(|e| durable::describe("write", self.path, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("blkc-tokenize-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let corpus = dir.join("corpus");
        std::fs::create_dir_all(&corpus).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..6 {
            std::fs::write(corpus.join(format!("f{i}.txt")), format!("text {i}\n").repeat(50))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let args = Args {
            data: corpus.display().to_string(),
            tokenizer: "bpe".into(),
            vocab: Some(260),
            sample_bytes: 0,
            out: dir.join("out"),
            val_fraction: 0.3,
            data_field: "text".into(),
        };
        let plan = data::plan(&args.data, args.val_fraction, &args.data_field, false).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&args.out).unwrap_or_else(|e| panic!("{e}"));
        // A validation document gone after the plan: the tokenizer and the
        // training file are written, then the validation split fails.
        let mut valid = Vec::new();
        plan.texts(true, |name, _| {
            valid.push(corpus.join(name));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let gone = valid.first().unwrap_or_else(|| panic!("no validation"));
        std::fs::remove_file(gone).unwrap_or_else(|e| panic!("{e}"));
        let e = write_all(&args, &plan, None, Instant::now()).err().unwrap_or_default();
        assert!(e.contains("changed while it was tokenised"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&args.out).unwrap_or_else(|e| panic!("{e}")).flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_read_with_their_units() {
        assert_eq!(bytes_setting("0"), Ok(0));
        assert_eq!(bytes_setting("1G"), Ok(1_000_000_000));
        // The default sample is the one `blkc train` takes: the same BPE.
        let default = <Args as clap::Args>::augment_args(clap::Command::new("tokenize"))
            .get_arguments()
            .find(|a| a.get_id() == "sample_bytes")
            .and_then(|a| a.get_default_values().first().map(|v| v.to_string_lossy().to_string()))
            .unwrap_or_default();
        assert_eq!(bytes_setting(&default), Ok(crate::train::plan::BPE_SAMPLE_BYTES));
        assert_eq!(bytes_setting("1.5m"), Ok(1_500_000));
        assert_eq!(bytes_setting("4096"), Ok(4096));
        for bad in ["", "G", "-1M", "2X", "nanG", "1e30"] {
            assert!(bytes_setting(bad).is_err(), "{bad}");
        }
    }
}
