//! Tokenizers: raw bytes, or byte-level BPE trained on the training split
//! with the `tokenizers` crate and cached on disk under a key made of the
//! corpus fingerprint and the settings.
//!
//! Both reserve two special tokens: end of text (between packed documents)
//! and mask (the masked-language-model objective).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::fixed_length::FixedLength;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

use super::data::{Corpus, Fnv};
use super::plan::{Spread, BPE_SAMPLE_BYTES};

pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const MASK: &str = "<|mask|>";

/// Names an existing tokenizer may give its end-of-text token, in order.
const EOT_NAMES: &[&str] = &[END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>", "[SEP]", "<|eot_id|>"];
/// Names an existing tokenizer may give its mask token.
const MASK_NAMES: &[&str] = &[MASK, "[MASK]", "<mask>"];

/// Tokens of the bytes tokenizer: 256 bytes, end of text, mask.
pub const BYTES_VOCAB: usize = 258;

/// Bumped when the BPE recipe changes, so old cache entries are not reused.
const RECIPE: u32 = 2;

/// Longest piece, in bytes, that BPE sees after splitting on whitespace
/// and punctuation: a long run without spaces (minified code, base64, a
/// data line) is cut into pieces of this length. BPE training costs about
/// the vocabulary size times the longest piece, so without the bound one
/// 400 KB line took a minute and 50 MB never finished; no token of a
/// code corpus is longer than this anyway.
pub const MAX_PIECE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bpe,
    Bytes,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "bpe" => Some(Kind::Bpe),
            "bytes" => Some(Kind::Bytes),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Bpe => "bpe",
            Kind::Bytes => "bytes",
        }
    }
}

#[derive(Debug)]
pub enum Tokenizer {
    Bytes,
    Bpe(Box<HfTokenizer>),
}

impl Tokenizer {
    pub fn kind(&self) -> Kind {
        match self {
            Tokenizer::Bytes => Kind::Bytes,
            Tokenizer::Bpe(_) => Kind::Bpe,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => BYTES_VOCAB,
            Tokenizer::Bpe(t) => t.get_vocab_size(true),
        }
    }

    /// What an id means to this tokenizer, as 64 bits: its kind, size and
    /// the token of every id. Two tokenizers with one fingerprint read
    /// every id alike, whatever their files look like (the key order of a
    /// `tokenizer.json` or its merges, which only say how text is cut).
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(self.kind().name().as_bytes());
        h.write(&(self.vocab_size() as u64).to_le_bytes());
        if let Tokenizer::Bpe(t) = self {
            for id in 0..self.vocab_size() as u32 {
                let token = t.id_to_token(id).unwrap_or_default();
                h.write(&(token.len() as u64).to_le_bytes());
                h.write(token.as_bytes());
            }
        }
        h.finish()
    }

    /// The token between packed documents: blkc's own, or the one an
    /// existing tokenizer uses for it (GPT-2's `<|endoftext|>`, `</s>`,
    /// `[SEP]`…); 0 for a tokenizer that has none.
    pub fn end_of_text(&self) -> u32 {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Bpe(t) => EOT_NAMES.iter().find_map(|n| t.token_to_id(n)).unwrap_or(0),
        }
    }

    /// The mask token of the masked-language objective, if the tokenizer
    /// has one (`<|mask|>`, `[MASK]`, `<mask>`).
    pub fn mask_token(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => Some(257),
            Tokenizer::Bpe(t) => MASK_NAMES.iter().find_map(|n| t.token_to_id(n)),
        }
    }

    /// The mask token (the end of text for a tokenizer without one: only
    /// causal models use such a tokenizer, which training checks).
    pub fn mask(&self) -> u32 {
        self.mask_token().unwrap_or_else(|| self.end_of_text())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Bpe(t) => {
                t.encode_fast(text, false).map(|e| e.get_ids().to_vec()).map_err(|e| format!("cannot tokenize: {e}"))
            }
        }
    }

    /// The ids of many texts, in order: long texts are encoded in pieces
    /// of at most [`CHUNK`] bytes (cut before a line break where there is
    /// one), and pieces in parallel batches. Encoding a 45 MB text whole
    /// took 9 GB; in pieces its memory is bounded by the batch (about
    /// 0.5 GB).
    pub fn encode_all(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
        let Tokenizer::Bpe(t) = self else {
            return Ok(texts.iter().map(|x| x.bytes().map(u32::from).collect()).collect());
        };
        let mut out: Vec<Vec<u32>> = texts.iter().map(|_| Vec::new()).collect();
        let pieces: Vec<(usize, &str)> =
            texts.iter().enumerate().flat_map(|(i, x)| chunks(x).map(move |c| (i, c))).collect();
        // Batches of about BATCH_BYTES: encoding holds some 200 bytes of
        // offsets and alignments per byte of text until it is done.
        let mut batches: Vec<&[(usize, &str)]> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (k, (_, c)) in pieces.iter().enumerate() {
            bytes += c.len();
            if bytes >= BATCH_BYTES || k + 1 == pieces.len() {
                batches.push(&pieces[start..=k]);
                (start, bytes) = (k + 1, 0);
            }
        }
        for batch in batches {
            let inputs: Vec<&str> = batch.iter().map(|(_, c)| *c).collect();
            let encoded = t.encode_batch_fast(inputs, false).map_err(|e| format!("cannot tokenize: {e}"))?;
            for ((i, _), e) in batch.iter().zip(encoded) {
                out[*i].extend_from_slice(e.get_ids());
            }
        }
        Ok(out)
    }

    /// Text of `ids`; special tokens are shown by name, undecodable bytes
    /// as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Bytes => {
                let mut out = String::new();
                let mut bytes = Vec::new();
                for &i in ids {
                    if i < 256 {
                        bytes.push(i as u8);
                        continue;
                    }
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    bytes.clear();
                    out.push_str(if i == 256 { END_OF_TEXT } else { MASK });
                }
                out.push_str(&String::from_utf8_lossy(&bytes));
                out
            }
            Tokenizer::Bpe(t) => t.decode(ids, false).unwrap_or_else(|e| format!("<cannot decode: {e}>")),
        }
    }

    /// Writes the tokenizer to `path` (JSON for BPE; a one-line marker for bytes).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = match self {
            Tokenizer::Bytes => "{\"blkc_tokenizer\": \"bytes\"}\n".to_string(),
            Tokenizer::Bpe(t) => t.to_string(false).map_err(|e| format!("cannot save the tokenizer: {e}"))?,
        };
        crate::durable::write_atomic(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> Result<Tokenizer, String> {
        use crate::durable::{read_regular, Read};
        let bytes =
            match read_regular(path, MAX_TOKENIZER_BYTES).map_err(|e| crate::durable::describe("read", path, &e))? {
                Read::Bytes(b) => b,
                Read::NotRegular => {
                    return Err(format!("`{}` is not a tokenizer file (a device, a pipe or a socket)", path.display()))
                }
                Read::TooLarge => {
                    return Err(format!(
                        "`{}` is larger than a tokenizer file ({} MiB)",
                        path.display(),
                        MAX_TOKENIZER_BYTES >> 20
                    ))
                }
            };
        let text =
            String::from_utf8(bytes).map_err(|_| format!("`{}` is not a tokenizer: not UTF-8 text", path.display()))?;
        if text.contains("\"blkc_tokenizer\": \"bytes\"") {
            return Ok(Tokenizer::Bytes);
        }
        let t = HfTokenizer::from_bytes(text.as_bytes())
            .map_err(|e| format!("`{}` is not a tokenizer: {e}", path.display()))?;
        Ok(Tokenizer::Bpe(Box::new(t)))
    }
}

/// Largest tokenizer file read (the largest published `tokenizer.json`s are
/// tens of MiB).
const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// Longest piece of text encoded at once, in bytes.
pub const CHUNK: usize = 256 << 10;

/// Text encoded in one parallel batch, in bytes.
const BATCH_BYTES: usize = 2 << 20;

/// `text` in pieces of at most [`CHUNK`] bytes, each cut before a line
/// break where one is in its second half (else at a character boundary).
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(CHUNK);
        if cut < rest.len() {
            cut = rest.floor_char_boundary(cut);
            // Both ends on characters: a character may straddle either mark.
            let half = rest.floor_char_boundary(CHUNK / 2);
            if let Some(nl) = rest[half..cut].rfind('\n') {
                cut = half + nl;
            }
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// Where tokenizers and token streams are cached: `$BLKC_CACHE`, else
/// `$XDG_CACHE_HOME/blkc`, else `~/.cache/blkc`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BLKC_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("blkc");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/blkc"),
        None => std::env::temp_dir().join("blkc-cache"),
    }
}

/// How a tokenizer was obtained, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Builtin,
    Trained {
        seconds: f64,
        path: PathBuf,
    },
    Cached {
        path: PathBuf,
    },
    /// An existing tokenizer named by `tokenizer = "path"`.
    File {
        path: PathBuf,
    },
}

/// The tokenizer a `tokenizer` setting names for `corpus`: bytes, BPE with
/// `vocab` tokens (from the cache, or trained now and cached), or
/// An existing tokenizer file (`tokenizer = "path"`): a `tokenizer.json`
/// of the tokenizers library (Hugging Face's format), or a run's.
pub fn obtain(setting: &str, vocab: usize, corpus: &Corpus, quiet: bool) -> Result<(Tokenizer, Origin), String> {
    let kind = match Kind::parse(setting) {
        Some(k) => k,
        None => {
            let path = PathBuf::from(setting);
            let t = Tokenizer::load(&path)?;
            return Ok((t, Origin::File { path }));
        }
    };
    if kind == Kind::Bytes {
        return Ok((Tokenizer::Bytes, Origin::Builtin));
    }
    if !corpus.token_files.is_empty() {
        // `blkc tokenize --tokenizer bpe` writes the BPE it trained beside
        // the ids: that is the corpus's BPE.
        let path = corpus.root.join("tokenizer.json");
        if path.is_file() {
            let t = Tokenizer::load(&path)?;
            return Ok((t, Origin::File { path }));
        }
        return Err(format!(
            "`{}` is pre-tokenised: name the tokenizer that made it (`tokenizer = \"path/tokenizer.json\"`, or \
             `tokenizer = bytes`); a BPE cannot be trained on token ids",
            corpus.source
        ));
    }
    // A split larger than the sample trains the BPE on an evenly spread
    // sample of it, as `blkc tokenize` does by default: the same BPE.
    let total = corpus.train.iter().map(|d| d.text.len() as u64).sum::<u64>();
    let budget = total.min(BPE_SAMPLE_BYTES);
    let mut key = Fnv::new();
    key.write(&corpus.fingerprint().to_le_bytes());
    key.write(&(vocab as u64).to_le_bytes());
    key.write(&RECIPE.to_le_bytes());
    if budget < total {
        key.write(&budget.to_le_bytes());
    }
    let path = cache_dir().join("tokenizers").join(format!("bpe-{vocab}-{:016x}.json", key.finish()));
    if path.is_file() {
        if let Ok(t) = Tokenizer::load(&path) {
            return Ok((t, Origin::Cached { path }));
        }
    }
    if !quiet {
        let of = if budget < total {
            format!("an evenly spread {:.1} MB of the {:.1} MB training split", budget as f64 / 1e6, total as f64 / 1e6)
        } else {
            format!("{:.1} MB", total as f64 / 1e6)
        };
        errln!("tokenizer: training a byte-level BPE of {vocab} tokens on {of} (once per corpus; cached)…");
    }
    let start = std::time::Instant::now();
    // Progress bars on a terminal (the tokenizers library's own).
    let bars = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // In pieces, as for encoding: the library pre-tokenises a whole text at
    // once, some 200 bytes per byte (9 GB for a 45 MB file).
    let t = train_bpe_with(vocab, sampled(&corpus.train, budget).flat_map(chunks), bars)?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the cache `{}`: {e}", dir.display()))?;
    }
    t.save(&path)?;
    Ok((t, Origin::Trained { seconds, path }))
}

/// The texts of `docs` in an evenly spread sample of `budget` bytes
/// ([`Spread`]): what `blkc tokenize` trains its BPE on, from a
/// [`Plan`](super::plan::Plan) of the same corpus.
pub(super) fn sampled(docs: &[super::data::Doc], budget: u64) -> impl Iterator<Item = &str> + Send {
    let mut spread = Spread::new(docs.iter().map(|d| d.text.len() as u64).sum(), budget);
    docs.iter().filter_map(move |d| spread.take(&d.text))
}

/// Trains a byte-level BPE of `vocab` tokens (special tokens and the 256
/// byte symbols included) on `texts`.
pub fn train_bpe<'a>(vocab: usize, texts: impl Iterator<Item = &'a str> + Send) -> Result<Tokenizer, String> {
    train_bpe_with(vocab, texts, false)
}

/// Whether a byte-level BPE can have `vocab` tokens: the 256 bytes and the
/// two special tokens at least.
pub fn bpe_vocab(vocab: usize) -> Result<(), String> {
    if vocab < 256 + 2 {
        return Err(format!("a byte-level BPE needs a vocabulary of at least 258 tokens, not {vocab}"));
    }
    Ok(())
}

/// [`train_bpe`] on texts that `produce` hands over one at a time (its
/// callback says false once training has failed and no more are wanted),
/// cut into pieces and passed on as they come, so that no more than a few
/// pieces are held at once: the memory is the word counts'. `produce` runs
/// on a thread of its own; its error, if any, is returned.
pub fn train_bpe_streamed<F>(vocab: usize, produce: F) -> Result<Tokenizer, String>
where
    F: FnOnce(&mut dyn FnMut(&str) -> bool) -> Result<(), String> + Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(16);
    std::thread::scope(|scope| {
        let producer = scope
            .spawn(move || produce(&mut |text: &str| chunks(text).all(|piece| tx.send(piece.to_string()).is_ok())));
        let trained = train_bpe_with(vocab, rx.into_iter(), false);
        let produced =
            producer.join().unwrap_or_else(|_| Err("the texts could not be read (a thread panicked)".into()));
        // Training's own error first: the producer stops when it fails.
        trained.and_then(|t| produced.map(|()| t))
    })
}

/// [`train_bpe`], with the library's progress bars when `progress`.
pub fn train_bpe_with<S: AsRef<str> + Send>(
    vocab: usize,
    texts: impl Iterator<Item = S> + Send,
    progress: bool,
) -> Result<Tokenizer, String> {
    bpe_vocab(vocab)?;
    let mut t = HfTokenizer::new(BPE::default());
    t.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::ByteLevel(ByteLevel::default().add_prefix_space(false)),
        PreTokenizerWrapper::FixedLength(FixedLength::new(MAX_PIECE)),
    ])));
    t.with_decoder(Some(ByteLevel::default()));
    let specials = vec![AddedToken::from(END_OF_TEXT, true), AddedToken::from(MASK, true)];
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(2)
        .show_progress(progress)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    t.train(&mut trainer, texts).map_err(|e| format!("BPE training failed: {e}"))?;
    t.add_special_tokens(&specials);
    Ok(Tokenizer::Bpe(Box::new(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_encoded_in_pieces_that_join_up() {
        let line = "x = [1, 2, 3]  # ünïcode\n";
        let text = line.repeat(3 * CHUNK / line.len() + 7);
        let pieces: Vec<&str> = chunks(&text).collect();
        assert!(pieces.len() >= 3 && pieces.iter().all(|p| p.len() <= CHUNK));
        assert_eq!(pieces.concat(), text);
        assert!(pieces[1].starts_with('\n'), "cut before a line break");
        // A character across the half mark or the end mark (it panicked
        // across the half: 2-byte 'ы' at bytes 131071..131073).
        for at in [CHUNK / 2 - 1, CHUNK - 1, CHUNK / 2 - 2] {
            let text = format!("{}ы€{}\n{}", "a".repeat(at), "b".repeat(1000), "c".repeat(CHUNK));
            let pieces: Vec<&str> = chunks(&text).collect();
            assert_eq!(pieces.concat(), text, "{at}");
            assert!(pieces.iter().all(|p| p.len() <= CHUNK), "{at}");
        }
        let texts: Vec<String> = (0..30).map(|i| format!("def f{i}(x):\n    return x * {i}\n")).collect();
        let t = train_bpe(300, texts.iter().map(String::as_str)).unwrap_or_else(|e| panic!("{e}"));
        let all = t.encode_all(&[texts[3].as_str(), &text]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all[0], t.encode(&texts[3]).unwrap_or_default());
        assert_eq!(t.decode(&all[1]), text);
    }

    #[test]
    fn bytes_round_trip_with_specials() {
        let t = Tokenizer::Bytes;
        let mut ids = t.encode("héllo").unwrap_or_default();
        ids.push(t.end_of_text());
        ids.extend(t.encode("x").unwrap_or_default());
        assert_eq!(t.decode(&ids), format!("héllo{END_OF_TEXT}x"));
        assert_eq!(t.vocab_size(), 258);
    }

    #[test]
    fn long_lines_without_spaces_are_cut_into_bounded_pieces() {
        // Before the bound this took minutes (quadratic in the line).
        let line: String = (0..400_000u32).map(|i| char::from(b'a' + ((i * 7 + i / 13) % 26) as u8)).collect();
        let texts = [line.as_str(), "def f(x):\n    return x\n"];
        let t = train_bpe(400, texts.iter().copied()).unwrap_or_else(|e| panic!("{e}"));
        let Tokenizer::Bpe(hf) = &t else { panic!("not a BPE") };
        let longest = hf.get_vocab(false).keys().map(|k| k.chars().count()).max().unwrap_or(0);
        assert!(longest <= MAX_PIECE, "a token of {longest} bytes");
        let ids = t.encode(&line[..10_000]).unwrap_or_default();
        assert_eq!(t.decode(&ids), &line[..10_000]);
    }

    #[test]
    fn bpe_trains_to_the_asked_size_and_round_trips() {
        let text =
            "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n";
        let texts: Vec<String> = (0..50).map(|i| format!("{text}# {i}\n")).collect();
        let t = train_bpe(300, texts.iter().map(String::as_str)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.vocab_size(), 300);
        let ids = t.encode(text).unwrap_or_default();
        assert!(ids.len() < text.len() / 2, "{} tokens for {} bytes", ids.len(), text.len());
        assert_eq!(t.decode(&ids), text);
        assert_ne!(t.end_of_text(), t.mask());
        assert!(t.mask() < 300);
    }
}
