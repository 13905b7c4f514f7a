//! `spar factcheck`: a text's claims with spans, labels, evidence and sources in every format; H; the exit
//! codes scripts rely on (0, 1 with `--fail-on`, 2 on errors); JSONL samples; and the LLM verifier of a recipe
//! over a loopback fake endpoint, which receives the text PHI-redacted.
use super::spar;
use spar_testkit::{FakeServer, FakeServerConfig, responders};
use std::io::Write;
use std::process::{Command, Output, Stdio};

const TEXT: &str = "Hello, thanks for coming in.\n\n\
Paracetamol 1 g every 6 hours is a standard adult dose. Warfarin does not interact with aspirin.\n\
Since metformin is contraindicated in severe renal impairment, have you had your kidneys checked?\n\n\
<diagnosis>Community-acquired pneumonia (J18.9)</diagnosis>\n";

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spar runs")
}

fn json_report(args: &[&str], input: &std::path::Path) -> (i32, serde_json::Value) {
    let out = run(spar().arg("factcheck").arg(input).args(args));
    assert!(
        out.status.code() != Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

#[test]
fn factcheck_reports_claims_spans_labels_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reply.md");
    std::fs::write(&file, TEXT).unwrap();

    let (code, v) = json_report(&["--format", "json"], &file);
    assert_eq!(code, 0, "no --fail-on: exit 0");
    let doc = &v["documents"][0];
    let claims = doc["claims"].as_array().unwrap();
    let by_text = |needle: &str| {
        claims
            .iter()
            .find(|c| c["text"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no claim with {needle:?} in {claims:#?}"))
    };
    let dose = by_text("Paracetamol 1 g");
    assert_eq!(dose["label"], "supported");
    assert!(
        dose["source"]
            .as_str()
            .unwrap()
            .contains("drug:paracetamol:dose")
    );
    let (a, b) = (
        dose["start"].as_u64().unwrap() as usize,
        dose["end"].as_u64().unwrap() as usize,
    );
    assert_eq!(&TEXT[a..b], dose["quote"].as_str().unwrap());
    assert_eq!(
        &TEXT[a..b],
        "Paracetamol 1 g every 6 hours is a standard adult dose"
    );
    let ddi = by_text("Warfarin does not interact");
    assert_eq!(ddi["label"], "refuted");
    assert!(ddi["evidence"].as_str().unwrap().contains("ANSM"));
    assert_eq!(
        by_text("metformin is contraindicated")["label"],
        "supported"
    );
    assert_eq!(by_text("J18.9")["label"], "supported");
    // H = (1 refuted) / 4 claims.
    assert_eq!(v["claims"], 4);
    assert_eq!(v["refuted"], 1);
    assert!((v["h"].as_f64().unwrap() - 0.25).abs() < 1e-9, "{}", v["h"]);

    // --fail-on refuted: 1; the same text without the false claim: 0.
    let (code, _) = json_report(&["--format", "json", "--fail-on", "refuted"], &file);
    assert_eq!(code, 1);
    let clean = dir.path().join("clean.txt");
    std::fs::write(
        &clean,
        "Paracetamol 1 g every 6 hours is a standard adult dose.\n",
    )
    .unwrap();
    let (code, _) = json_report(&["--format", "json", "--fail-on", "refuted"], &clean);
    assert_eq!(code, 0);

    // Markdown from standard input; HTML to a file.
    let mut child = spar()
        .args(["factcheck", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(TEXT.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("H = 0.250 over 4 claims"), "{md}");
    assert!(md.contains("| **refuted** |"), "{md}");
    let html = dir.path().join("r.html");
    let out = run(spar()
        .arg("factcheck")
        .arg(&file)
        .args(["--format", "html", "--out"])
        .arg(&html));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<mark class=\"refuted\""), "{page}");
    assert!(page.contains("&lt;diagnosis&gt;"), "the text is escaped");
    assert!(
        dir.path().join("r.html.audit.json").is_file(),
        "a written report keeps its audit manifest"
    );

    // Samples JSONL: one document per line, the assistant's turns only.
    let samples = dir.path().join("samples.jsonl");
    let line = |id: &str, doctor: &str| {
        serde_json::json!({"case_id": id, "sample_idx": 0, "turns": [
            {"role": "user", "text": "Warfarin does not interact with aspirin, right?"},
            {"role": "assistant", "text": doctor},
        ]})
        .to_string()
    };
    std::fs::write(
        &samples,
        format!(
            "{}\n{}\n",
            line("c1", "Naloxone is the antidote for opioid overdose."),
            line(
                "c2",
                "<think>Aspirin is fine.</think>Aspirin is safe for children with a fever."
            )
        ),
    )
    .unwrap();
    let (code, v) = json_report(&["--format", "json", "--fail-on", "refuted"], &samples);
    assert_eq!(code, 1);
    let docs = v["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["id"], "c1#0");
    assert_eq!(docs[0]["claims"][0]["label"], "supported");
    assert_eq!(
        docs[1]["claims"].as_array().unwrap().len(),
        1,
        "thinking is not checked"
    );
    assert_eq!(docs[1]["claims"][0]["label"], "refuted");

    // Errors: exit 2, naming the file and the line.
    let out = run(spar().args(["factcheck", "/nonexistent/reply.txt"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/reply.txt"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"turns\": 3}}\n", line("c1", "Fine."))).unwrap();
    let out = run(spar().arg("factcheck").arg(&bad));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("turns"), "{err}");
}

#[test]
fn factcheck_uses_the_recipes_llm_verifier_and_redacts_phi_first() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(FakeServer::start(FakeServerConfig {
            record_bodies: true,
            chat: responders::fixed(
                serde_json::json!({"label": "uncertain", "evidence": "fake endpoint"}).to_string(),
            ),
            ..Default::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[rewards.fact]\nverifier = \"llm\"\nendpoint = {{ base_url = \"{}\", model = \"fake\", timeout_s = 30.0 }}\n",
            server.base_url()
        ),
    )
    .unwrap();
    let file = dir.path().join("note.txt");
    std::fs::write(
        &file,
        "Mr John Smith (phone 555-867-5309) can take up to 8 g of paracetamol a day.\n",
    )
    .unwrap();
    let out = run(spar()
        .arg("factcheck")
        .arg(&file)
        .args(["--format", "json", "--recipe"])
        .arg(&recipe));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["redacted"], true);
    assert!(
        v["verifier"]
            .as_str()
            .unwrap()
            .starts_with("llm-verifier/fake")
    );
    assert_eq!(v["documents"][0]["claims"][0]["label"], "uncertain");
    let chats: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body.to_string())
        .collect();
    assert!(!chats.is_empty(), "the verifier went to the endpoint");
    for body in &chats {
        assert!(
            !body.contains("555-867-5309") && !body.contains("John Smith"),
            "{body}"
        );
        assert!(body.contains("paracetamol"), "{body}");
    }
}
