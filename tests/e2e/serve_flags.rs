//! Bad settings of `spar serve` and `spar generate` are clear errors at start, before a model is loaded (the
//! model folder here does not exist): an unset or empty `--api-key-env` variable, an address beyond loopback
//! without a token, limits that contradict each other, sampling defaults out of range, a CUDA device that is
//! not there. None may end in a libtorch backtrace.
use super::spar;

/// Runs spar with `args` (and `env`), expects failure, returns stderr.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = spar();
    cmd.args(args).env_remove("SPAR_TEST_UNSET_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spar runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded:\n{err}");
    for backtrace in ["Exception raised from", "frame #", "panicked"] {
        assert!(
            !err.contains(backtrace),
            "{args:?}: a backtrace, not a message:\n{err}"
        );
    }
    err
}

#[test]
fn serve_refuses_bad_auth_and_limit_settings_at_start() {
    let model = ["serve", "--model", "/nonexistent/spar-model"];
    let with = |extra: &[&'static str]| [&model[..], extra].concat();
    let e = fails(&with(&["--api-key-env", "SPAR_TEST_UNSET_KEY"]), &[]);
    assert!(
        e.contains("SPAR_TEST_UNSET_KEY") && e.contains("not set"),
        "{e}"
    );
    let e = fails(
        &with(&["--api-key-env", "SPAR_TEST_EMPTY_KEY"]),
        &[("SPAR_TEST_EMPTY_KEY", "")],
    );
    assert!(
        e.contains("SPAR_TEST_EMPTY_KEY") && e.contains("empty"),
        "{e}"
    );
    let e = fails(&with(&["--host", "0.0.0.0"]), &[]);
    assert!(e.contains("--insecure-no-auth"), "{e}");
    let e = fails(&with(&["--limit-n", "100000"]), &[]);
    assert!(e.contains("limit on n"), "{e}");
    // Past the settings, the model folder is what fails: the checks above came first.
    let e = fails(&with(&["--host", "0.0.0.0", "--insecure-no-auth"]), &[]);
    assert!(e.contains("/nonexistent/spar-model"), "{e}");
}

#[test]
fn sampling_defaults_and_devices_out_of_range_are_clear_errors() {
    // An empty model folder: `generate --model` reports a folder that is not there before anything else.
    let model = tempfile::tempdir().unwrap();
    let model = model.path().to_str().unwrap().to_string();
    let base = [
        "generate",
        "--model",
        &model,
        "--in",
        "/nonexistent/p.jsonl",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    for (flag, value, says) in [
        ("--temperature", "-1", "temperature must be"),
        ("--temperature", "nan", "temperature must be"),
        ("--temperature", "3", "temperature must be"),
        ("--top-p", "5", "top_p must be"),
        ("--top-p", "0", "top_p must be"),
    ] {
        let e = fails(&with(&[flag, value]), &[]);
        assert!(e.contains(says) && e.contains(flag), "{flag} {value}: {e}");
    }
    for cmd in ["generate", "serve"] {
        let args: Vec<&str> = if cmd == "serve" {
            vec!["serve", "--model", &model, "--device", "cuda:4096"]
        } else {
            with(&["--device", "cuda:4096"])
        };
        let e = fails(&args, &[]);
        assert!(e.contains("cuda:4096"), "{cmd}: {e}");
    }
}
