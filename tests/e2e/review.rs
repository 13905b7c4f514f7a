//! `spar review` in a real browser: headless Chromium (Debian packages `chromium` and `chromium-driver`) driven
//! over WebDriver (fantoccini). A run folder of 10,000 consultations is made from the scripted expert's gold
//! consultations of the shipped cases (half of them with a planted overdose claim) scored by `spar score`, then
//! replicated; the test pages the list, opens a consultation, filters and searches, overrides a claim's label,
//! and checks the audit log, the claim cache, the next `spar score` run and `--export-labels`.
//!
//! Skipped with a printed reason when Chromium or chromedriver is missing (scripts/test.sh installs them where
//! it can); `SPAR_REQUIRE_BROWSER=1` turns the skip into a failure. `SPAR_UPDATE_SCREENSHOTS=1` writes the
//! screenshots into docs/review/ (else into the test's temp folder).
use super::{ok, root, spar};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian packages' paths; `SPAR_CHROMIUM` / `SPAR_CHROMEDRIVER` name others.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}
/// Consultations in the generated run.
const N: usize = 10_000;
/// Distinct scored consultations (pairs of one case) replicated into the run.
const SEED_PAIRS: usize = 12;
/// Planted into the last reply of the second sample of each pair: the knowledge base refutes the dose.
const PLANTED: &str = " Paracetamol can be taken at 8 g per day.";

/// Kills the child on drop, so a failed assertion leaves no server or driver behind.
struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let mut s = String::new();
    for r in rows {
        s.push_str(&r.to_string());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// A whole-episode sample of a gold consultation: each doctor reply is a step of 4 tokens.
fn sample_of(gold: &Value, group: &str, idx: u32, plant: bool) -> Value {
    let mut turns = gold["turns"].as_array().unwrap().clone();
    if plant {
        // The overdose in the last reply, and the first question asked again as the second: a step violation.
        let replies: Vec<usize> = (0..turns.len())
            .filter(|&i| turns[i]["role"] == "assistant")
            .collect();
        let last = *replies.last().unwrap();
        let text = turns[last]["text"].as_str().unwrap().to_string();
        turns[last]["text"] = json!(format!("{text}{PLANTED}"));
        turns[replies[1]]["text"] = turns[replies[0]]["text"].clone();
    }
    let mut steps = vec![];
    let mut stages: Vec<String> = vec![];
    for t in turns.iter().filter(|t| t["role"] == "assistant") {
        let stage = t["stage"].as_str().unwrap_or("inquiry").to_string();
        let k = steps.len();
        steps.push(json!({"stage": stage, "start": k * 4, "end": k * 4 + 4}));
        if stages.last() != Some(&stage) {
            stages.push(stage);
        }
    }
    let t = steps.len() * 4;
    json!({
        "schema_version": 1, "run_id": "review-test", "case_id": gold["case_id"], "group_id": group,
        "sample_idx": idx, "stages": stages, "mode": "fresh", "policy_version": 0, "end_reason": "done",
        "token_ids": vec![0; t], "loss_mask": vec![1; t], "rollout_logprobs": vec![0.0; t],
        "steps": steps, "turns": turns,
    })
}

/// The run folder: `seed/` holds SEED_PAIRS groups scored by `spar score`; `run/` repeats them to N
/// consultations under fresh group ids. Returns (run, seed samples file).
fn make_run(dir: &Path) -> (PathBuf, PathBuf) {
    let gold_file = dir.join("gold.jsonl");
    ok(spar().args(["data", "expert", "--out"]).arg(&gold_file));
    let gold = read_jsonl(&gold_file);
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    let mut samples = vec![];
    for p in 0..SEED_PAIRS {
        let g = &gold[p * gold.len() / SEED_PAIRS];
        let group = format!("seed/g{p}/{}/episode", g["case_id"].as_str().unwrap());
        samples.push(sample_of(g, &group, 0, false));
        samples.push(sample_of(g, &group, 1, true));
    }
    let seed_samples = seed.join("samples.jsonl");
    write_jsonl(&seed_samples, &samples);
    ok(spar()
        .args(["score", "--in"])
        .arg(&seed_samples)
        .arg("--out")
        .arg(seed.join("scored.jsonl")));
    let scored = read_jsonl(&seed.join("scored.jsonl"));
    assert_eq!(scored.len(), samples.len());
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let (mut out_samples, mut out_scored) = (vec![], vec![]);
    for i in 0..N / 2 {
        let p = i % SEED_PAIRS;
        for j in 0..2 {
            let mut s = samples[2 * p + j].clone();
            let mut r = scored[2 * p + j].clone();
            let group = format!("run/g{i}/{}/episode", s["case_id"].as_str().unwrap());
            s["group_id"] = json!(group);
            r["group_id"] = json!(group);
            out_samples.push(s);
            out_scored.push(r);
        }
    }
    write_jsonl(&run.join("samples.jsonl"), &out_samples);
    write_jsonl(&run.join("scored.jsonl"), &out_scored);
    (run, seed_samples)
}

/// Starts `spar review` and returns it with the address it printed.
fn start_review(run: &Path) -> (Reaped, String) {
    let mut child = Reaped(
        spar()
            .arg("review")
            .arg(run)
            .args(["--port", "0", "--reviewer", "browser-test"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spar review starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("spar review: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/?token="), "{url}");
    (child, url)
}

async fn wait_text(c: &Client, css: &str, want: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && want(&t)
        {
            return t;
        }
        if Instant::now() > deadline {
            let seen = match c.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(e) => format!("({e})"),
            };
            panic!("timed out waiting for {what} ({css}); it shows {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `data-index` of the claim row that lists the planted claim as refuted. The detail pane may render its claims
/// again after its head shows, so a row found by one call can be gone by the next (a stale element reference,
/// seen once on a loaded 2-core machine): the scan then starts over on the new rows, until a deadline.
async fn planted_claim_index(c: &Client) -> String {
    async fn scan(c: &Client) -> Result<Option<String>, fantoccini::error::CmdError> {
        for r in c.find_all(Locator::Css(".claim-row")).await? {
            let t = r.text().await?;
            if t.starts_with("refuted") && t.contains("Paracetamol") {
                return r.attr("data-index").await;
            }
        }
        Ok(None)
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match scan(c).await {
            Ok(Some(index)) => return index,
            Err(e) if !e.is_stale_element_reference() => panic!("reading the claim rows: {e}"),
            _ if Instant::now() > deadline => panic!("the planted claim is not listed as refuted"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

async fn key(c: &Client, k: &str) {
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(k)
        .await
        .unwrap();
}

fn page_total(t: &str) -> Option<usize> {
    t.rsplit(" of ").next()?.trim().parse().ok()
}

#[test]
fn review_page_in_headless_chromium_pages_filters_and_overrides_a_claim() {
    let (chromium, chromedriver) = (
        tool("SPAR_CHROMIUM", CHROMIUM),
        tool("SPAR_CHROMEDRIVER", CHROMEDRIVER),
    );
    let missing: Vec<&str> = [chromium.as_str(), chromedriver.as_str()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "SKIPPED review browser test: {} missing (apt-get install chromium chromium-driver)",
            missing.join(", ")
        );
        assert!(std::env::var_os("SPAR_REQUIRE_BROWSER").is_none(), "{msg}");
        eprintln!("{msg}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (run, seed_samples) = make_run(dir.path());
    let shots = if std::env::var_os("SPAR_UPDATE_SCREENSHOTS").is_some() {
        root().join("docs/review")
    } else {
        dir.path().join("shots")
    };
    let expected_hallucinated = read_jsonl(&run.join("scored.jsonl"))
        .iter()
        .filter(|s| {
            s["claims"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["label"] == "refuted")
        })
        .count();
    assert!(
        expected_hallucinated > 0 && expected_hallucinated < N,
        "the planted claims must be refuted in some consultations only: {expected_hallucinated}"
    );
    // The repeated question's violation type (the text before any ':') and how many consultations show it.
    let run_scored = read_jsonl(&run.join("scored.jsonl"));
    let violations_of = |s: &Value| -> Vec<String> {
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["violations"].as_array().unwrap().clone())
            .map(|v| {
                v.as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect()
    };
    // The most common type: the planted repetition's.
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for s in &run_scored {
        let mut types = violations_of(s);
        types.dedup();
        for t in types {
            *counts.entry(t).or_default() += 1;
        }
    }
    let (violation, expected_violation) = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("the repeated question is a step violation");
    assert!(expected_violation < N, "{violation}: {expected_violation}");
    // With the department filter too (departments of the shipped cases, as `spar review` reads them).
    let departments: std::collections::HashMap<String, String> =
        spar_data::load_cases(&spar_data::shipped::cases_dir().unwrap())
            .unwrap()
            .into_iter()
            .map(|c| (c.id, c.department))
            .collect();
    let expected_cardiology = run_scored
        .iter()
        .filter(|s| departments[s["case_id"].as_str().unwrap()] == "cardiology")
        .filter(|s| violations_of(s).contains(&violation))
        .count();
    assert!(expected_cardiology > 0 && expected_cardiology < expected_violation);

    let started = Instant::now();
    let (_server, url) = start_review(&run);
    eprintln!("spar review up after {:?}", started.elapsed());
    let base = url.split("/?token=").next().unwrap().to_string();
    let port = free_port();
    let _driver = Reaped(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--window-size=1500,950"]}),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let c = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(c) => break c,
                // chromedriver takes a moment to listen.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("chromedriver: {e}"),
            }
        };

        // Without the token the page refuses.
        c.goto(&format!("{base}/")).await.unwrap();
        let body = c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("with its token"), "{body}");

        // The list: the first page of 10,000, fetched page by page.
        c.goto(&url).await.unwrap();
        let info = wait_text(&c, "#page-info", |t| t.contains(" of "), "the list").await;
        assert_eq!(info, format!("1–50 of {N}"));
        assert_eq!(
            c.find_all(Locator::Css("#list tbody tr"))
                .await
                .unwrap()
                .len(),
            50
        );
        assert!(
            !c.current_url().await.unwrap().as_str().contains("token"),
            "token left in the address bar"
        );
        shot(&c, &shots, "list.png").await;
        key(&c, "n").await;
        wait_text(&c, "#page-info", |t| t.starts_with("51–100"), "page 2").await;
        key(&c, "p").await;
        wait_text(&c, "#page-info", |t| t.starts_with("1–50"), "page 1").await;

        // Paging back selected the page's first consultation; j opens the second: stage boundaries, steps
        // with gamma and advantage, claims.
        key(&c, "j").await;
        let head = wait_text(&c, "#detail-head", |t| t.contains("#1 "), "consultation 1").await;
        assert!(head.contains("R = "), "{head}");
        let boundaries = c.find_all(Locator::Css(".stage-boundary")).await.unwrap();
        assert!(
            boundaries.len() >= 2,
            "stage boundaries: {}",
            boundaries.len()
        );
        let step = c
            .find(Locator::Css(".turn.assistant .step"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(step.contains("γ = ") && step.contains("A = "), "{step}");
        let violations = c
            .find_all(Locator::Css(".turn.assistant .step .bad"))
            .await
            .unwrap();
        assert!(
            !violations.is_empty(),
            "the repeated question's violation is not shown"
        );
        // c selects the first claim and scrolls it into view: the planted one, marked in place as refuted.
        key(&c, "c").await;
        let mark = wait_text(
            &c,
            "mark.claim.focused",
            |t| t.contains("Paracetamol"),
            "the marked claim",
        )
        .await;
        assert!(mark.contains("8 g per day"), "{mark}");
        let class = c
            .find(Locator::Css("mark.claim.focused"))
            .await
            .unwrap()
            .attr("class")
            .await
            .unwrap();
        assert!(class.unwrap_or_default().contains("refuted"));
        shot(&c, &shots, "consultation.png").await;

        // Filters and search.
        c.find(Locator::Id("f-halluc"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(
            &c,
            "#page-info",
            |t| page_total(t) == Some(expected_hallucinated),
            "hallucinated filter",
        )
        .await;
        c.find(Locator::Id("f-halluc"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#page-info", |t| page_total(t) == Some(N), "filter off").await;
        key(&c, "/").await;
        c.find(Locator::Id("search"))
            .await
            .unwrap()
            .send_keys("run/g4321/")
            .await
            .unwrap();
        wait_text(&c, "#page-info", |t| page_total(t) == Some(2), "search").await;
        c.find(Locator::Id("f-clear"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#page-info", |t| page_total(t) == Some(N), "cleared").await;
        c.find(Locator::Id("f-violation"))
            .await
            .unwrap()
            .select_by_value(&violation)
            .await
            .unwrap();
        wait_text(
            &c,
            "#page-info",
            |t| page_total(t) == Some(expected_violation),
            "violation filter",
        )
        .await;
        c.find(Locator::Id("f-department"))
            .await
            .unwrap()
            .select_by_value("cardiology")
            .await
            .unwrap();
        wait_text(
            &c,
            "#page-info",
            |t| page_total(t) == Some(expected_cardiology),
            "department filter",
        )
        .await;
        c.find(Locator::Id("f-clear"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#page-info", |t| page_total(t) == Some(N), "cleared").await;
        c.find(Locator::Id("f-min"))
            .await
            .unwrap()
            .send_keys("100")
            .await
            .unwrap();
        wait_text(
            &c,
            "#page-info",
            |t| t == "no consultation matches",
            "reward filter",
        )
        .await;
        c.find(Locator::Id("f-clear"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#page-info", |t| page_total(t) == Some(N), "cleared").await;

        // Override the planted claim of consultation 1: refuted -> supported.
        key(&c, "jj").await;
        wait_text(&c, "#detail-head", |t| t.contains("#1 "), "consultation 1").await;
        let index = planted_claim_index(&c).await;
        let row = format!(".claim-row[data-index=\"{index}\"]");
        c.find(Locator::Css(&format!("{row} button[data-label=supported]")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(
            &c,
            &row,
            |t| t.starts_with("supported") && t.contains("overridden"),
            "the override",
        )
        .await;
        shot(&c, &shots, "override.png").await;
        c.close().await.unwrap();
    });

    // The audit log: one line, who, before, after; owner-only.
    let log = read_jsonl(&run.join("review-audit.jsonl"));
    assert_eq!(log.len(), 1, "{log:?}");
    let e = &log[0];
    assert_eq!(e["reviewer"], "browser-test");
    assert_eq!(
        (
            e["kind"].as_str(),
            e["before"].as_str(),
            e["after"].as_str()
        ),
        (Some("claim"), Some("refuted"), Some("supported"))
    );
    assert!(e["target"].as_str().unwrap().contains("Paracetamol"), "{e}");
    assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(run.join("review-audit.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let claim = e["target"].as_str().unwrap().to_string();

    // The claim cache holds the override ...
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored = rt.block_on(async {
        let b = spar_rewards::fact::SqliteBackend::open(&run.join("claims.sqlite")).unwrap();
        spar_rewards::fact::get_override(&b, &claim).await.unwrap()
    });
    assert_eq!(
        stored.map(|v| v.label),
        Some(spar_core::sample::ClaimLabel::Supported)
    );
    // ... and the next scoring run with that cache labels the claim as the reviewer said.
    let rescored = run.join("rescored.jsonl");
    let out = spar()
        .args(["score", "--in"])
        .arg(&seed_samples)
        .arg("--out")
        .arg(&rescored)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Each planted sample states the claim once: every one is answered by the override.
    assert!(
        stderr.contains(&format!("{SEED_PAIRS} reviewer overrides")),
        "{stderr}"
    );
    let labels: Vec<String> = read_jsonl(&rescored)
        .iter()
        .flat_map(|s| s["claims"].as_array().unwrap().clone())
        .filter(|c| c["text"].as_str().unwrap() == claim)
        .map(|c| c["label"].as_str().unwrap().to_string())
        .collect();
    assert!(!labels.is_empty(), "the claim is extracted again");
    assert!(labels.iter().all(|l| l == "supported"), "{labels:?}");

    // The labelled set.
    let out = dir.path().join("labels.jsonl");
    ok(spar()
        .arg("review")
        .arg(&run)
        .arg("--export-labels")
        .arg(&out));
    let labels = read_jsonl(&out);
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0]["kind"], "claim");
    assert_eq!(labels[0]["label"], "supported");
    assert_eq!(labels[0]["model_label"], "refuted");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("labels.jsonl.audit.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["outcome"], "ok", "{manifest}");
}

#[test]
fn review_names_the_missing_or_malformed_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = |args: &[&std::ffi::OsStr]| {
        let out = spar().arg("review").args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&[dir.path().join("nope").as_os_str()]);
    assert!(e.contains("not a run folder"), "{e}");
    let e = err(&[dir.path().as_os_str()]);
    assert!(
        e.contains("samples.parquet") && e.contains("samples.jsonl"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("samples.jsonl"),
        "{\"schema_version\": 1, \"run_id\": \"r\"}\n",
    )
    .unwrap();
    let e = err(&[dir.path().as_os_str()]);
    assert!(
        e.contains("samples.jsonl:1") && e.contains("missing field"),
        "{e}"
    );
}
