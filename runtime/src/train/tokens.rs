//! A corpus as token streams: encoded once per (tokenizer, corpus) and
//! cached under `$BLKC_CACHE/tokens/`, with a checksum, so a damaged cache
//! entry is encoded again instead of feeding the model garbage. Every id
//! is checked against the vocabulary before a model sees it.

use std::path::Path;

use super::batch::Stream;
use super::data::{self, Corpus, Fnv};
use super::tokenizer::{self, Tokenizer};
use crate::durable;

/// Header of a cache entry (the format's version is in the last byte).
const MAGIC: &[u8; 8] = b"blkctok2";

/// The token streams of a corpus: from the cache when this tokenizer has
/// encoded this corpus before, else encoded now and cached. Refuses ids
/// at or above `vocab`.
pub fn streams(
    corpus: &Corpus,
    tok: &Tokenizer,
    key: u64,
    context: usize,
    shifted: bool,
    vocab: usize,
) -> Result<(Stream, Stream, &'static str), String> {
    if !corpus.token_files.is_empty() {
        // Every id checked here; the windows are read as they are drawn.
        let (root, files) = (&corpus.root, &corpus.token_files);
        let t = super::token_files::load(root, files, corpus.val_fraction, tok.end_of_text(), vocab)?;
        return Ok((
            Stream::on_disk(t.train, context, shifted),
            Stream::on_disk(t.valid, context, shifted),
            "pre-tokenised",
        ));
    }
    let mut h = Fnv::new();
    h.write(&key.to_le_bytes());
    h.write(&corpus.fingerprint().to_le_bytes());
    for d in &corpus.valid {
        h.write(d.name.as_bytes());
        h.write(&(d.text.len() as u64).to_le_bytes());
    }
    let path = tokenizer::cache_dir().join("tokens").join(format!("{:016x}.bin", h.finish()));
    let cached = read(&path);
    let hit = cached.is_some();
    let (train, valid) = match cached {
        Some(t) => t,
        None => {
            let t = (join(tok, &corpus.train)?, join(tok, &corpus.valid)?);
            if let Some(dir) = path.parent() {
                // A cache that cannot be written only costs time next run.
                if std::fs::create_dir_all(dir).is_ok() {
                    let _ = durable::write_atomic(&path, &encode(&t.0, &t.1));
                }
            }
            t
        }
    };
    for (name, ids) in [("training", &train), ("validation", &valid)] {
        check_ids(ids, vocab).map_err(|e| format!("the {name} tokens of `{}`: {e}", corpus.source))?;
    }
    let how = if hit { "cached" } else { "encoded" };
    Ok((Stream::new(train, context, shifted), Stream::new(valid, context, shifted), how))
}

/// Documents encoded and joined by end-of-text.
fn join(tok: &Tokenizer, docs: &[data::Doc]) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    // Documents by groups, so that the encodings in memory stay bounded.
    for group in docs.chunks(1024) {
        let texts: Vec<&str> = group.iter().map(|d| d.text.as_str()).collect();
        for ids in tok.encode_all(&texts)? {
            out.extend(ids);
            out.push(tok.end_of_text());
        }
    }
    Ok(out)
}

/// Refuses an id the model has no embedding for.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<(), String> {
    match ids.iter().position(|&t| t as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(format!(
            "token {i} has id {}, but the model's vocabulary has {vocab} tokens (ids 0 to {}); \
             the tokenizer does not belong to this model",
            ids[i],
            vocab.saturating_sub(1)
        )),
    }
}

/// A cache entry: magic, two lengths, the CRC-32 of the ids, the ids
/// (little-endian u32).
fn encode(train: &[u32], valid: &[u32]) -> Vec<u8> {
    let mut ids = Vec::with_capacity(4 * (train.len() + valid.len()));
    for t in train.iter().chain(valid) {
        ids.extend_from_slice(&t.to_le_bytes());
    }
    let mut bytes = Vec::with_capacity(28 + ids.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(train.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(valid.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&durable::checksum(&ids).to_le_bytes());
    bytes.extend_from_slice(&ids);
    bytes
}

/// A cache entry's streams; `None` when missing, of another format,
/// truncated or damaged (then it is encoded again).
fn read(path: &Path) -> Option<(Vec<u32>, Vec<u32>)> {
    let bytes = std::fs::read(path).ok()?;
    decode(&bytes)
}

fn decode(bytes: &[u8]) -> Option<(Vec<u32>, Vec<u32>)> {
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let n = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?) as usize;
    let m = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?);
    let ids = bytes.get(28..)?;
    if ids.len() != 4 * n.checked_add(m)? || durable::checksum(ids) != sum {
        return None;
    }
    let all: Vec<u32> = ids.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let valid = all[n..].to_vec();
    let mut train = all;
    train.truncate(n);
    Some((train, valid))
}

/// A tokenizer's identity for the token cache.
pub fn tokenizer_key(path: &Path) -> u64 {
    let mut h = Fnv::new();
    h.write(&std::fs::read(path).unwrap_or_default());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_round_trip_and_damage_is_noticed() {
        let (train, valid) = (vec![1, 2, 3, 70_000], vec![5, 6]);
        let bytes = encode(&train, &valid);
        assert_eq!(decode(&bytes), Some((train, valid)));
        for at in [0, 9, 25, 30, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode(&bad), None, "a flipped bit at byte {at} went unnoticed");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 4]), None, "truncated");
    }

    #[test]
    fn ids_outside_the_vocabulary_are_refused() {
        assert!(check_ids(&[0, 257], 258).is_ok());
        let err = check_ids(&[0, 5, 258], 258).err().unwrap_or_default();
        assert!(err.contains("token 2 has id 258") && err.contains("0 to 257"), "{err}");
    }
}
