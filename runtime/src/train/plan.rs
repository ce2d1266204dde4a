//! A text corpus named and split as `data::load` splits it, its texts not
//! held, nor anything per document: `blkc tokenize` reads the files again
//! one at a time, in the order of their documents' names, so that a corpus
//! of any size, and of any number of documents, is tokenised (and a BPE
//! trained on a sample of it) in memory bounded by its largest file and its
//! count of files.
//!
//! `load` sorts every document by name (`path`; `path:LINE` for a record
//! of a JSON-lines file, `path:K` for a piece of a large text file) and
//! splits them by the hash of that name. The same order comes without
//! holding the names: files sorted by `path` (a text file) or `path:` (a
//! file of numbered documents), and a file's records or pieces by their
//! numbers as strings (1, 10, 11, …, 2, 20, …), which `lexicographic`
//! counts out. The two orders differ only where a file's path starts with
//! `path:` of a file of numbered documents (`r.jsonl:2.txt` beside
//! `r.jsonl`), which is refused.

use std::fmt::Write;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

use super::data::{
    documents, find, giving_side, holds, in_validation, name_in, no_text, read, records, split_tail, tokenised,
    Holdout, Holds, Skipped,
};
use super::lines::Lines;
use super::pieces::Pieces;

/// One file of a [`Plan`]: its documents on each side.
#[derive(Debug, Clone)]
struct Planned {
    path: PathBuf,
    /// Its name, relative to the corpus root (its documents' name, or
    /// their prefix).
    name: String,
    holds: Holds,
    /// Its documents for training and for validation.
    documents: [u64; 2],
}

impl Planned {
    /// What its documents' names sort by, before their numbers.
    fn key(&self) -> String {
        if self.holds == Holds::One {
            self.name.clone()
        } else {
            format!("{}:", self.name)
        }
    }

    /// Its numbered documents (records or pieces), to be read by number.
    fn numbered<'f>(&self, field: &'f str) -> Result<Numbered<'f>, String> {
        Ok(match self.holds {
            Holds::Pieces => Numbered::Pieces(
                Pieces::open(&self.path)
                    .map_err(|_| format!("`{}` changed while it was tokenised", self.path.display()))?,
            ),
            _ => Numbered::Records(Lines::index(&self.path)?, field),
        })
    }
}

/// The documents of a JSON-lines file or of a large text file, by number.
enum Numbered<'f> {
    /// Its lines, and the field that holds a record's text.
    Records(Lines, &'f str),
    Pieces(Pieces),
}

impl Numbered<'_> {
    /// Numbers in the file (not every line is a record).
    fn count(&mut self) -> usize {
        match self {
            Numbered::Records(lines, _) => lines.count(),
            Numbered::Pieces(pieces) => pieces.count(),
        }
    }

    /// The document numbered `n` (from 1), where there is one.
    fn get(&mut self, n: usize) -> Option<String> {
        match self {
            Numbered::Records(lines, field) => record(lines, n, field),
            Numbered::Pieces(pieces) => pieces.piece(n),
        }
    }
}

/// A document's place: its file (in the order found) and, for a record,
/// its line; its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    file: usize,
    line: Option<usize>,
    bytes: u64,
}

/// A document's name and place.
type Named = (String, At);

/// A text corpus named and split as [`load`](super::data::load) splits it, without holding
/// its text or a name per document: the documents are read again, file by
/// file, by [`Plan::texts`] (`blkc tokenize`, for corpora larger than memory).
#[derive(Debug)]
pub struct Plan {
    /// The files with documents, in the order of their documents' names.
    files: Vec<Planned>,
    /// Documents and their bytes, for training and for validation.
    documents: [u64; 2],
    bytes: [u64; 2],
    /// The document that the split moved to the other side, so that each
    /// side has one (its name).
    moved: Option<String>,
    /// The single document, whose last tenth validates.
    single: Option<At>,
    pub skipped: Skipped,
    field: String,
    holdout: Holdout,
}

/// The [`Plan`] of the text corpus `source`: every file read once (to skip
/// what [`load`](super::data::load) skips, and to count the documents on
/// each side), nothing kept per document. With `progress`, a line on
/// standard error every ten seconds says how far the reading is.
pub fn plan(source: &str, holdout: impl Into<Holdout>, field: &str, progress: bool) -> Result<Plan, String> {
    let holdout = holdout.into();
    let (root, paths) = find(source)?;
    if tokenised(&paths).is_some() {
        return Err(format!("`{source}` holds token files already: it is tokenised"));
    }
    let mut files: Vec<Planned> = paths
        .iter()
        .map(|p| Planned { path: p.clone(), name: name_in(&root, p), holds: holds(p), documents: [0; 2] })
        .collect();
    let (mut counts, mut bytes) = ([0u64; 2], [0u64; 2]);
    // The last training document by name and the first validation one (the
    // split may move one of them), and the first document found.
    let (mut last_train, mut first_valid): (Option<Named>, Option<Named>) = (None, None);
    let mut first = None;
    let (start, mut told) = (std::time::Instant::now(), std::time::Instant::now());
    let skipped = documents(&root, &paths, field, |name, file, line, text| {
        if progress && told.elapsed().as_secs() >= 10 {
            told = std::time::Instant::now();
            let mb = (bytes[0] + bytes[1]) as f64 / 1e6;
            let s = start.elapsed().as_secs_f64();
            crate::errln!("data: read {} of {} files, {mb:.0} MB of text, in {s:.0} s", file + 1, paths.len());
        }
        let at = At { file, line, bytes: text.len() as u64 };
        let side = usize::from(in_validation(&name, holdout));
        files[file].documents[side] += 1;
        counts[side] += 1;
        bytes[side] += at.bytes;
        first.get_or_insert(at);
        let extreme = if side == 0 { &mut last_train } else { &mut first_valid };
        let further = extreme.as_ref().is_none_or(|(e, _)| (side == 0) == (name > *e));
        if further {
            *extreme = Some((name, at));
        }
    });
    let Some(first) = first else { return Err(no_text(source, &skipped, field)) };
    let mut plan = Plan {
        files: Vec::new(),
        documents: counts,
        bytes,
        moved: None,
        single: None,
        skipped,
        field: field.to_string(),
        holdout,
    };
    // As `data::split`: a side left empty takes one document of the other,
    // and a single document is split within.
    let [train, valid] = counts;
    let moved = match giving_side(train, valid) {
        Some(0) => last_train.map(|m| (m, 0)),
        Some(_) => first_valid.map(|m| (m, 1)),
        None => None,
    };
    if let Some(((name, at), from)) = moved {
        files[at.file].documents[from] -= 1;
        files[at.file].documents[1 - from] += 1;
        plan.documents[from] -= 1;
        plan.documents[1 - from] += 1;
        plan.bytes[from] -= at.bytes;
        plan.bytes[1 - from] += at.bytes;
        plan.moved = Some(name);
    }
    if train + valid == 1 {
        plan.single = Some(first);
        plan.files = files;
        return Ok(plan);
    }
    files.retain(|f| f.documents != [0, 0]);
    files.sort_by_cached_key(Planned::key);
    if let Some(w) = files.windows(2).find(|w| w[0].holds != Holds::One && w[1].key().starts_with(&w[0].key())) {
        return Err(format!(
            "`{}` is named like a record of `{}` (`{}LINE`), which would interleave their documents; rename it",
            w[1].path.display(),
            w[0].path.display(),
            w[0].key()
        ));
    }
    plan.files = files;
    Ok(plan)
}

impl Plan {
    /// Documents in the split.
    pub fn documents(&self, valid: bool) -> u64 {
        if self.single.is_some() {
            return 1;
        }
        self.documents[usize::from(valid)]
    }

    /// Bytes of text in the split (the whole document, where there is one).
    pub fn bytes(&self, valid: bool) -> u64 {
        match &self.single {
            Some(at) => at.bytes,
            None => self.bytes[usize::from(valid)],
        }
    }

    /// The training split thinned to about `budget` bytes spread evenly
    /// over it (in name order, each document kept while the bytes kept stay
    /// under the pro-rata share of the bytes seen); the whole split where
    /// it is no larger. Over the budget by at most one document (and a
    /// single document is not thinned): a reader that needs a bound cuts.
    pub fn sample(&self, budget: u64) -> Sample<'_> {
        Sample { plan: self, budget }
    }

    /// Gives `each` the name and text of every document of the training
    /// (or the validation) split, in order, reading each file again; fails
    /// where a file changed since the plan.
    pub fn texts(&self, valid: bool, mut each: impl FnMut(&str, &str) -> Result<(), String>) -> Result<(), String> {
        let side = usize::from(valid);
        let changed = |f: &Planned| format!("`{}` changed while it was tokenised", f.path.display());
        if let Some(at) = self.single {
            let f = &self.files[at.file];
            let text = match at.line {
                None => read(&f.path).map_err(|_| changed(f))?,
                Some(l) => f.numbered(&self.field)?.get(l).ok_or_else(|| changed(f))?,
            };
            let (head, tail) = split_tail(&text);
            return each(&f.name, if valid { tail } else { head });
        }
        let mut name = String::new();
        for f in self.files.iter().filter(|f| f.documents[side] > 0) {
            let mut found = 0;
            let mut give = |name: &str, doc: &str| -> Result<(), String> {
                let mut here = usize::from(in_validation(name, self.holdout));
                if self.moved.as_deref() == Some(name) {
                    here = 1 - here;
                }
                if here != side {
                    return Ok(());
                }
                found += 1;
                each(name, doc)
            };
            if f.holds != Holds::One {
                let mut numbered = f.numbered(&self.field)?;
                for l in lexicographic(numbered.count()) {
                    if let Some(doc) = numbered.get(l) {
                        name.clear();
                        let _ = write!(name, "{}:{l}", f.name);
                        give(&name, &doc)?;
                    }
                }
            } else {
                give(&f.name, &read(&f.path).map_err(|_| changed(f))?)?;
            }
            if found != f.documents[side] {
                return Err(changed(f));
            }
        }
        Ok(())
    }
}

/// An evenly spread sample of a plan's training split ([`Plan::sample`]).
#[derive(Debug)]
pub struct Sample<'a> {
    plan: &'a Plan,
    budget: u64,
}

impl Sample<'_> {
    /// [`Plan::texts`] of the training documents in the sample, the last
    /// cut where the budget ends.
    pub fn texts(&self, mut each: impl FnMut(&str, &str) -> Result<(), String>) -> Result<(), String> {
        let mut spread = Spread::new(self.plan.bytes(false), self.budget);
        self.plan.texts(false, |name, text| match spread.take(text) {
            Some(part) => each(name, part),
            None => Ok(()),
        })
    }
}

/// The bytes a BPE is trained on, at most, where `blkc train` trains one
/// (and `blkc tokenize`'s default `--sample-bytes`): 10⁹.
pub const BPE_SAMPLE_BYTES: u64 = 1_000_000_000;

/// An evenly spread sample of `budget` bytes of texts of `total` bytes,
/// taken as they come (in name order): a text is kept while the bytes
/// kept stay under the pro-rata share of the bytes seen, and the one that
/// reaches the budget is cut there. All of them where `total` is no more.
#[derive(Debug)]
pub struct Spread {
    total: u64,
    budget: u64,
    seen: u64,
    kept: u64,
}

impl Spread {
    pub fn new(total: u64, budget: u64) -> Self {
        Spread { total, budget, seen: 0, kept: 0 }
    }

    /// Whether the next text, of `bytes`, is kept (at most one past the
    /// budget: [`Spread::take`] cuts it).
    fn keeps(&mut self, bytes: u64) -> bool {
        self.seen += bytes;
        let (total, budget) = (u128::from(self.total), u128::from(self.budget));
        let keep = self.total <= self.budget || u128::from(self.kept) * total < budget * u128::from(self.seen);
        if keep {
            self.kept += bytes;
        }
        keep
    }

    /// The part of the next text in the sample: all of it, none, or its
    /// start, where the budget ends.
    pub fn take<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        let room = self.budget.saturating_sub(self.kept);
        if !self.keeps(text.len() as u64) || room == 0 {
            return None;
        }
        Some(&text[..text.floor_char_boundary(usize::try_from(room).unwrap_or(usize::MAX))])
    }
}

/// `1..=n` in the order of their decimal strings: 1, 10, 11, …, 19, 2, 20, …
/// (as the names of a JSON-lines file's records sort).
fn lexicographic(n: usize) -> impl Iterator<Item = usize> {
    let mut next = (n >= 1).then_some(1usize);
    std::iter::from_fn(move || {
        let x = next?;
        next = if x.saturating_mul(10) <= n {
            Some(x * 10)
        } else {
            // Up while this is the last digit or past the end, then on.
            let mut y = x;
            while y > 0 && (y % 10 == 9 || y + 1 > n) {
                y /= 10;
            }
            (y > 0).then(|| y + 1)
        };
        Some(x)
    })
}

/// The text of the record on line `l` (1-based) of a JSON-lines file.
fn record(lines: &mut Lines, l: usize, field: &str) -> Option<String> {
    let line = lines.line(l)?;
    let mut found = None;
    records(&line, field, |_, t| found = Some(t.to_string()));
    found
}

#[cfg(test)]
mod tests {
    use super::super::data::{load, Doc};
    use super::*;

    /// The names and texts of a plan's split, read again.
    fn planned(plan: &Plan, valid: bool) -> Vec<(String, String)> {
        let mut docs = Vec::new();
        plan.texts(valid, |name, text| {
            docs.push((name.to_string(), text.to_string()));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        docs
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap_or(dir)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    }

    /// What `plan` reads again is what `load` holds: the same documents in
    /// the same order on the same side, for several files with JSON lines
    /// among them (records ordered by name: line 10 before line 2; files
    /// named with the same start, before and after a JSON-lines file's
    /// records), a single text file and a single record (each cut to its
    /// last tenth), and sides left empty by the hash (one document moved).
    #[test]
    fn a_plan_reads_what_load_holds() {
        let dir = std::env::temp_dir().join(format!("blkc-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let lines: String = (0..123).map(|i| format!("{{\"text\": \"record {i}\\nof a file\"}}\n")).collect();
        write(&dir, "many/a-b/x.txt", "first\n");
        write(&dir, "many/a/x.txt", "second\n");
        write(&dir, "many/r.jsonl", &format!("{lines}not json\n\n{{\"text\": \"after a gap\"}}\n"));
        write(&dir, "many/r.jsonl.bak", "before the records\n");
        write(&dir, "many/r.jsonl~", "after the records\n");
        write(&dir, "many/r-2.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
        write(&dir, "many/z.txt", "last\n");
        let packed: String = (0..30).map(|i| format!("{{\"text\": \"packed {i}\"}}\n")).collect();
        std::fs::write(dir.join("many/y.jsonl.gz"), super::super::lines::tests::gzip(packed.as_bytes()))
            .unwrap_or_else(|e| panic!("{e}"));
        write(&dir, "many/empty.txt", "  \n");
        let long: String = (0..40).map(|i| format!("line {i}\n")).collect();
        write(&dir, "one/only.txt", &long);
        write(&dir, "record/r.jsonl", &format!("{}\n", serde_json::json!({ "text": long })));
        write(&dir, "two/a.txt", "a\n");
        write(&dir, "two/b.txt", "b\n");
        // Larger than a document may be: its pieces are documents.
        let large: String = (0..800_000).map(|i| format!("line {i:06} of a large file{}\n", " .".repeat(34))).collect();
        write(&dir, "large/big.txt", &large);
        write(&dir, "large/small.txt", "beside it\n");
        let cases = [
            ("many", 0.3),
            ("many", 0.0),
            ("many", 1.0),
            ("one", 0.05),
            ("record", 0.05),
            ("two", 0.0),
            ("two", 1.0),
            ("large", 0.1),
        ];
        for (corpus, fraction) in cases {
            let source = dir.join(corpus).display().to_string();
            let c = load(&source, fraction, "text").unwrap_or_else(|e| panic!("{e}"));
            let p = plan(&source, fraction, "text", false).unwrap_or_else(|e| panic!("{e}"));
            let held = |docs: &[Doc]| docs.iter().map(|d| d.text.clone()).collect::<Vec<_>>();
            let texts = |valid| planned(&p, valid).into_iter().map(|(_, t)| t).collect::<Vec<_>>();
            assert_eq!(texts(false), held(&c.train), "{corpus} at {fraction}: training");
            assert_eq!(texts(true), held(&c.valid), "{corpus} at {fraction}: validation");
            assert_eq!(p.skipped, c.skipped, "{corpus}");
            let counts = (p.documents(false) as usize, p.documents(true) as usize);
            assert_eq!(counts, (c.train.len(), c.valid.len()), "{corpus}");
            let size = |docs: &[Doc]| docs.iter().map(|d| d.text.len() as u64).sum::<u64>();
            if p.single.is_none() {
                assert_eq!((p.bytes(false), p.bytes(true)), (size(&c.train), size(&c.valid)), "{corpus}");
            }
            if corpus == "many" {
                assert!(c.train.len() + c.valid.len() > 120, "{corpus}: {} documents", c.train.len());
            }
            if corpus == "large" {
                // About a mebibyte each, cut after a line end, both sides
                // given some, every byte of the file in one of them.
                let pieces: Vec<&Doc> =
                    c.train.iter().chain(&c.valid).filter(|d| d.name.starts_with("big.txt:")).collect();
                assert!(large.len() > 64 << 20 && pieces.len() == large.len().div_ceil(1 << 20), "{}", pieces.len());
                assert!(pieces.iter().all(|d| d.text.ends_with('\n') && d.text.len() <= (1 << 20) + (64 << 10)));
                assert_eq!(pieces.iter().map(|d| d.text.len()).sum::<usize>(), large.len());
                assert!(c.valid.iter().any(|d| d.name.starts_with("big.txt:")));
                assert!(c.train.iter().any(|d| d.name.starts_with("big.txt:")));
            }
        }
        // A record that went away between the two passes is an error.
        let source = dir.join("many").display().to_string();
        let p = plan(&source, 0.3, "text", false).unwrap_or_else(|e| panic!("{e}"));
        write(&dir, "many/r.jsonl", &lines[..lines.len() / 2]);
        let mut read = Ok(());
        for valid in [false, true] {
            read = read.and(p.texts(valid, |_, _| Ok(())));
        }
        assert!(read.is_err_and(|e| e.contains("r.jsonl` changed")));
        // A file named like a record would interleave with the records:
        // refused, by name.
        write(&dir, "many/r.jsonl:5.txt", "x\n");
        let e = plan(&source, 0.3, "text", false).err().unwrap_or_default();
        assert!(e.contains("r.jsonl:5.txt` is named like a record of"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn line_numbers_are_counted_out_as_their_names_sort() {
        for n in [0, 1, 9, 10, 11, 99, 100, 101, 1000, 1234] {
            let mut names: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            names.sort();
            let counted: Vec<String> = lexicographic(n).map(|i| i.to_string()).collect();
            assert_eq!(counted, names, "{n}");
        }
    }

    /// A sample keeps its budget, every tenth of the split giving its share
    /// (checked on a corpus of 1,000 files of 1 to 997 bytes, in an
    /// irregular pattern, each text starting with its number); it is the
    /// sample `blkc train` takes from the corpus held in memory.
    #[test]
    fn a_sample_is_spread_evenly_and_near_its_budget() {
        let dir = std::env::temp_dir().join(format!("blkc-sample-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for i in 0..1000 {
            let size = 1 + (i * 7919) % 997;
            write(&dir, &format!("{i:04}.txt"), &format!("{i:04}{}", "x".repeat(size)));
        }
        let plan = plan(&dir.display().to_string(), 0.0, "text", false).unwrap_or_else(|e| panic!("{e}"));
        let corpus = load(&dir.display().to_string(), 0.0, "text").unwrap_or_else(|e| panic!("{e}"));
        let all = planned(&plan, false);
        assert_eq!(all.len(), 999, "one document validates");
        let total = plan.bytes(false);
        let largest = all.iter().map(|(_, t)| t.len() as u64).max().unwrap_or(0);
        let tenth = |docs: &[(String, String)], t: usize| -> u64 {
            docs.iter().filter(|(_, d)| d[1..2] == t.to_string()).map(|(_, d)| d.len() as u64).sum()
        };
        for budget in [1, 5_000, total / 3, total - 1, total, total + 1] {
            let mut kept = Vec::new();
            plan.sample(budget)
                .texts(|n, t| {
                    kept.push((n.to_string(), t.to_string()));
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
            let bytes = kept.iter().map(|(_, t)| t.len() as u64).sum::<u64>();
            assert_eq!(bytes, budget.min(total), "kept for {budget} of {total}");
            let held: Vec<&str> = super::super::tokenizer::sampled(&corpus.train, budget).collect();
            assert_eq!(held, kept.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), "{budget}: train's sample");
            if budget >= total / 3 {
                for t in 0..10 {
                    let (part, whole) = (tenth(&kept, t), tenth(&all, t));
                    let share = whole * budget / total;
                    assert!(part.abs_diff(share) < 2 * largest, "tenth {t}: {part} kept, {share} its share");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
