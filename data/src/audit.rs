//! The audit manifest every run writes into its run directory (`audit.json`): which data went in (with
//! SHA-256), which configuration (the recipe with secret-looking values removed), which code (crate version,
//! git commit / describe), who ran it where and when, and how it ended.
//!
//! Run and data directories are created owner-only (0700) because they can hold patient text; the manifest is
//! written atomically and owner-only (0600). [`find_secret_leaks`] checks that no secret environment value
//! (API keys, tokens) ended up in a file.
//!
//! Commands other than `spar train` describe themselves with an [`AuditSpec`] ([`AuditManifest::begin`]): a run
//! that writes a folder keeps `audit.json` in it, a run that writes one file keeps `<file>.audit.json` next to it;
//! model inputs are recorded per file (`inputs`).
mod inputs;
mod run;

pub use inputs::{
    FULL_HASH_MAX_BYTES, HashCoverage, ModelFile, ModelInput, describe_model, hash_file,
};
pub use run::{
    AuditSpec, Output, OutputKind, create_private_parents, flags_from_args, manifest_next_to,
};

use serde::{Deserialize, Serialize};
use spar_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Version of the `audit.json` layout.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;
/// File name of the manifest inside a run directory.
pub const AUDIT_FILE: &str = "audit.json";
/// What replaces a removed secret value in the recorded configuration.
pub const REDACTED: &str = "<redacted>";

/// One input data file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// As given by the caller.
    pub path: String,
    /// Absolute path, when it could be resolved.
    pub absolute: Option<String>,
    pub bytes: u64,
    pub sha256: String,
}

/// The code that ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeVersion {
    /// spar-data's crate version (all workspace crates share it).
    pub crate_version: String,
    /// `git rev-parse HEAD`, when the run starts inside a git checkout.
    pub git_commit: Option<String>,
    /// `git describe --always --dirty --tags`.
    pub git_describe: Option<String>,
    /// `git describe` of the tree the binary was built from, when the build exported `SPAR_BUILD_GIT_DESCRIBE`
    /// (the fields above are read from the source checkout at run time and may have moved on since the build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_describe: Option<String>,
}

/// The manifest. `start` writes it with `finished_at = None`; `finish` writes it again with the outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditManifest {
    pub schema_version: u32,
    pub run_dir: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    /// "running" until `finish` sets the caller's outcome (`"ok"`, `"failed: <reason>"`, ...).
    pub outcome: String,
    pub user: String,
    pub uid: Option<u32>,
    pub host: String,
    pub pid: u32,
    /// The command line, with secret-looking arguments replaced.
    pub command: Vec<String>,
    pub code: CodeVersion,
    /// The recipe as JSON (parsed from its TOML), secret-looking values replaced by `<redacted>`.
    pub config: serde_json::Value,
    /// Dotted paths of the config values that were redacted.
    pub redacted_keys: Vec<String>,
    pub data_files: Vec<DataFile>,
    /// What ran ("spar rollout", ...); None for manifests written through [`AuditManifest::start`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The command's flags as JSON, secret-looking values replaced (their paths are in `redacted_keys` as
    /// `flags.<name>`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub flags: serde_json::Value,
    /// Model folders or files read, file by file with sizes and hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelInput>,
    /// What the run writes (made owner-only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Output>,
    /// Where this manifest is, when not `run_dir/audit.json` (a file output's `<file>.audit.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The SQLite claim cache the run used (redacted claims from its consultations), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_cache: Option<String>,
}

impl AuditManifest {
    /// Creates `run_dir` (0700), hashes `data_files`, records the recipe (TOML text; an empty string records
    /// an empty config) and writes `run_dir/audit.json`. Errors name the file that could not be read.
    pub fn start(run_dir: &Path, recipe_toml: &str, data_files: &[PathBuf]) -> Result<Self> {
        let spec = AuditSpec {
            manifest: run_dir.join(AUDIT_FILE),
            run_dir: run_dir.to_path_buf(),
            outputs: vec![(run_dir.to_path_buf(), OutputKind::Dir)],
            recipe_toml: recipe_toml.to_string(),
            data_files: data_files.to_vec(),
            ..Default::default()
        };
        Self::begin(&spec)
    }

    /// Prepares the outputs of `spec` owner-only, hashes its data files and models, records the recipe and
    /// flags without secrets, and writes the manifest where `spec` says. Errors name the file that could not be
    /// read.
    pub fn begin(spec: &AuditSpec) -> Result<Self> {
        let outputs = run::prepare_outputs(&spec.outputs)?;
        let mut config: serde_json::Value = if spec.recipe_toml.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            let table: toml::Table = toml::from_str(&spec.recipe_toml).map_err(|e| {
                Error::invalid(
                    format!("{} (recipe)", spec.run_dir.display()),
                    format!("recipe is not valid TOML: {e}"),
                )
            })?;
            serde_json::to_value(table).map_err(|e| Error::Other(format!("recipe to JSON: {e}")))?
        };
        let secrets = secret_env_values();
        let mut redacted_keys = scrub_secrets(&mut config, &secrets);
        let mut flags = spec.flags.clone();
        redacted_keys.extend(
            scrub_secrets(&mut flags, &secrets)
                .into_iter()
                .map(|k| format!("flags.{k}")),
        );
        let mut files = Vec::with_capacity(spec.data_files.len());
        for p in &spec.data_files {
            files.push(describe_file(p)?);
        }
        let mut models = Vec::with_capacity(spec.models.len());
        for p in &spec.models {
            models.push(describe_model(p)?);
        }
        let (user, uid) = current_user();
        let code = code_version();
        let args: Vec<String> = std::env::args().collect();
        let default_manifest = spec.run_dir.join(AUDIT_FILE);
        let manifest = AuditManifest {
            schema_version: AUDIT_SCHEMA_VERSION,
            run_dir: spec.run_dir.display().to_string(),
            started_at: rfc3339_now(),
            finished_at: None,
            outcome: "running".into(),
            user,
            uid,
            host: hostname(),
            pid: std::process::id(),
            command: scrub_command(&args, &secrets),
            code: CodeVersion {
                build_describe: spec
                    .build_describe
                    .clone()
                    .filter(|d| !d.is_empty())
                    .or(code.build_describe),
                ..code
            },
            config,
            redacted_keys,
            data_files: files,
            task: spec.task.clone(),
            flags,
            models,
            outputs,
            manifest: (spec.manifest != default_manifest)
                .then(|| spec.manifest.display().to_string()),
            claim_cache: spec.claim_cache.as_ref().map(|p| p.display().to_string()),
        };
        manifest.write()?;
        Ok(manifest)
    }

    /// Adds an input discovered after `start` (e.g. a file a stage opens later) and rewrites the manifest.
    pub fn add_data_file(&mut self, path: &Path) -> Result<()> {
        self.data_files.push(describe_file(path)?);
        self.write()
    }

    /// Records the end time and outcome and rewrites the manifest, then makes the outputs owner-only (files
    /// 0600, folders inside an output folder 0700). The outcome is recorded with secrets and PHI removed (an
    /// error message can quote a line of case text).
    pub fn finish(mut self, outcome: &str) -> Result<Self> {
        self.finished_at = Some(rfc3339_now());
        self.outcome = spar_core::phi::redact(&scrub_arg(outcome, &secret_env_values()));
        self.write()?;
        run::seal_outputs(&self.outputs)?;
        Ok(self)
    }

    /// Where the manifest is: `manifest` when set, else `run_dir/audit.json`.
    pub fn path(&self) -> PathBuf {
        match &self.manifest {
            Some(m) => PathBuf::from(m),
            None => Path::new(&self.run_dir).join(AUDIT_FILE),
        }
    }

    /// Reads a manifest back.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::invalid(path.display(), e.to_string()))
    }

    fn write(&self) -> Result<()> {
        let path = self.path();
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Other(format!("audit manifest to JSON: {e}")))?;
        spar_core::fsio::write_atomic(&path, &json)?;
        set_mode(&path, 0o600)
    }
}

fn describe_file(p: &Path) -> Result<DataFile> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    Ok(DataFile {
        path: p.display().to_string(),
        absolute: std::fs::canonicalize(p)
            .ok()
            .map(|a| a.display().to_string()),
        bytes: meta.len(),
        sha256: spar_core::fsio::sha256_file(p)?,
    })
}

/// Creates `dir` and any missing parents owner-only (0700), and tightens `dir` itself to 0700 if it existed.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    let _ = (path, mode);
    Ok(())
}

/// True for config keys and environment variable names that hold secrets: a segment (split on `_ - .`) is
/// secret, token, password, apikey, credential(s), auth, bearer, cookie ..., or the name contains api_key /
/// access_key / private_key. Names ending in `_env` (they name a variable, not a value) are not secrets;
/// neither are look-alikes such as `max_new_tokens` or `tokenizer`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let segs: Vec<&str> = k.split(['_', '-', '.']).filter(|s| !s.is_empty()).collect();
    if segs.last() == Some(&"env") || segs.last() == Some(&"var") {
        return false;
    }
    // Secret wherever they appear in the name.
    const ANYWHERE: &[&str] = &[
        "secret",
        "secrets",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "apikey",
        "credential",
        "credentials",
        "bearer",
        "privatekey",
    ];
    // Secret only as the last word: `hf_token` is, `pad_token_id` and `token_budget` are not.
    const LAST: &[&str] = &[
        "token",
        "auth",
        "authorization",
        "cookie",
        "pat",
        "dsn",
        "key",
    ];
    let last_is = |set: &[&str]| segs.last().is_some_and(|s| set.contains(s));
    let key_last = segs.last() == Some(&"key")
        && segs.len() >= 2
        && [
            "api",
            "access",
            "private",
            "secret",
            "signing",
            "encryption",
        ]
        .contains(&segs[segs.len() - 2]);
    segs.iter().any(|s| ANYWHERE.contains(s))
        || (last_is(LAST) && segs.last() != Some(&"key"))
        || key_last
        || [
            "api_key",
            "apikey",
            "access_key",
            "private_key",
            "secret_key",
            "client_secret",
        ]
        .iter()
        .any(|p| k.contains(p))
        || k.replace(['-', '.'], "_").contains("api_key")
}

/// True for string values that look like credentials whatever their key ("sk-...", "ghp_...", "Bearer ...").
fn looks_like_secret_value(v: &str) -> bool {
    let v = v.trim();
    let prefixed = [
        "sk-",
        "sk_",
        "ghp_",
        "gho_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "hf_",
        "AKIA",
        "glpat-",
    ]
    .iter()
    .any(|p| v.starts_with(p) && v.len() >= p.len() + 16 && !v.contains(char::is_whitespace));
    prefixed || v.to_ascii_lowercase().starts_with("bearer ")
}

/// Environment variables whose names look secret and whose values are long enough to matter (>= 8 chars):
/// `(name, value)`. Values are used only for comparison and never written anywhere.
pub fn secret_env_values() -> Vec<(String, String)> {
    secret_values_of(std::env::vars())
}

/// [`secret_env_values`] of the variables `vars`. The shell's `PWD` / `OLDPWD` are working directories
/// ("print working directory"), not passwords: taken for secrets, every path under the working directory in a
/// manifest would read `<redacted>`.
fn secret_values_of(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.filter(|(k, v)| {
        !matches!(k.as_str(), "PWD" | "OLDPWD") && is_secret_key(k) && v.len() >= 8
    })
    .collect()
}

/// Replaces secret values in a JSON config in place; returns the dotted paths replaced.
pub fn scrub_secrets(
    value: &mut serde_json::Value,
    secret_env: &[(String, String)],
) -> Vec<String> {
    let mut removed = Vec::new();
    scrub_at(value, "", secret_env, &mut removed);
    removed
}

fn scrub_at(
    v: &mut serde_json::Value,
    path: &str,
    env: &[(String, String)],
    removed: &mut Vec<String>,
) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if is_secret_key(k) && !child.is_null() && !matches!(child, Value::Bool(_)) {
                    *child = Value::String(REDACTED.into());
                    removed.push(p);
                } else {
                    scrub_at(child, &p, env, removed);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                scrub_at(child, &format!("{path}[{i}]"), env, removed);
            }
        }
        Value::String(s)
            if looks_like_secret_value(s)
                || s.split_once('=')
                    .is_some_and(|(k, _)| is_secret_key(k.trim()))
                || env.iter().any(|(_, val)| s.contains(val.as_str())) =>
        {
            *v = Value::String(REDACTED.into());
            removed.push(path.to_string());
        }
        _ => {}
    }
}

/// A command-line argument with secret values replaced (`--api-key=sk-...`, a bare secret env value).
fn scrub_arg(arg: &str, env: &[(String, String)]) -> String {
    // `--api-key=X`, `a.api_key=X` and `--set=a.api_key=X`: everything after a secret-looking key goes.
    let parts: Vec<&str> = arg.split('=').collect();
    for i in 0..parts.len().saturating_sub(1) {
        if is_secret_key(parts[i].trim_start_matches('-')) {
            return format!("{}={REDACTED}", parts[..=i].join("="));
        }
    }
    let mut out = arg.to_string();
    for (_, val) in env {
        if out.contains(val.as_str()) {
            out = out.replace(val.as_str(), REDACTED);
        }
    }
    if looks_like_secret_value(&out) {
        REDACTED.to_string()
    } else {
        out
    }
}

/// A command line with secrets replaced: `--key=value` and `--set a.api_key=...` by key, the argument after a
/// secret-looking flag (`--api-key VALUE`), values of secret environment variables and credential-looking values.
pub fn scrub_command(args: &[String], env: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_secret_flag = false;
    for a in args {
        if after_secret_flag && !a.starts_with("--") {
            out.push(REDACTED.to_string());
        } else {
            out.push(scrub_arg(a, env));
        }
        after_secret_flag = a
            .strip_prefix("--")
            .is_some_and(|f| !f.contains('=') && is_secret_key(f));
    }
    out
}

/// Names of secret environment variables (see [`secret_env_values`]) whose values occur in the file at
/// `path`. Empty means clean. The values themselves are never returned or logged.
pub fn find_secret_leaks(path: &Path) -> Result<Vec<String>> {
    find_secret_leaks_with(path, &secret_env_values())
}

/// Like [`find_secret_leaks`] with an explicit `(name, value)` list (tests, or secrets not in the environment).
pub fn find_secret_leaks_with(path: &Path, secrets: &[(String, String)]) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut names: Vec<String> = secrets
        .iter()
        .filter(|(_, v)| !v.is_empty() && text.contains(v.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn current_user() -> (String, Option<u32>) {
    let name = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    // Linux: the real uid is the first number of the "Uid:" line.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        });
    // No USER in the environment (containers, cron): the account name of the uid from /etc/passwd.
    let name = name.or_else(|| {
        let uid = uid?;
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
            })
    });
    let name = name.unwrap_or_else(|| {
        uid.map(|u| format!("uid {u}"))
            .unwrap_or_else(|| "unknown".into())
    });
    (name, uid)
}

/// This machine's host name (HOSTNAME, else the kernel's; "unknown" when neither is readable).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn git(args: &[&str], dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Crate version, the build's `git describe` when the build recorded it (`SPAR_BUILD_GIT_DESCRIBE`), and git
/// commit / describe of the source checkout this crate was built from, read at run time. The working directory's
/// repository is not consulted: it is the user's project, not spar's code.
pub fn code_version() -> CodeVersion {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let commit = git(&["rev-parse", "HEAD"], &src);
    CodeVersion {
        crate_version: env!("CARGO_PKG_VERSION").into(),
        git_describe: commit
            .as_ref()
            .and_then(|_| git(&["describe", "--always", "--dirty", "--tags"], &src)),
        git_commit: commit,
        build_describe: option_env!("SPAR_BUILD_GIT_DESCRIBE")
            .filter(|s| !s.is_empty())
            .map(String::from),
    }
}

/// Now as RFC 3339 UTC with milliseconds ("2026-11-25T19:24:31.123Z").
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_634_671, 0), "2026-11-25T19:24:31.000Z");
    }

    #[test]
    fn secret_keys() {
        for k in [
            "api_key",
            "OPENAI_API_KEY",
            "hf_token",
            "password",
            "db-password",
            "client_secret",
            "Authorization",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "max_new_tokens",
            "tokenizer",
            "api_key_env",
            "model",
            "pad_token_id",
            "stop_token_ids",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A run with one output file: the manifest sits next to it, missing folders are created owner-only, the
    /// recipe and flags are recorded without the keys they carry, and the outcome without PHI.
    #[cfg(unix)]
    #[test]
    fn file_output_manifest_keeps_secrets_out() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("in.jsonl");
        std::fs::write(&data, b"{}\n").unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        let out = dir.path().join("new/deeper/out.jsonl");
        let key = "sk-live-abcdefghijklmnopqrstuvwxyz012345";
        let mut spec = AuditSpec::for_file("spar score", &out)
            .with_recipe(format!(
                "[rewards.judge.endpoint]\nbase_url = \"https://j.example.org/v1\"\nmodel = \"j\"\napi_key = \"{key}\"\napi_key_env = \"JUDGE_KEY\"\n"
            ))
            .with_data([data.clone()])
            .with_model(&model);
        spec.flags = flags_from_args(&[
            "score".into(),
            "--set".into(),
            format!("rewards.judge.endpoint.api_key={key}"),
            "--api-key".into(),
            "plainsecretvalue".into(),
            "--out".into(),
            out.display().to_string(),
        ]);
        let m = AuditManifest::begin(&spec).unwrap();
        let path = dir.path().join("new/deeper/out.jsonl.audit.json");
        assert_eq!(m.path(), path);
        assert!(path.is_file());
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert_eq!(mode(&dir.path().join("new/deeper")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(m.task.as_deref(), Some("spar score"));
        assert_eq!(m.models[0].files[0].name, "config.json");
        assert_eq!(m.data_files[0].bytes, 3);
        assert_eq!(m.flags["out"], out.display().to_string());
        assert_eq!(
            m.config["rewards"]["judge"]["endpoint"]["api_key_env"],
            "JUDGE_KEY"
        );
        let mut keys = m.redacted_keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            [
                "flags.api-key",
                "flags.set",
                "rewards.judge.endpoint.api_key"
            ]
        );
        std::fs::write(&out, b"result\n").unwrap();
        let done = m
            .finish("failed: cases.jsonl:3: patient John Smith, DOB 03/14/1962")
            .unwrap();
        assert!(
            !done.outcome.contains("John Smith") && !done.outcome.contains("1962"),
            "{}",
            done.outcome
        );
        assert_eq!(mode(&out), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        for leaked in [key, "plainsecretvalue"] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert_eq!(AuditManifest::read(&path).unwrap(), done);
        // `--api-key VALUE` as two arguments: the value goes too.
        let cmd = scrub_command(
            &[
                "spar".into(),
                "--api-key".into(),
                "plainsecretvalue".into(),
                "--out".into(),
                "o".into(),
            ],
            &[],
        );
        assert_eq!(cmd, ["spar", "--api-key", REDACTED, "--out", "o"]);
        let cmd = scrub_command(
            &["--set=x.api_key=abc123".into(), "x.hf_token=abc".into()],
            &[],
        );
        assert_eq!(cmd, ["--set=x.api_key=<redacted>", "x.hf_token=<redacted>"]);
    }

    /// A run folder: created 0700, and folders the run makes inside it are tightened when it ends.
    #[cfg(unix)]
    #[test]
    fn dir_output_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("runs/eval-1");
        let m = AuditManifest::begin(&AuditSpec::for_dir("spar eval", &run)).unwrap();
        assert_eq!(m.path(), run.join(AUDIT_FILE));
        assert!(m.manifest.is_none());
        assert_eq!(mode(&run), 0o700);
        std::fs::create_dir_all(run.join("charts/inner")).unwrap();
        std::fs::set_permissions(run.join("charts"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        m.finish("ok").unwrap();
        assert_eq!(mode(&run.join("charts")), 0o700);
        assert_eq!(mode(&run.join("charts/inner")), 0o700);
        // Running again into it (an earlier run folder: it has audit.json) tightens it again.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        AuditManifest::begin(&AuditSpec::for_dir("spar eval", &run)).unwrap();
        assert_eq!(mode(&run), 0o700);

        // A folder the user already had, with other things in it (`--out .`), keeps its modes.
        let mine = dir.path().join("results");
        std::fs::create_dir_all(mine.join("old")).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(mine.join("old"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let m = AuditManifest::begin(&AuditSpec::for_dir("spar eval", &mine)).unwrap();
        assert!(!m.outputs[0].owned);
        m.finish("ok").unwrap();
        assert_eq!((mode(&mine), mode(&mine.join("old"))), (0o755, 0o755));
        assert_eq!(mode(&mine.join(AUDIT_FILE)), 0o600);
    }

    #[test]
    fn the_working_directory_is_not_a_secret() {
        let vars = [
            ("PWD", "/home/someone/project"),
            ("OLDPWD", "/home/someone/elsewhere"),
            ("DB_PWD", "hunter2hunter2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let secrets = secret_values_of(vars.into_iter());
        assert_eq!(secrets.len(), 1, "{secrets:?}");
        assert_eq!(secrets[0].0, "DB_PWD");
        let cmd = scrub_command(
            &["--out".into(), "/home/someone/project/runs/a".into()],
            &secrets,
        );
        assert_eq!(cmd[1], "/home/someone/project/runs/a");
    }
}
