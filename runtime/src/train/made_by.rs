//! `tokens.json`: which tokenizer made a directory's token files.
//! `blkc tokenize` writes it beside `train.bin` and `val.bin`; a run or an
//! evaluation that reads those ids checks it against its own tokenizer. The
//! ids of one tokenizer read by another are other tokens, and nothing else
//! would show it: every id is in the vocabulary, and the model trains, or
//! scores, on text nobody wrote. Token files without the record (nanoGPT's,
//! or made by other tools) are read unchecked, as before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::tokenizer::Tokenizer;
use crate::durable::{self, Read};

/// The record's file name.
pub const FILE: &str = "tokens.json";

/// The largest record read (it is a few lines).
const MAX_BYTES: u64 = 1 << 16;

/// What the record says.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The record's format.
    blkc_tokens: u32,
    /// The tokenizer as a setting names it (`bytes`, or a path).
    tokenizer: String,
    kind: String,
    vocab: usize,
    end_of_text: u32,
    /// [`Tokenizer::fingerprint`], in hexadecimal.
    fingerprint: String,
}

/// Writes the record of `tok` (named `named` in the settings) into `dir`;
/// returns its path.
pub fn write(dir: &Path, tok: &Tokenizer, named: &str) -> Result<PathBuf, String> {
    let record = Record {
        blkc_tokens: 1,
        tokenizer: named.to_string(),
        kind: tok.kind().name().to_string(),
        vocab: tok.vocab_size(),
        end_of_text: tok.end_of_text(),
        fingerprint: format!("{:016x}", tok.fingerprint()),
    };
    let path = dir.join(FILE);
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())? + "\n";
    durable::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Checks that `tok` made the token files `files`, where a record beside
/// them says which tokenizer did.
pub fn check(files: &[PathBuf], tok: &Tokenizer) -> Result<(), String> {
    let dirs: BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    let mut ours = None;
    for dir in dirs {
        let path = dir.join(FILE);
        let Some(record) = read(&path)? else { continue };
        let fingerprint = ours.get_or_insert_with(|| format!("{:016x}", tok.fingerprint()));
        if record.fingerprint != *fingerprint {
            return Err(format!(
                "`{}` holds the ids of `{}` (a {} tokenizer of {} tokens, says `{}`), not of this tokenizer (a {} \
                 tokenizer of {} tokens): read by another tokenizer, ids are other tokens. Name the tokenizer \
                 that made them (`tokenizer = \"{}\"`), or tokenise the text again with this one (`blkc tokenize \
                 TEXT --tokenizer RUN/tokenizer.json`)",
                dir.display(),
                record.tokenizer,
                record.kind,
                record.vocab,
                path.display(),
                tok.kind().name(),
                tok.vocab_size(),
                record.tokenizer,
            ));
        }
    }
    Ok(())
}

/// The record at `path`, if there is one.
fn read(path: &Path) -> Result<Option<Record>, String> {
    let bad = |why: &str| {
        format!(
            "`{}` is not the record of the tokenizer that `blkc tokenize` writes ({why}); remove it to read the ids \
             unchecked",
            path.display()
        )
    };
    let bytes = match durable::read_regular(path, MAX_BYTES) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(durable::describe("read", path, &e)),
        Ok(Read::Bytes(b)) => b,
        Ok(Read::NotRegular) => return Err(bad("not a regular file")),
        Ok(Read::TooLarge) => return Err(bad("too large")),
    };
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| bad(&e.to_string()))?;
    if record.blkc_tokens != 1 {
        return Err(bad(&format!("format {}, not 1", record.blkc_tokens)));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpe(tokens: &[&str]) -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "vocab": vocab, "merges": []}
        });
        let dir = std::env::temp_dir().join(format!("blkc-made-by-{}-{}", std::process::id(), tokens.len()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap_or_else(|e| panic!("{e}"));
        Tokenizer::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ids_are_checked_against_the_tokenizer_that_made_them() {
        let dir = std::env::temp_dir().join(format!("blkc-made-by-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let files = vec![dir.join("train.bin"), dir.join("val.bin")];
        // No record: unchecked.
        assert_eq!(check(&files, &Tokenizer::Bytes), Ok(()));
        let (ab, ba) = (bpe(&["a", "b", "<|endoftext|>"]), bpe(&["b", "a", "<|endoftext|>"]));
        write(&dir, &ab, "ab.json").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&files, &ab), Ok(()));
        assert_eq!(check(&files, &bpe(&["a", "b", "<|endoftext|>"])), Ok(()), "the same tokens from another file");
        for other in [&ba, &Tokenizer::Bytes] {
            let e = check(&files, other).err().unwrap_or_default();
            assert!(e.contains("`ab.json`") && e.contains("tokens.json") && e.contains("3 tokens"), "{e}");
        }
        for (text, says) in [("{", "EOF"), ("{\"blkc_tokens\": 2}", "missing field"), ("3", "invalid type")] {
            std::fs::write(dir.join(FILE), text).unwrap_or_else(|e| panic!("{e}"));
            let e = check(&files, &ab).err().unwrap_or_default();
            assert!(e.contains("is not the record") && e.contains(says), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
