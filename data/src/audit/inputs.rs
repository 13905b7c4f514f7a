//! Model inputs of a run, identified without reading tens of gigabytes.
//!
//! A model directory is recorded file by file (relative path, size, SHA-256). Files up to
//! [`FULL_HASH_MAX_BYTES`] (configs, tokenizer, chat template, the safetensors index, the tiny CPU models) are
//! hashed whole. Larger files (safetensors shards of real checkpoints) get a *sampled* SHA-256: the size, the first
//! MiB (which holds a safetensors header: every tensor name, dtype, shape and offset) and 32 evenly spaced 64 KiB
//! blocks. That reads about 3 MiB per shard whatever its size, and tells two checkpoints apart in practice (a
//! training step changes every block); it is not proof against deliberate tampering. `SPAR_AUDIT_FULL_HASH=1`
//! hashes every file whole.
use serde::{Deserialize, Serialize};
use sha2::Digest;
use spar_core::{Error, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Files at most this big are hashed whole.
pub const FULL_HASH_MAX_BYTES: u64 = 256 << 20;
/// Files recorded per model directory at most (a directory with more is summarised by the count).
const MAX_FILES: usize = 2000;
/// Directory levels searched below a model directory (a spar checkpoint keeps the weights in `model/`).
const MAX_DEPTH: usize = 3;

/// How much of a file its hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashCoverage {
    /// SHA-256 of the whole file.
    Full,
    /// SHA-256 of the size, the first MiB and 32 evenly spaced 64 KiB blocks.
    Sampled,
}

/// One file of a model input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Relative to the model path (the file name when the model is a single file).
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    pub coverage: HashCoverage,
}

/// A model directory (or file) a run read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInput {
    /// As given by the caller.
    pub path: String,
    pub absolute: Option<String>,
    pub total_bytes: u64,
    pub files: Vec<ModelFile>,
    /// Files not listed because the directory holds more than the limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_left_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn full_hash_forced() -> bool {
    std::env::var("SPAR_AUDIT_FULL_HASH").is_ok_and(|v| v == "1" || v == "true")
}

/// Hashes `path` whole when it is small (or `SPAR_AUDIT_FULL_HASH=1`), else sampled.
pub fn hash_file(path: &Path) -> Result<(String, HashCoverage)> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len <= FULL_HASH_MAX_BYTES || full_hash_forced() {
        return Ok((spar_core::fsio::sha256_file(path)?, HashCoverage::Full));
    }
    Ok((sampled_sha256(path, len)?, HashCoverage::Sampled))
}

fn sampled_sha256(path: &Path, len: u64) -> Result<String> {
    const HEAD: u64 = 1 << 20;
    const BLOCK: u64 = 64 << 10;
    const BLOCKS: u64 = 32;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    h.update(b"spar-sampled-sha256-v1");
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; HEAD as usize];
    let mut read_at = |offset: u64, n: u64, h: &mut sha2::Sha256| -> Result<()> {
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(path, e))?;
        let n = n.min(len.saturating_sub(offset)) as usize;
        f.read_exact(&mut buf[..n])
            .map_err(|e| Error::io(path, e))?;
        h.update(&buf[..n]);
        Ok(())
    };
    read_at(0, HEAD, &mut h)?;
    for i in 0..BLOCKS {
        read_at(i * (len / BLOCKS), BLOCK, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if depth < MAX_DEPTH {
                walk(&p, depth + 1, out)?;
            }
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Describes a model directory or file (see the module doc for what is hashed how). Errors name the path.
pub fn describe_model(path: &Path) -> Result<ModelInput> {
    let mut files = Vec::new();
    if path.is_dir() {
        walk(path, 0, &mut files)?;
    } else {
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        files.push(path.to_path_buf());
    }
    let left_out = files.len().saturating_sub(MAX_FILES);
    files.truncate(MAX_FILES);
    let mut listed = Vec::with_capacity(files.len());
    let mut total = 0;
    for f in &files {
        let bytes = std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
        total += bytes;
        let (sha256, coverage) = hash_file(f)?;
        let name = if path.is_dir() {
            f.strip_prefix(path).unwrap_or(f)
        } else {
            Path::new(f.file_name().unwrap_or(f.as_os_str()))
        };
        listed.push(ModelFile {
            name: name.display().to_string(),
            bytes,
            sha256,
            coverage,
        });
    }
    Ok(ModelInput {
        path: path.display().to_string(),
        absolute: std::fs::canonicalize(path)
            .ok()
            .map(|a| a.display().to_string()),
        total_bytes: total,
        files: listed,
        files_left_out: left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_dirs_are_listed_and_big_files_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("model");
        std::fs::create_dir_all(m.join("sub")).unwrap();
        std::fs::write(m.join("config.json"), b"{\"hidden_size\": 8}").unwrap();
        std::fs::write(m.join("sub/extra.bin"), b"abc").unwrap();
        std::fs::write(m.join(".hidden"), b"x").unwrap();
        let d = describe_model(&m).unwrap();
        let names: Vec<&str> = d.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["config.json", "sub/extra.bin"]);
        assert_eq!(d.total_bytes, 18 + 3);
        assert_eq!(
            d.files[0].sha256,
            spar_core::fsio::sha256_file(&m.join("config.json")).unwrap()
        );
        assert!(d.files.iter().all(|f| f.coverage == HashCoverage::Full));

        // A sparse file over the limit is sampled: cheap, and a changed byte in a sampled block changes it.
        let big = dir.path().join("shard.safetensors");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(FULL_HASH_MAX_BYTES + 4096).unwrap();
        drop(f);
        let (a, cov) = hash_file(&big).unwrap();
        assert_eq!(cov, HashCoverage::Sampled);
        let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        std::io::Write::write_all(&mut f, b"header changed").unwrap();
        drop(f);
        let (b, _) = hash_file(&big).unwrap();
        assert_ne!(a, b);
        let single = describe_model(&big).unwrap();
        assert_eq!(single.files[0].name, "shard.safetensors");
        assert!(describe_model(&dir.path().join("missing")).is_err());
    }
}
