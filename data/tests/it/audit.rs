//! The audit manifest: content, atomic owner-only files, secrets kept out.
use spar_data::audit::{AuditManifest, find_secret_leaks_with, is_secret_key, scrub_secrets};

const RECIPE: &str = r#"
[model]
path = "models/qwen3-0.6b"

[rollout]
max_new_tokens = 512
api_key = "sk-test-0123456789abcdefghijklmnop"
endpoint = { url = "https://judge.example.org/v1", api_key_env = "JUDGE_API_KEY", auth_token = "tok-abcdefgh12345678" }

[rewards]
judge_password = "hunter2hunter2"
stop_token_ids = [151645]
"#;

#[test]
fn manifest_records_inputs_config_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cases.jsonl");
    std::fs::write(&data, b"{\"id\":1}\n").unwrap();
    let run = dir.path().join("runs/r1");
    let m = AuditManifest::start(&run, RECIPE, std::slice::from_ref(&data)).unwrap();
    let path = run.join("audit.json");
    assert!(path.is_file());
    let on_disk = AuditManifest::read(&path).unwrap();
    assert_eq!(on_disk, m);
    assert_eq!(m.outcome, "running");
    assert!(m.finished_at.is_none());
    assert_eq!(m.data_files.len(), 1);
    // sha256 of "{\"id\":1}\n"
    assert_eq!(
        m.data_files[0].sha256,
        spar_core::fsio::sha256_file(&data).unwrap()
    );
    assert_eq!(m.data_files[0].bytes, 9);
    assert_eq!(m.config["rollout"]["max_new_tokens"], 512);
    assert_eq!(m.config["model"]["path"], "models/qwen3-0.6b");
    assert_eq!(
        m.config["rollout"]["endpoint"]["api_key_env"], "JUDGE_API_KEY",
        "a variable's name is not a secret"
    );
    assert_eq!(m.config["rewards"]["stop_token_ids"][0], 151645);
    let mut removed = m.redacted_keys.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            "rewards.judge_password",
            "rollout.api_key",
            "rollout.endpoint.auth_token"
        ]
    );
    assert!(!m.code.crate_version.is_empty());
    assert!(!m.user.is_empty() && !m.host.is_empty());
    assert!(
        m.started_at.ends_with('Z') && m.started_at.len() == 24,
        "{}",
        m.started_at
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [
        "sk-test-0123456789",
        "hunter2hunter2",
        "tok-abcdefgh12345678",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into audit.json");
    }
    let done = m.finish("ok").unwrap();
    let back = AuditManifest::read(&path).unwrap();
    assert_eq!(back.outcome, "ok");
    assert!(back.finished_at.is_some() && back.finished_at >= Some(back.started_at.clone()));
    assert_eq!(back, done);
    // No temp files left next to the manifest.
    let names: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["audit.json"]);
}

#[cfg(unix)]
#[test]
fn run_dir_and_manifest_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("a/b/run");
    let m = AuditManifest::start(&run, "", &[]).unwrap();
    for d in [dir.path().join("a"), dir.path().join("a/b"), run.clone()] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", d.display());
    }
    let mode = std::fs::metadata(m.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An existing directory is tightened.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    spar_data::audit::create_private_dir(&open).unwrap();
    assert_eq!(
        std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn missing_data_file_and_bad_recipe_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = AuditManifest::start(&dir.path().join("r"), "", &[dir.path().join("nope.jsonl")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.jsonl"), "{err}");
    let err = AuditManifest::start(&dir.path().join("r2"), "[model\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("TOML"), "{err}");
}

#[test]
fn secret_detection() {
    assert!(
        is_secret_key("OPENAI_API_KEY")
            && is_secret_key("hf_token")
            && !is_secret_key("max_new_tokens")
    );
    let mut v = serde_json::json!({"a": {"url": "http://x", "note": "Bearer abc.def"}, "list": ["ghp_0123456789abcdef0123"], "b": "uses SECRETVALUE123 inline"});
    let mut removed = scrub_secrets(&mut v, &[("MY_TOKEN".into(), "SECRETVALUE123".into())]);
    removed.sort();
    assert_eq!(removed, vec!["a.note", "b", "list[0]"]);
    assert_eq!(v["a"]["url"], "http://x");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("log.txt");
    std::fs::write(&f, "step 1 ok\nauth with SECRETVALUE123\n").unwrap();
    let secrets = vec![
        ("MY_TOKEN".to_string(), "SECRETVALUE123".to_string()),
        ("OTHER_KEY".to_string(), "notpresent99".to_string()),
    ];
    assert_eq!(
        find_secret_leaks_with(&f, &secrets).unwrap(),
        vec!["MY_TOKEN"]
    );
    std::fs::write(&f, "clean\n").unwrap();
    assert!(find_secret_leaks_with(&f, &secrets).unwrap().is_empty());
}
