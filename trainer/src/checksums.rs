//! Checkpoint checksums: `checksums.sha256` lists the SHA-256 of every file of a checkpoint folder (the format
//! `sha256sum -c` reads, paths relative to the folder). It is written last, into the staging folder, after
//! every other file, so a checkpoint whose manifest is present was complete when it was moved into place; a
//! file that is missing, truncated or changed later fails [`verify`], naming the file.
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's name inside a checkpoint folder.
pub const MANIFEST: &str = "checksums.sha256";

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Every file of the manifest is there with its checksum.
    Intact,
    /// No manifest: a checkpoint written by a spar without checksums (its files cannot be checked).
    Unchecked,
}

/// Writes `dir/checksums.sha256` over every file under `dir` (the manifest itself excluded), replacing an old
/// one (a checkpoint copied and then changed, as a shared SFT seed is, is sealed again).
pub fn write_manifest(dir: &Path) -> Result<()> {
    let rels = files(dir)?;
    let paths: Vec<PathBuf> = rels.iter().map(|r| dir.join(r)).collect();
    let mut text = String::new();
    for (rel, hash) in rels.iter().zip(sha256_files(&paths)?) {
        text.push_str(&format!("{hash}  {}\n", rel.display()));
    }
    spar_core::fsio::write_atomic(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(())
}

/// Checks checkpoint folder `dir` against its manifest. Errors name the file that is missing or differs.
pub fn verify(dir: &Path) -> Result<Verified> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Verified::Unchecked),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut listed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((want, rel)) = line.split_once("  ") else {
            bail!("{} line {}: not `<sha256>  <file>`", path.display(), i + 1);
        };
        let file = dir.join(rel);
        if !file.is_file() {
            bail!("{} is missing (listed in {MANIFEST})", file.display());
        }
        listed.push((file, want));
    }
    let paths: Vec<PathBuf> = listed.iter().map(|(f, _)| f.clone()).collect();
    for ((file, want), got) in listed.iter().zip(sha256_files(&paths)?) {
        if got != *want {
            bail!(
                "{} does not match its checksum in {MANIFEST} (sha256 {got}, recorded {want})",
                file.display()
            );
        }
    }
    Ok(Verified::Intact)
}

/// The files under `dir`, relative to it, sorted; the manifest left out.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let here = root.join(rel);
        for e in std::fs::read_dir(&here).with_context(|| format!("reading {}", here.display()))? {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                walk(root, &r, out)?;
            } else if r != Path::new(MANIFEST) {
                out.push(r);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// The SHA-256 of each file, hashed on up to as many threads as there are cores (a checkpoint's weight shards
/// and optimizer files are GBs each; one thread hashes about 1-2 GB/s).
fn sha256_files(paths: &[PathBuf]) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<Result<String>>>> =
        paths.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let h = sha256_file(p);
                    if let Ok(mut slot) = done[i].lock() {
                        *slot = Some(h);
                    }
                }
            });
        }
    });
    done.into_iter()
        .zip(paths)
        .map(|(slot, p)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow::anyhow!("{}: not hashed", p.display())))
        })
        .collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_folder_verifies_and_a_changed_missing_or_unlisted_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("model")).unwrap();
        std::fs::write(d.join("model/w.bin"), b"weights").unwrap();
        std::fs::write(d.join("trainer_state.json"), b"{}").unwrap();
        assert_eq!(verify(d).unwrap(), Verified::Unchecked);
        write_manifest(d).unwrap();
        assert_eq!(verify(d).unwrap(), Verified::Intact);
        let manifest = std::fs::read_to_string(d.join(MANIFEST)).unwrap();
        assert!(manifest.contains("  model/w.bin\n"), "{manifest}");
        std::fs::write(d.join("model/w.bin"), b"weightz").unwrap();
        let err = verify(d).unwrap_err().to_string();
        assert!(err.contains("w.bin does not match"), "{err}");
        std::fs::remove_file(d.join("model/w.bin")).unwrap();
        let err = verify(d).unwrap_err().to_string();
        assert!(err.contains("w.bin is missing"), "{err}");
    }
}
