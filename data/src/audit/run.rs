//! What a run declares before it starts (its [`AuditSpec`]): the task, where its outputs and manifest go, the
//! configuration, the flags and the inputs. Outputs are made owner-only: a run folder is created 0700 (tightened
//! if it existed), a file output's missing parent folders are created 0700, and when the run ends files are set to
//! 0600 and the folders inside a run folder to 0700.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use spar_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Whether an output is a folder the run fills or one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Dir,
    File,
}

/// One output of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub path: String,
    pub kind: OutputKind,
    /// The run owns this folder (spar created it, or it was empty, or it is an earlier spar run folder with an
    /// `audit.json`): it is made 0700 and its subfolders are tightened at the end. A folder the user already
    /// had (`--out .`, a shared results folder) keeps its modes.
    #[serde(default = "owned_default")]
    pub owned: bool,
}

fn owned_default() -> bool {
    true
}

/// Everything a run's manifest records at its start.
#[derive(Clone, Debug, Default)]
pub struct AuditSpec {
    /// What ran, e.g. "spar rollout".
    pub task: Option<String>,
    /// Where the manifest is written (`<run folder>/audit.json` or `<output file>.audit.json`).
    pub manifest: PathBuf,
    /// The run's main output, recorded as `run_dir`.
    pub run_dir: PathBuf,
    pub outputs: Vec<(PathBuf, OutputKind)>,
    /// The recipe as TOML text ("" when the command takes none).
    pub recipe_toml: String,
    /// The command's flags as JSON (see [`flags_from_args`]); secrets are removed before recording.
    pub flags: Value,
    pub data_files: Vec<PathBuf>,
    /// Model folders or files; see `audit::inputs` for what is hashed.
    pub models: Vec<PathBuf>,
    /// `git describe` of the build, when the binary knows it (a build script's `SPAR_BUILD_GIT_DESCRIBE`); it
    /// replaces the one spar-data was compiled with.
    pub build_describe: Option<String>,
    /// The SQLite claim cache the run reads and writes, when it has one (see [`AuditSpec::with_claim_cache`]).
    pub claim_cache: Option<PathBuf>,
}

impl AuditSpec {
    /// A run that writes into the folder `dir`: the manifest is `dir/audit.json`.
    pub fn for_dir(task: &str, dir: &Path) -> Self {
        AuditSpec {
            task: Some(task.into()),
            manifest: dir.join(super::AUDIT_FILE),
            run_dir: dir.to_path_buf(),
            outputs: vec![(dir.to_path_buf(), OutputKind::Dir)],
            flags: Value::Null,
            ..Default::default()
        }
    }

    /// A run that writes the one file `file`: the manifest is `<file>.audit.json` next to it.
    pub fn for_file(task: &str, file: &Path) -> Self {
        AuditSpec {
            task: Some(task.into()),
            manifest: manifest_next_to(file),
            run_dir: file.to_path_buf(),
            outputs: vec![(file.to_path_buf(), OutputKind::File)],
            flags: Value::Null,
            ..Default::default()
        }
    }

    /// Adds another output file (e.g. an optional report), sealed 0600 at the end like the main one.
    pub fn with_output_file(mut self, file: &Path) -> Self {
        self.outputs.push((file.to_path_buf(), OutputKind::File));
        self
    }

    /// Names the run's SQLite claim cache: recorded as `claim_cache` and kept as an output file (sealed 0600 at
    /// the end), because it holds (redacted) claims from the run's consultations and may live outside the run
    /// folder when the recipe's `rewards.fact.cache_path` says so.
    pub fn with_claim_cache(mut self, path: Option<PathBuf>) -> Self {
        if let Some(p) = path {
            self.outputs.push((p.clone(), OutputKind::File));
            self.claim_cache = Some(p);
        }
        self
    }

    pub fn with_recipe(mut self, toml: impl Into<String>) -> Self {
        self.recipe_toml = toml.into();
        self
    }

    /// Records the process's command-line flags ([`flags_from_args`] of `std::env::args`).
    pub fn with_process_flags(mut self) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        self.flags = flags_from_args(&args);
        self
    }

    pub fn with_data(mut self, files: impl IntoIterator<Item = PathBuf>) -> Self {
        self.data_files.extend(files);
        self
    }

    pub fn with_model(mut self, path: &Path) -> Self {
        self.models.push(path.to_path_buf());
        self
    }
}

/// `<file>.audit.json`: the manifest of a run whose output is one file.
pub fn manifest_next_to(file: &Path) -> PathBuf {
    let mut name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".audit.json");
    file.with_file_name(name)
}

/// Creates the missing parent folders of `file` owner-only (existing ones are left as they are: a file written
/// into the working directory must not change the working directory's mode).
pub fn create_private_parents(file: &Path) -> Result<()> {
    let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if parent.exists() {
        return Ok(());
    }
    create_private_parents(parent)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(parent, e)),
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    Ok(())
}

/// True when a run may treat the existing or future folder `dir` as its own (see [`Output::owned`]).
fn owns_dir(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Err(_) => true,
        Ok(mut entries) => entries.next().is_none() || dir.join(super::AUDIT_FILE).is_file(),
    }
}

/// Makes outputs owner-only before the run writes them; returns them as recorded.
pub(super) fn prepare_outputs(outputs: &[(PathBuf, OutputKind)]) -> Result<Vec<Output>> {
    let mut out = Vec::with_capacity(outputs.len());
    for (p, kind) in outputs {
        let owned = match kind {
            OutputKind::Dir => {
                let owned = owns_dir(p);
                if owned {
                    super::create_private_dir(p)?;
                } else {
                    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
                }
                owned
            }
            OutputKind::File => {
                create_private_parents(p)?;
                true
            }
        };
        out.push(Output {
            path: p.display().to_string(),
            kind: *kind,
            owned,
        });
    }
    Ok(out)
}

/// After the run: output files and the files inside an owned output folder 0600, folders inside it 0700 (the
/// run may have created them with the default umask). Missing outputs (a run that failed early) are skipped.
pub(super) fn seal_outputs(outputs: &[Output]) -> Result<()> {
    for o in outputs {
        let p = Path::new(&o.path);
        match o.kind {
            OutputKind::File if p.is_file() => super::set_mode(p, 0o600)?,
            OutputKind::Dir if p.is_dir() && o.owned => seal_dir(p)?,
            _ => {}
        }
    }
    Ok(())
}

fn seal_dir(dir: &Path) -> Result<()> {
    super::set_mode(dir, 0o700)?;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        // Symlinks are not followed: their targets are not the run's.
        let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
        if meta.is_dir() {
            seal_dir(&p)?;
        } else if meta.is_file() {
            // Files made by writers spar does not control (libtorch's save, TensorBoard, plots) follow the umask.
            super::set_mode(&p, 0o600)?;
        }
    }
    Ok(())
}

/// The flags of a command line as a JSON object: `--key value` and `--key=value` give `"key": "value"`, a flag
/// without a value gives `true`, a repeated flag or one followed by several values gives a list. Values are kept
/// as text. Secrets are removed by the caller ([`super::scrub_secrets`]), by key and by value.
pub fn flags_from_args(args: &[String]) -> Value {
    let mut map = Map::new();
    let mut positional = Vec::new();
    let mut i = 0;
    let push = |map: &mut Map<String, Value>, key: &str, v: Value| match map.get_mut(key) {
        None => {
            map.insert(key.to_string(), v);
        }
        Some(Value::Array(a)) => a.push(v),
        Some(old) => {
            let first = old.take();
            *old = Value::Array(vec![first, v]);
        }
    };
    while i < args.len() {
        let a = &args[i];
        if let Some(flag) = a.strip_prefix("--").filter(|f| !f.is_empty()) {
            if let Some((k, v)) = flag.split_once('=') {
                push(&mut map, k, Value::String(v.into()));
            } else {
                let mut values = Vec::new();
                while i + 1 < args.len() && !args[i + 1].starts_with("--") {
                    i += 1;
                    values.push(Value::String(args[i].clone()));
                }
                let v = match values.len() {
                    0 => Value::Bool(true),
                    1 => values.pop().expect("one value"),
                    _ => Value::Array(values),
                };
                push(&mut map, flag, v);
            }
        } else {
            positional.push(Value::String(a.clone()));
        }
        i += 1;
    }
    if !positional.is_empty() {
        map.insert("_positional".into(), Value::Array(positional));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_like_clap_writes_them() {
        let f = flags_from_args(&args(
            "eval --model m --set a=1 --set b=2 --no-consultations --compare x y --out=o",
        ));
        assert_eq!(f["model"], "m");
        assert_eq!(f["set"], serde_json::json!(["a=1", "b=2"]));
        assert_eq!(f["no-consultations"], true);
        assert_eq!(f["compare"], serde_json::json!(["x", "y"]));
        assert_eq!(f["out"], "o");
        assert_eq!(f["_positional"], serde_json::json!(["eval"]));
    }

    #[test]
    fn manifest_of_a_file_sits_next_to_it() {
        assert_eq!(
            manifest_next_to(Path::new("out/scored.jsonl")),
            PathBuf::from("out/scored.jsonl.audit.json")
        );
        assert_eq!(
            manifest_next_to(Path::new("gen.jsonl")),
            PathBuf::from("gen.jsonl.audit.json")
        );
    }
}
