//! File helpers every writer and reader shares: atomic writes (temp file + fsync + rename) and JSONL reading
//! whose errors name the file, the line and the field.
use crate::{Error, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a crash leaves either the old file or the new one, never half of one.
/// The file is owner-only (0600) and missing parent folders are created owner-only (0700): what spar writes can
/// hold patient text (docs/privacy.md).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by a closure writing into the temp file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dirs(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = create_private_file(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Creates `dir` and its missing parents owner-only (0700). Folders that exist keep their mode: writing a file
/// into the working directory or a shared results folder must not change that folder.
pub fn create_private_dirs(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Creates (or truncates) `path` for writing, owner-only (0600) whatever the umask; a file that existed is
/// tightened to 0600 too.
pub fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// A JSONL line that could not be read; the reader goes on with the next line.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    pub error: Error,
}

/// Reads a JSONL file of `T`. With `expect_version`, every line must carry that `schema_version`.
/// Bad lines are returned (with line number and field), never silently dropped; I/O errors and a line of
/// another schema version (a file of another format version) fail the whole read.
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    expect_version: Option<u32>,
) -> Result<(Vec<T>, Vec<LineError>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.display().to_string();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&name, i + 1, &line, expect_version) {
            Ok(v) => ok.push(v),
            Err(error @ Error::Invalid { .. }) => return Err(error),
            Err(error) => bad.push(LineError { line: i + 1, error }),
        }
    }
    Ok((ok, bad))
}

/// Like [`read_jsonl`] but the first bad line is an error.
pub fn read_jsonl_strict<T: DeserializeOwned>(
    path: &Path,
    expect_version: Option<u32>,
) -> Result<Vec<T>> {
    let (ok, mut bad) = read_jsonl(path, expect_version)?;
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(bad.remove(0).error)
    }
}

fn parse_line<T: DeserializeOwned>(
    file: &str,
    line: usize,
    text: &str,
    expect_version: Option<u32>,
) -> Result<T> {
    let field_err = |field: &str, msg: String| Error::Field {
        file: file.into(),
        line,
        field: field.into(),
        msg,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| field_err("-", format!("not JSON: {e}")))?;
    if let Some(v) = expect_version {
        match value.get("schema_version").and_then(|x| x.as_u64()) {
            Some(got) if got == v as u64 => {}
            // Another format version is the whole file's problem (as parquet's schema key is), not one line's.
            Some(got) => {
                return Err(Error::invalid(
                    file,
                    format!("line {line}: schema_version {got} is not the supported version {v}"),
                ));
            }
            None => return Err(field_err("schema_version", "missing".into())),
        }
    }
    from_value_at(file, line, value)
}

/// Deserializes one JSON record (line or row `line` of `file`) into `T`; the error names the dotted field path
/// (`turns[2].role`), not the bad value.
pub fn from_value_at<T: DeserializeOwned>(
    file: &str,
    line: usize,
    value: serde_json::Value,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let msg = e.inner().to_string();
        Error::Field {
            file: file.to_string(),
            line,
            field: field_path(&e.path().to_string(), &msg),
            msg,
        }
    })
}

/// The field a serde error is about: its path, with a missing field's own name lifted in (serde reports it at
/// its parent's path).
pub fn field_path(path: &str, msg: &str) -> String {
    let parent = if path == "." { "" } else { path };
    match msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        Some(name) if parent.is_empty() => name.to_string(),
        Some(name) => format!("{parent}.{name}"),
        None if parent.is_empty() => "-".into(),
        None => parent.to_string(),
    }
}

/// Writes records as JSONL, atomically.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<()> {
    write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        for r in records {
            serde_json::to_writer(&mut w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    })
}

/// SHA-256 of a file, hex (audit manifests, pinned data files).
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{SCHEMA_VERSION, Sample};

    /// Files written atomically are 0600 and the folders created for them 0700, whatever the umask; an
    /// existing parent folder keeps its mode.
    #[cfg(unix)]
    #[test]
    fn atomic_writes_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.path().join("a/b/out.json");
        write_atomic(&f, b"{}").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(
            (mode(&d.path().join("a")), mode(&d.path().join("a/b"))),
            (0o700, 0o700)
        );
        assert_eq!(mode(d.path()), 0o755, "an existing folder keeps its mode");
        let g = d.path().join("old.txt");
        std::fs::write(&g, "x").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&g, b"y").unwrap();
        assert_eq!(mode(&g), 0o600, "a replaced file is owner-only too");
    }

    #[test]
    fn atomic_write_and_jsonl_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(
            &p,
            "{\"schema_version\":1,\"run_id\":\"r\"}\nnot json\n{\"run_id\":\"r\"}\n",
        )
        .unwrap();
        let (ok, bad) = read_jsonl::<Sample>(&p, Some(SCHEMA_VERSION)).unwrap();
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 3);
        assert!(
            bad[0].error.to_string().contains(":1: field `case_id`"),
            "{}",
            bad[0].error
        );
        assert_eq!(bad[1].line, 2);
        assert!(
            bad[2]
                .error
                .to_string()
                .contains("field `schema_version`: missing")
        );
        // Another schema version is the file's error, as parquet's is, not a skipped line.
        std::fs::write(&p, "{\"schema_version\":1}\n{\"schema_version\":9}\n").unwrap();
        let err = read_jsonl::<Sample>(&p, Some(SCHEMA_VERSION))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.jsonl: line 2: schema_version 9 is not the supported version"),
            "{err}"
        );
        write_atomic(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
    }

    #[test]
    fn a_bad_nested_value_names_its_field_path_not_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Rec {
            turns: Vec<Turn>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Turn {
            role: Role,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            User,
            Assistant,
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.jsonl");
        std::fs::write(
            &p,
            "{\"turns\":[]}\n\n{\"turns\":[{\"role\":\"user\"},{\"role\":\"assistant\"},{\"role\":\"bogus\"}]}\n\
             {\"turns\":[{}]}\n",
        )
        .unwrap();
        let (ok, bad) = read_jsonl::<Rec>(&p, None).unwrap();
        assert_eq!(ok.len(), 1);
        let msgs: Vec<String> = bad.iter().map(|b| b.error.to_string()).collect();
        assert!(
            msgs[0].contains("cases.jsonl:3: field `turns[2].role`: unknown variant `bogus`"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].contains(":4: field `turns[0].role`: missing"),
            "{msgs:?}"
        );
        let gone = dir.path().join("nope.jsonl");
        let err = read_jsonl::<Rec>(&gone, None).unwrap_err().to_string();
        assert_eq!(err, format!("not found: {}", gone.display()));
    }
}
