//! A text corpus named and split as `data::load` splits it, its texts not
//! held: `blkc tokenize` reads them again one file at a time, so that a
//! corpus of any size is tokenised (and a BPE trained on a sample of it) in
//! bounded memory.

use std::path::PathBuf;

use super::data::{documents, find, no_text, read, records, split, split_tail, tokenised, Skipped, Split};

/// Where a document of a corpus is, its text not held ([`Plan`]).
#[derive(Debug, Clone)]
pub struct Place {
    pub name: String,
    /// Its file, in [`Plan::files`].
    file: usize,
    /// Its line, where the file is JSON lines (1-based).
    line: Option<usize>,
    /// Bytes of its text.
    pub bytes: usize,
}

/// A text corpus named and split as [`load`](super::data::load) splits it, without holding
/// its text: the documents are read again, one file at a time, by
/// [`Plan::texts`] (`blkc tokenize`, for corpora larger than memory).
#[derive(Debug)]
pub struct Plan {
    files: Vec<PathBuf>,
    pub train: Vec<Place>,
    pub valid: Vec<Place>,
    /// The single document, whose last tenth validates.
    single: Option<Place>,
    pub skipped: Skipped,
    field: String,
}

/// The [`Plan`] of the text corpus `source`: every file read once (to skip
/// what [`load`](super::data::load) skips, and to name JSON lines' records), nothing kept but
/// the names.
pub fn plan(source: &str, val_fraction: f64, field: &str) -> Result<Plan, String> {
    let (root, files) = find(source)?;
    if tokenised(&files).is_some() {
        return Err(format!("`{source}` holds token files already: it is tokenised"));
    }
    let mut places = Vec::new();
    let skipped = documents(&root, &files, field, |name, file, line, text| {
        places.push(Place { name, file, line, bytes: text.len() })
    });
    if places.is_empty() {
        return Err(no_text(source, &skipped, field));
    }
    let (train, valid, single) = match split(places, |p| &p.name, val_fraction) {
        Split::Two(train, valid) => (train, valid, None),
        Split::One(p) => (Vec::new(), Vec::new(), Some(p)),
    };
    Ok(Plan { files, train, valid, single, skipped, field: field.to_string() })
}

impl Plan {
    /// Documents in the split.
    pub fn documents(&self, valid: bool) -> usize {
        if self.single.is_some() {
            return 1;
        }
        if valid {
            self.valid.len()
        } else {
            self.train.len()
        }
    }

    /// Bytes of text in the split (the whole document, where there is one).
    pub fn bytes(&self, valid: bool) -> u64 {
        match &self.single {
            Some(p) => p.bytes as u64,
            None => (if valid { &self.valid } else { &self.train }).iter().map(|p| p.bytes as u64).sum(),
        }
    }

    /// This plan with its training documents thinned to about `budget`
    /// bytes spread evenly over the split (in name order, each document
    /// kept while the bytes kept stay under the pro-rata share of the bytes
    /// seen), and no validation documents; the whole split where it is no
    /// larger. Over the budget by at most one document (and a single
    /// document is not thinned): a reader that needs a bound cuts.
    pub fn sample(&self, budget: u64) -> Plan {
        let total = self.bytes(false);
        let mut train = Vec::new();
        let (mut seen, mut kept) = (0u64, 0u64);
        for p in &self.train {
            seen += p.bytes as u64;
            if total <= budget || (kept as u128) * (total as u128) < (budget as u128) * (seen as u128) {
                kept += p.bytes as u64;
                train.push(p.clone());
            }
        }
        Plan {
            files: self.files.clone(),
            train,
            valid: Vec::new(),
            single: self.single.clone(),
            skipped: self.skipped,
            field: self.field.clone(),
        }
    }

    /// Gives `each` the text of every document of the training (or the
    /// validation) split, in order, reading each file again; fails where a
    /// file changed since the plan.
    pub fn texts(&self, valid: bool, mut each: impl FnMut(&str) -> Result<(), String>) -> Result<(), String> {
        let changed = |p: &Place| format!("`{}` changed while it was tokenised", self.files[p.file].display());
        if let Some(p) = &self.single {
            let file = read(&self.files[p.file]).map_err(|_| changed(p))?;
            let text = match p.line {
                None => file,
                Some(l) => record(&file, &line_spans(&file), l, &self.field).ok_or_else(|| changed(p))?,
            };
            let (head, tail) = split_tail(&text);
            return each(if valid { tail } else { head });
        }
        // The file read last: its index, its text, and its lines where it
        // is JSON lines.
        struct Held {
            file: usize,
            text: String,
            lines: Vec<(usize, usize)>,
        }
        let mut held: Option<Held> = None;
        for p in if valid { &self.valid } else { &self.train } {
            if held.as_ref().map(|h| h.file) != Some(p.file) {
                let text = read(&self.files[p.file]).map_err(|_| changed(p))?;
                let lines = if p.line.is_some() { line_spans(&text) } else { Vec::new() };
                held = Some(Held { file: p.file, text, lines });
            }
            let Some(Held { text, lines, .. }) = &held else { continue };
            match p.line {
                None => each(text)?,
                Some(l) => each(&record(text, lines, l, &self.field).ok_or_else(|| changed(p))?)?,
            }
        }
        Ok(())
    }
}

/// The text of the record on line `l` (1-based) of a JSON-lines file,
/// whose lines lie at `lines`.
fn record(text: &str, lines: &[(usize, usize)], l: usize, field: &str) -> Option<String> {
    let &(a, b) = lines.get(l.checked_sub(1)?)?;
    let mut found = None;
    records(&text[a..b], field, |_, t| found = Some(t.to_string()));
    found
}

/// Where each line of `text` lies, as `str::lines` cuts them.
fn line_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for line in text.lines() {
        let at = start + text[start..].find(line).unwrap_or(0);
        spans.push((at, at + line.len()));
        start = at + line.len();
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::super::data::{load, Doc};
    use super::*;

    /// The texts of a plan's split, read again.
    fn planned(plan: &Plan, valid: bool) -> Vec<String> {
        let mut texts = Vec::new();
        plan.texts(valid, |t| {
            texts.push(t.to_string());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        texts
    }

    /// What `plan` reads again is what `load` holds: the same documents in
    /// the same order on the same side, for several files with JSON lines
    /// among them (records ordered by name: line 10 before line 2), a
    /// single text file and a single record (each cut to its last tenth).
    #[test]
    fn a_plan_reads_what_load_holds() {
        let dir = std::env::temp_dir().join(format!("blkc-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let write = |rel: &str, text: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap_or(&dir)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        };
        let lines: String = (0..14).map(|i| format!("{{\"text\": \"record {i}\\nof a file\"}}\n")).collect();
        write("many/a-b/x.txt", "first\n");
        write("many/a/x.txt", "second\n");
        write("many/r.jsonl", &format!("{lines}not json\n\n"));
        write("many/z.txt", "last\n");
        write("many/empty.txt", "  \n");
        let long: String = (0..40).map(|i| format!("line {i}\n")).collect();
        write("one/only.txt", &long);
        write("record/r.jsonl", &format!("{}\n", serde_json::json!({ "text": long })));
        for (corpus, fraction) in [("many", 0.3), ("many", 0.0), ("one", 0.05), ("record", 0.05)] {
            let source = dir.join(corpus).display().to_string();
            let c = load(&source, fraction, "text").unwrap_or_else(|e| panic!("{e}"));
            let p = plan(&source, fraction, "text").unwrap_or_else(|e| panic!("{e}"));
            let held = |docs: &[Doc]| docs.iter().map(|d| d.text.clone()).collect::<Vec<_>>();
            assert_eq!(planned(&p, false), held(&c.train), "{corpus} at {fraction}: training");
            assert_eq!(planned(&p, true), held(&c.valid), "{corpus} at {fraction}: validation");
            assert_eq!(p.skipped, c.skipped, "{corpus}");
            assert_eq!((p.documents(false), p.documents(true)), (c.train.len(), c.valid.len()), "{corpus}");
        }
        // A record that went away between the two passes is an error.
        let source = dir.join("many").display().to_string();
        let p = plan(&source, 0.0, "text").unwrap_or_else(|e| panic!("{e}"));
        write("many/r.jsonl", "{}\n");
        let mut read = Ok(());
        for valid in [false, true] {
            read = read.and(p.texts(valid, |_| Ok(())));
        }
        assert!(read.is_err_and(|e| e.contains("r.jsonl` changed")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sample_is_spread_evenly_and_near_its_budget() {
        // 1,000 documents of 1 to 997 bytes, in an irregular pattern.
        let train: Vec<Place> = (0..1000)
            .map(|i| Place { name: format!("{i:04}"), file: 0, line: None, bytes: 1 + (i * 7919) % 997 })
            .collect();
        let plan = Plan {
            files: vec![PathBuf::from("f")],
            valid: train[..3].to_vec(),
            train,
            single: None,
            skipped: Skipped::default(),
            field: "text".into(),
        };
        let total = plan.bytes(false);
        let largest = plan.train.iter().map(|p| p.bytes as u64).max().unwrap_or(0);
        for budget in [1, 5_000, total / 3, total - 1] {
            let s = plan.sample(budget);
            let kept = s.bytes(false);
            assert!(kept >= budget && kept < budget + largest, "{kept} kept for {budget} of {total}");
            assert!(s.valid.is_empty());
            // Every tenth of the split gives its share of the sample.
            if budget >= total / 3 {
                let tenth = |places: &[Place], t: usize| -> u64 {
                    places.iter().filter(|p| p.name[1..2] == t.to_string()).map(|p| p.bytes as u64).sum()
                };
                for t in 0..10 {
                    let (part, whole) = (tenth(&s.train, t), tenth(&plan.train, t));
                    let share = whole * budget / total;
                    assert!(part.abs_diff(share) < 2 * largest, "tenth {t}: {part} kept, {share} its share");
                }
            }
        }
        let all = plan.sample(total);
        assert_eq!(all.train.len(), 1000);
    }
}
