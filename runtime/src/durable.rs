//! Writes that survive crashes, and reads that notice damage.
//!
//! Every file blkc writes for later (checkpoints, run settings, the
//! tokenizer, token caches, formatted sources) goes to a sibling temporary
//! file named `.NAME.tmp-PID`, is synced, and is renamed over its final
//! name: a crash or a full disk at any moment leaves either the old file or
//! the new one, never half of one. Temporaries left by killed processes are
//! recognised by [`is_temporary`] and removed by the next writer.
//!
//! Files that must be read back exactly carry a CRC-32 ([`checksum`]),
//! stored beside them and verified on load, so a flipped bit is an error
//! naming the file instead of silently wrong weights.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The marker in the names of temporaries (`.NAME.tmp-PID`).
const TMP: &str = ".tmp-";

/// A sibling temporary path of `path` for this process.
pub fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP}{}", std::process::id()))
}

/// Whether `name` is a temporary left by [`write_atomic`] or a checkpoint
/// being written (`.step-….tmp-PID`).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(TMP)
}

/// What an I/O error means to the user, with the path: a full disk and a
/// missing permission are said in words, not as an OS error number.
pub fn describe(action: &str, path: &Path, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::StorageFull => "no space left on device".to_string(),
        std::io::ErrorKind::QuotaExceeded => "disk quota exceeded".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system".to_string(),
        // What creating a directory where a file is says.
        std::io::ErrorKind::AlreadyExists => "it exists and is not a directory".to_string(),
        std::io::ErrorKind::NotADirectory => "a part of the path is a file, not a directory".to_string(),
        _ => e.to_string(),
    };
    format!("cannot {action} `{}`: {why}", path.display())
}

/// Writes `bytes` to a sibling temporary file, syncs it and renames it over
/// `path`. On failure the temporary is removed (a full disk leaves no
/// half-written file behind to fill it further).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_with(path, bytes, None)
}

/// [`write_atomic`] for a file written piece by piece: `fill` writes it
/// through a buffer into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    write_into(path, None, fill)
}

/// Rewrites a file the user keeps (a source `blkc fmt` formats) as
/// [`write_atomic`] does, but as an editor saves it: through a symbolic
/// link to the file it names (the link stays), with the file's permissions
/// kept; a read-only file is refused, as is anything that is not a regular
/// file (a named pipe would be replaced by a file).
pub fn rewrite(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let target = std::fs::canonicalize(path).map_err(|e| describe("write", path, &e))?;
    let meta = std::fs::metadata(&target).map_err(|e| describe("write", path, &e))?;
    if !meta.is_file() {
        return Err(format!("cannot write `{}`: it is not a regular file", path.display()));
    }
    if meta.permissions().readonly() {
        return Err(format!("cannot write `{}`: it is read-only", path.display()));
    }
    write_with(&target, bytes, Some(meta.permissions()))
}

fn write_with(path: &Path, bytes: &[u8], permissions: Option<std::fs::Permissions>) -> Result<(), String> {
    write_into(path, permissions, |f| f.write_all(bytes))
}

/// Writes `path` through its temporary file (made with `permissions`),
/// which [`persist`] syncs and moves into place; on failure the temporary
/// is removed.
fn write_into(
    path: &Path,
    permissions: Option<std::fs::Permissions>,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), String> {
    let tmp = temporary(path);
    let written = std::fs::File::create(&tmp).and_then(|f| {
        if let Some(p) = permissions {
            f.set_permissions(p)?;
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        fill(&mut out)?;
        out.flush()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(describe("write", path, &e));
    }
    persist(&tmp, path)
}

/// Moves the finished temporary file `tmp` over `path` durably: its
/// contents reach the disk before the rename, and the rename before the
/// return.
pub fn persist(tmp: &Path, path: &Path) -> Result<(), String> {
    let moved = std::fs::File::open(tmp).and_then(|f| f.sync_all()).and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = moved {
        let _ = std::fs::remove_file(tmp);
        return Err(describe("write", path, &e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir);
    }
    Ok(())
}

/// Syncs a directory's entries (where the platform allows opening one).
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// CRC-32 (IEEE) of `bytes`, as stored beside checkpoint files.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Reads `path` whole and checks it against `expected` (when the file's
/// checksum was recorded).
pub fn read_verified(path: &Path, expected: Option<u32>) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| describe("read", path, &e))?;
    if let Some(want) = expected {
        let have = checksum(&bytes);
        if have != want {
            return Err(format!(
                "`{}` is damaged: its checksum is {have:08x}, {want:08x} was recorded when it was written",
                path.display()
            ));
        }
    }
    Ok(bytes)
}

/// What reading a file of data gave.
#[derive(Debug)]
pub enum Read {
    Bytes(Vec<u8>),
    /// A device, pipe or socket (directly or behind a link): never opened,
    /// since reading it could block or never end.
    NotRegular,
    /// More than the cap; the cap applies to what is read, not to the size
    /// the file system reports.
    TooLarge,
}

/// The bytes of `path` when it is a regular file of at most `cap` bytes.
pub fn read_regular(path: &Path, cap: u64) -> std::io::Result<Read> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Ok(Read::NotRegular);
    }
    if meta.len() > cap {
        return Ok(Read::TooLarge);
    }
    read_capped(std::fs::File::open(path)?, cap)
}

/// What `r` gives, when that is at most `cap` bytes (one byte more is
/// read to know).
pub fn read_capped(r: impl std::io::Read, cap: u64) -> std::io::Result<Read> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(r, cap.saturating_add(1)), &mut bytes)?;
    Ok(if bytes.len() as u64 > cap { Read::TooLarge } else { Read::Bytes(bytes) })
}

/// Removes the temporaries under `dir` (one level, and the `checkpoints`
/// folder below it) left by killed or failed writers; returns how many.
/// Only the holder of the run's lock may call this: another live writer's
/// temporaries would go too.
pub fn remove_temporaries(dir: &Path) -> usize {
    let mut removed = 0;
    for d in [dir.to_path_buf(), dir.join("checkpoints")] {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if !is_temporary(&e.file_name().to_string_lossy()) {
                continue;
            }
            let p = e.path();
            let gone = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed += usize::from(gone.is_ok());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_are_recognised_and_removed() {
        let dir = std::env::temp_dir().join(format!("blkc-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(dir.join("checkpoints/.step-00000004.tmp-77"));
        let _ = std::fs::write(dir.join(".run.json.tmp-12"), "x");
        let _ = std::fs::write(dir.join("checkpoints/.latest.tmp-99"), "x");
        let _ = std::fs::write(dir.join("run.json"), "{}");
        assert!(is_temporary(".latest.tmp-99") && !is_temporary("latest") && !is_temporary("step-00000004"));
        assert_eq!(remove_temporaries(&dir), 3);
        assert!(dir.join("run.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let dir = std::env::temp_dir().join(format!("blkc-crc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("w.bin");
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        write_atomic(&p, &bytes).unwrap_or_else(|e| panic!("{e}"));
        let sum = checksum(&bytes);
        assert!(read_verified(&p, Some(sum)).is_ok());
        let mut flipped = bytes.clone();
        flipped[500] ^= 4;
        let _ = std::fs::write(&p, &flipped);
        let err = read_verified(&p, Some(sum)).err().unwrap_or_default();
        assert!(err.contains("is damaged") && err.contains("w.bin"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_disk_is_said_in_words() {
        let e = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let m = describe("write", Path::new("run/model.safetensors"), &e);
        assert_eq!(m, "cannot write `run/model.safetensors`: no space left on device");
    }
}
