//! PHI stays where the user put it: a fake patient's identifiers planted in a shipped-format case appear in no
//! file a tiny `spar train` writes (run folder walked byte by byte, binary files included, with its SQLite claim
//! cache) and nothing of the patient lands under HOME; run files are owner-only; `spar data import-verl` redacts
//! unless `--no-redact`; `spar redact` prints redacted text.
//! With `data.redact_on_ingest = false` the identifiers reach the files docs/privacy.md lists as kept raw on
//! purpose, which shows the scan finds them when they are there.
use super::{ok, root, spar};
use std::path::{Path, PathBuf};

/// The fake patient: name, MRN, e-mail, phone, birth date.
const PLANTED: &str = "My name is Margaret Okonkwo, MRN: A-7782341, e-mail margaret.okonkwo@example.org, \
                       phone (617) 555-0142, DOB 03/14/1962.";
/// What must not appear in any file (each identifier, and the pieces a tokenizer could keep).
const NEEDLES: [&str; 6] = [
    "Okonkwo",
    "Margaret",
    "7782341",
    "okonkwo@example.org",
    "555-0142",
    "03/14/1962",
];

/// Generates a dataset into `dir` and plants the identifiers in every case (chief complaint, history, social
/// history, every answer), editing the JSONL as a user's file would be: whichever training and held-out patients
/// the tiny run picks, the patient it talks to is this one.
fn planted_dataset(dir: &Path) {
    ok(spar()
        .args(["data", "generate", "--n", "120", "--seed", "5", "--out"])
        .arg(dir));
    let file = dir.join("cases.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            let mut c: serde_json::Value = serde_json::from_str(l).unwrap();
            let add = |v: &serde_json::Value| format!("{} {PLANTED}", v.as_str().unwrap());
            c["chief_complaint"] = add(&c["chief_complaint"]).into();
            c["hpi"] = add(&c["hpi"]).into();
            c["social_history"]
                .as_array_mut()
                .unwrap()
                .push(PLANTED.into());
            for it in c["inquiry_items"].as_array_mut().unwrap() {
                it["answer"] = add(&it["answer"]).into();
            }
            c.to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
}

/// A tiny `spar train` of the demo recipe on `cases` into `out`, with a SQLite claim cache and a fresh home.
fn tiny_train(cases: &Path, out: &Path, home: &Path, extra: &[&str]) {
    let mut cmd = spar();
    cmd.args(["train", "--recipe"])
        .arg(root().join("recipes/tiny-cpu.toml"))
        .arg("--out")
        .arg(out)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env_remove("SPAR_CACHE_DIR")
        .arg("--set")
        .arg(format!("data.cases={:?}", cases.display().to_string()));
    for s in [
        "trainer.sft_steps=2",
        "trainer.steps=1",
        "trainer.sft_batch=4",
        "rollout.groups_per_step=1",
        "rollout.group_size=2",
        "rollout.sampling.max_new_tokens=16",
        "rollout.turn_limits=[2, 1, 1, 1]",
        "eval.max_cases=1",
        "eval.max_new_tokens=16",
        "data.max_cases=4",
        "trainer.bpe_vocab_size=400",
        "rewards.fact.cache=\"sqlite\"",
    ]
    .iter()
    .chain(extra)
    {
        cmd.args(["--set", s]);
    }
    ok(&mut cmd);
}

/// Every file under `dir` (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                todo.push(p);
            } else if meta.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The files under `dir` holding any needle, with the needles found (raw bytes, so binary files count).
fn leaks(dir: &Path) -> Vec<(PathBuf, Vec<&'static str>)> {
    files_under(dir)
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let found: Vec<&str> = NEEDLES
                .iter()
                .copied()
                .filter(|n| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
                .collect();
            (!found.is_empty()).then_some((p, found))
        })
        .collect()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn planted_identifiers_appear_in_no_file_a_run_writes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    planted_dataset(&data);
    let home = d.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let run = d.path().join("run");
    tiny_train(&data, &run, &home, &[]);

    // The claim cache lives in the run folder, is named in the manifest, and was written.
    let cache = run.join("claims.sqlite");
    assert!(cache.is_file(), "claim cache not in the run folder");
    let audit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("audit.json")).unwrap()).unwrap();
    assert_eq!(audit["outcome"], "ok", "{audit}");
    assert_eq!(audit["claim_cache"], cache.display().to_string(), "{audit}");
    // HOME holds the shipped data spar unpacks there, never a claim cache or patient text.
    assert!(
        !files_under(&home)
            .iter()
            .any(|f| f.ends_with("claims.sqlite")),
        "a claim cache under HOME"
    );
    assert!(leaks(&home).is_empty(), "{:?}", leaks(&home));

    let found = leaks(&run);
    assert!(
        found.is_empty(),
        "planted identifiers in run files: {found:?}"
    );
    // The tokenizer learnt the placeholders, not the patient.
    let tok = std::fs::read_to_string(run.join("tokenizer/tokenizer.json")).unwrap();
    assert!(
        !tok.contains("Okon") && !tok.contains("kwo"),
        "name pieces in the BPE vocabulary"
    );

    #[cfg(unix)]
    {
        assert_eq!(mode(&run), 0o700);
        for f in files_under(&run) {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
            let mut p = f.parent().unwrap();
            while p != run {
                assert_eq!(mode(p), 0o700, "{}", p.display());
                p = p.parent().unwrap();
            }
        }
    }

    // Control: the user turns ingest redaction off on purpose; the identifiers then reach the run's transcripts
    // (the files docs/privacy.md lists), never the tokenizer or the claim cache.
    let raw = d.path().join("raw");
    tiny_train(&data, &raw, &home, &["data.redact_on_ingest=false"]);
    let found = leaks(&raw);
    let names: Vec<String> = found
        .iter()
        .map(|(p, _)| p.strip_prefix(&raw).unwrap().display().to_string())
        .collect();
    eprintln!("with redact_on_ingest = false, identifiers in: {names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("transcripts/")),
        "the scan found nothing in a raw run: {names:?}"
    );
    for n in &names {
        assert!(
            KEPT_RAW_ON_PURPOSE.iter().any(|k| n.starts_with(k)),
            "{n} holds identifiers but docs/privacy.md does not list it"
        );
    }
}

/// The run files that hold case text as the case file has it when the recipe sets
/// `data.redact_on_ingest = false` (docs/privacy.md, "Kept raw on purpose").
const KEPT_RAW_ON_PURPOSE: [&str; 1] = ["transcripts/"];

#[test]
fn redact_command_prints_redacted_text_from_a_file_or_stdin() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("note.txt");
    std::fs::write(&f, format!("{PLANTED}\nK 5.2 mmol/L, 500 mg twice daily\n")).unwrap();
    let out = spar().arg("redact").arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        spar_core::phi::redact(&std::fs::read_to_string(&f).unwrap())
    );
    assert!(text.contains("K 5.2 mmol/L, 500 mg twice daily"), "{text}");
    for n in NEEDLES {
        assert!(!text.contains(n), "{n} in {text}");
    }
    let mut child = spar()
        .args(["redact", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"call (617) 555-0142")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "call [PHONE]");
    let out = spar()
        .arg("redact")
        .arg(d.path().join("missing.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));
}

/// `spar data import-verl` redacts the cases it imports unless `--no-redact` asks for the text as it is.
#[test]
fn import_verl_redacts_unless_told_not_to() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    planted_dataset(&data);
    let verl = d.path().join("rows.parquet");
    ok(spar()
        .args(["data", "export-verl", "--in"])
        .arg(&data)
        .arg("--out")
        .arg(&verl));
    let imported = d.path().join("imported.jsonl");
    ok(spar()
        .args(["data", "import-verl", "--in"])
        .arg(&verl)
        .arg("--out")
        .arg(&imported));
    let text = std::fs::read_to_string(&imported).unwrap();
    for n in NEEDLES {
        assert!(!text.contains(n), "{n} imported");
    }
    assert!(text.contains("[NAME]"));
    let raw = d.path().join("raw.jsonl");
    ok(spar()
        .args(["data", "import-verl", "--no-redact", "--in"])
        .arg(&verl)
        .arg("--out")
        .arg(&raw));
    assert!(std::fs::read_to_string(&raw).unwrap().contains("Okonkwo"));
}

/// `spar data expert` writes gold consultations from redacted cases (unless `--no-redact`), owner-only, with an
/// audit manifest next to them.
#[test]
fn gold_consultations_are_redacted_and_audited() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    planted_dataset(&data);
    let gold = d.path().join("gold.jsonl");
    ok(spar()
        .args(["data", "expert", "--split", "train", "--in"])
        .arg(&data)
        .arg("--out")
        .arg(&gold));
    let text = std::fs::read_to_string(&gold).unwrap();
    for n in NEEDLES {
        assert!(!text.contains(n), "{n} in gold.jsonl");
    }
    let manifest = d.path().join("gold.jsonl.audit.json");
    let audit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(audit["outcome"], "ok", "{audit}");
    assert_eq!(audit["task"], "spar data expert");
    #[cfg(unix)]
    assert_eq!((mode(&gold), mode(&manifest)), (0o600, 0o600));
    let raw = d.path().join("raw.jsonl");
    ok(spar()
        .args(["data", "expert", "--no-redact", "--split", "train", "--in"])
        .arg(&data)
        .arg("--out")
        .arg(&raw));
    assert!(std::fs::read_to_string(&raw).unwrap().contains("Okonkwo"));
}

/// `spar data import` (AgentClinic's OSCE JSONL) writes the rows it can map, redacted unless `--no-redact`, and
/// names each row it cannot (file, line, field) on standard error; `spar data validate` of a case file with a
/// broken line reports that line and every problem after it.
#[test]
fn data_import_redacts_names_unmapped_rows_and_validate_reports_every_line() {
    let d = tempfile::tempdir().unwrap();
    let fixture = root().join("data/tests/fixtures/import/agentclinic_medqa.jsonl");
    let out = d.path().join("imported.jsonl");
    let run = spar()
        .args(["data", "import", "--format", "agentclinic", "--in"])
        .arg(&fixture)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stderr}");
    assert!(stdout.contains("imported 4 of 8 rows"), "{stdout}");
    assert!(
        stderr.contains(
            "agentclinic_medqa.jsonl:5: field `OSCE_Examination.Correct_Diagnosis`: missing"
        ) && stderr.contains(
            "agentclinic_medqa.jsonl:8: field `OSCE_Examination.Patient_Actor.Demographics`"
        ),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        !text.contains("John Carter") && !text.contains("7782341"),
        "{text}"
    );
    let raw = d.path().join("raw.jsonl");
    ok(spar()
        .args([
            "data",
            "import",
            "--format",
            "agentclinic",
            "--no-redact",
            "--in",
        ])
        .arg(&fixture)
        .arg("--out")
        .arg(&raw));
    assert!(
        std::fs::read_to_string(&raw)
            .unwrap()
            .contains("John Carter")
    );

    // A broken line, then a case with a bad field: both reported.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.insert(1, "{\"id\": ".into());
    let mut bad: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    bad["diagnosis"]["icd10"] = "not-a-code".into();
    lines[3] = bad.to_string();
    let broken = d.path().join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n") + "\n").unwrap();
    let v = spar()
        .args(["data", "validate", "--in"])
        .arg(&broken)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success());
    assert!(
        err.contains("broken.jsonl:2: field `-`: not JSON")
            && err.contains("broken.jsonl:4: field `diagnosis.icd10`")
            && err.contains("2 problem(s)"),
        "{err}"
    );
}
