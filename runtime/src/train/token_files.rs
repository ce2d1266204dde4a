//! Pre-tokenised data: token ids on disk, as other pipelines write them.
//!
//! - `.npy`: a NumPy array of integer ids, one dimension (little-endian
//!   `u1`, `u2`, `u4`, `u8`, `i2`, `i4`, `i8`);
//! - `.bin`: raw little-endian unsigned 16-bit ids, nanoGPT's
//!   `prepare.py` format (`train.bin`, `val.bin`).
//!
//! Files named `val*` or `valid*` are the validation split and the others
//! training; without such a name, a single file gives its last tenth to
//! validation and several are split by the hash of their names, as text
//! files are. Each file ends with the tokenizer's end of text unless it
//! already does.

use std::path::{Path, PathBuf};

/// Largest token file read, in bytes.
pub const MAX_BYTES: u64 = 4 << 30;

/// Whether `path` names a token file.
pub fn is_token_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "npy" || e == "bin")
}

/// Token streams read from files, and what went where.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    /// Files in each split.
    pub files: (usize, usize),
}

/// Reads `files` (relative names from `root`) into training and
/// validation streams, each file followed by `end` when it does not end
/// with it.
pub fn load(root: &Path, files: &[PathBuf], val_fraction: f64, end: u32) -> Result<Tokens, String> {
    let name = |f: &PathBuf| f.strip_prefix(root).unwrap_or(f).to_string_lossy().replace('\\', "/");
    let named_valid = |f: &PathBuf| {
        let stem = f.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
        stem.starts_with("val")
    };
    let by_name = files.iter().any(named_valid);
    let mut t = Tokens::default();
    for f in files {
        let mut ids = read(f)?;
        if ids.last() != Some(&end) {
            ids.push(end);
        }
        let valid = if by_name { named_valid(f) } else { super::data::in_validation(&name(f), val_fraction) };
        if valid {
            t.valid.extend(ids);
            t.files.1 += 1;
        } else {
            t.train.extend(ids);
            t.files.0 += 1;
        }
    }
    if t.valid.is_empty() || t.train.is_empty() {
        // One side empty: the last tenth of everything validates.
        let mut all = std::mem::take(&mut t.train);
        all.append(&mut t.valid);
        let cut = all.len() - all.len() / 10;
        t.valid = all.split_off(cut);
        t.train = all;
        t.files = (files.len(), files.len());
    }
    Ok(t)
}

/// The ids of one token file.
pub fn read(path: &Path) -> Result<Vec<u32>, String> {
    use crate::durable::{read_regular, Read};
    let bytes = match read_regular(path, MAX_BYTES).map_err(|e| crate::durable::describe("read", path, &e))? {
        Read::Bytes(b) => b,
        Read::NotRegular => return Err(format!("`{}` is not a regular file", path.display())),
        Read::TooLarge => {
            return Err(format!(
                "`{}` is larger than the {} GiB a token file may have",
                path.display(),
                MAX_BYTES >> 30
            ))
        }
    };
    let bad = |why: &str| format!("`{}` is not a token file: {why}", path.display());
    if path.extension().is_some_and(|e| e == "bin") {
        if !bytes.len().is_multiple_of(2) {
            return Err(bad("a .bin file holds 16-bit ids, and its size is odd"));
        }
        return Ok(bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect());
    }
    npy(&bytes).map_err(|e| bad(&e))
}

/// The ids of a `.npy` file (format versions 1 to 3).
fn npy(bytes: &[u8]) -> Result<Vec<u32>, String> {
    if bytes.get(..6) != Some(b"\x93NUMPY") {
        return Err("no NumPy header".into());
    }
    let major = *bytes.get(6).ok_or("truncated")?;
    let (len, at) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("NumPy format version {v}")),
    };
    let header = std::str::from_utf8(bytes.get(at..at + len).ok_or("truncated header")?).map_err(|_| "bad header")?;
    let field = |key: &str| {
        let rest = &header[header.find(key)? + key.len()..];
        let rest = rest.trim_start_matches(|c: char| c == '\'' || c == ':' || c.is_whitespace());
        Some(rest.split([',', '}']).next()?.trim().trim_matches('\'').to_string())
    };
    let descr = field("'descr'").ok_or("no dtype")?;
    if field("'fortran_order'").as_deref() == Some("True") {
        return Err("Fortran order".into());
    }
    let shape = header.split("'shape':").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    let dims: Vec<&str> =
        shape.trim_start_matches([' ', '(']).split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if dims.len() != 1 {
        return Err(format!("an array of {} dimensions; token ids are one", dims.len()));
    }
    let data = &bytes[at + len..];
    let ids = |width: usize, f: &dyn Fn(&[u8]) -> i128| -> Result<Vec<u32>, String> {
        if !data.len().is_multiple_of(width) {
            return Err("its data does not fill the last id".into());
        }
        data.chunks_exact(width)
            .map(|c| u32::try_from(f(c)).map_err(|_| format!("an id of {} is not a token id", f(c))))
            .collect()
    };
    match descr.as_str() {
        "|u1" | "<u1" => ids(1, &|c| i128::from(c[0])),
        "<u2" => ids(2, &|c| i128::from(u16::from_le_bytes([c[0], c[1]]))),
        "<i2" => ids(2, &|c| i128::from(i16::from_le_bytes([c[0], c[1]]))),
        "<u4" => ids(4, &|c| i128::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        "<i4" => ids(4, &|c| i128::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        "<u8" => ids(8, &|c| i128::from(u64::from_le_bytes(c.try_into().unwrap_or_default()))),
        "<i8" => ids(8, &|c| i128::from(i64::from_le_bytes(c.try_into().unwrap_or_default()))),
        other => Err(format!("dtype {other}; token ids are little-endian integers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` of `descr` holding `data`.
    fn npy_file(descr: &str, n: usize, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn npy_and_bin_files_are_read() {
        let ids: Vec<u32> = vec![5, 300, 70_000, 0];
        let le32: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(npy(&npy_file("<u4", 4, &le32)), Ok(ids.clone()));
        let le64: Vec<u8> = ids.iter().flat_map(|&i| i64::from(i).to_le_bytes()).collect();
        assert_eq!(npy(&npy_file("<i8", 4, &le64)), Ok(ids));
        assert!(npy(&npy_file("<f4", 1, &[0; 4])).is_err_and(|e| e.contains("dtype <f4")));
        assert!(npy(&npy_file("<i4", 1, &(-3i32).to_le_bytes())).is_err_and(|e| e.contains("-3")));
        let dir = std::env::temp_dir().join(format!("blkc-tokfiles-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let train: Vec<u8> = (0..1000u16).flat_map(|i| (i % 250).to_le_bytes()).collect();
        let _ = std::fs::write(dir.join("train.bin"), &train);
        let _ = std::fs::write(dir.join("val.bin"), [7u8, 0, 8, 0]);
        let files = [dir.join("train.bin"), dir.join("val.bin")];
        let t = load(&dir, &files, 0.05, 256).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.train.len(), t.valid.clone()), (1001, vec![7, 8, 256]), "named splits, end of text after each");
        let one = load(&dir, &files[..1], 0.05, 256).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((one.train.len(), one.valid.len()), (901, 100));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
