//! A corpus as token streams: encoded once per (tokenizer, corpus) and
//! cached under `$BLKC_CACHE/tokens/`, with a checksum, so a damaged cache
//! entry is encoded again instead of feeding the model garbage. Every id
//! is checked against the vocabulary before a model sees it.

use std::io::{Read, Write};
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
        super::made_by::check(files, tok)?;
        let t = super::token_files::load(root, files, corpus.holdout, tok.end_of_text(), vocab)?;
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
                    let _ = write(&path, &t.0, &t.1);
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
    let eot = tok.end_of_text();
    if tok.kind() == tokenizer::Kind::Bytes {
        // An id per byte and one per document, written in place.
        let mut out = Vec::with_capacity(docs.iter().map(|d| d.text.len() + 1).sum());
        for d in docs {
            out.extend(d.text.bytes().map(u32::from));
            out.push(eot);
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    // Documents by groups of bounded text, so that the encodings in memory
    // stay bounded.
    let mut start = 0;
    while start < docs.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < docs.len() && end - start < 1024 && (end == start || bytes + docs[end].text.len() <= GROUP_BYTES) {
            bytes += docs[end].text.len();
            end += 1;
        }
        let texts: Vec<&str> = docs[start..end].iter().map(|d| d.text.as_str()).collect();
        for ids in tok.encode_all(&texts)? {
            out.extend(ids);
            out.push(eot);
        }
        start = end;
    }
    Ok(out)
}

/// Bytes of text encoded in one group (beyond one document).
const GROUP_BYTES: usize = 16 << 20;

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

/// Bytes of a cache entry's header: magic, two lengths, the CRC-32 of the
/// ids; then the ids (little-endian u32).
const HEADER: usize = 28;

/// Ids converted to or from bytes at once, as a cache entry is written or
/// read (so that no copy of the whole streams is made).
const BLOCK: usize = 1 << 18;

/// Writes a cache entry for the streams `train` and `valid`, atomically.
fn write(path: &Path, train: &[u32], valid: &[u32]) -> Result<(), String> {
    let mut sum = crc32fast::Hasher::new();
    let _ = blocks(train, valid, |b| {
        sum.update(b);
        Ok(())
    });
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(train.len() as u64).to_le_bytes());
    header.extend_from_slice(&(valid.len() as u64).to_le_bytes());
    header.extend_from_slice(&sum.finalize().to_le_bytes());
    durable::write_atomic_with(path, |out| {
        out.write_all(&header)?;
        blocks(train, valid, |b| out.write_all(b))
    })
}

/// Gives `each` the ids of `train` then `valid` as little-endian bytes, a
/// block at a time; stops at its first error.
fn blocks(train: &[u32], valid: &[u32], mut each: impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(4 * BLOCK);
    for block in train.chunks(BLOCK).chain(valid.chunks(BLOCK)) {
        bytes.clear();
        bytes.extend(block.iter().flat_map(|t| t.to_le_bytes()));
        each(&bytes)?;
    }
    Ok(())
}

/// A cache entry's streams; `None` when missing, of another format,
/// truncated or damaged (then it is encoded again). Read a block at a time
/// into the streams.
fn read(path: &Path) -> Option<(Vec<u32>, Vec<u32>)> {
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header).ok()?;
    let (n, m, want) = parse_header(&header)?;
    if size != (HEADER as u64).checked_add(4 * (n as u64).checked_add(m as u64)?)? {
        return None;
    }
    let mut sum = crc32fast::Hasher::new();
    let mut bytes = vec![0u8; 4 * BLOCK];
    // `count` ids into a stream of their own.
    let mut ids = |count: usize| -> Option<Vec<u32>> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let b = &mut bytes[..4 * (count - out.len()).min(BLOCK)];
            file.read_exact(b).ok()?;
            sum.update(b);
            out.extend(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
        Some(out)
    };
    let (train, valid) = (ids(n)?, ids(m)?);
    (sum.finalize() == want).then_some((train, valid))
}

/// The two lengths and the checksum of a cache entry's header; `None`
/// when it is not one of this format.
fn parse_header(h: &[u8; HEADER]) -> Option<(usize, usize, u32)> {
    if &h[..8] != MAGIC {
        return None;
    }
    let n = usize::try_from(u64::from_le_bytes(h[8..16].try_into().ok()?)).ok()?;
    let m = usize::try_from(u64::from_le_bytes(h[16..24].try_into().ok()?)).ok()?;
    Some((n, m, u32::from_le_bytes(h[24..28].try_into().ok()?)))
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
        let dir = std::env::temp_dir().join(format!("blkc-token-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("entry.bin");
        // More than a block, so that blocks join up and straddle the split.
        let train: Vec<u32> = (0..BLOCK as u32 + 7).map(|i| i.wrapping_mul(2_654_435_761) % 70_000).collect();
        let valid = vec![5, 6, 69_999];
        write(&path, &train, &valid).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path), Some((train.clone(), valid.clone())));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bytes.len(), HEADER + 4 * (train.len() + valid.len()));
        for at in [0, 9, 17, 25, 30, 4 * BLOCK + 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(read(&path), None, "a flipped bit at byte {at} went unnoticed");
        }
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&path), None, "truncated");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids_outside_the_vocabulary_are_refused() {
        assert!(check_ids(&[0, 257], 258).is_ok());
        let err = check_ids(&[0, 5, 258], 258).err().unwrap_or_default();
        assert!(err.contains("token 2 has id 258") && err.contains("0 to 257"), "{err}");
    }
}
