//! The HTTP API in process: the token guards everything, the list pages, an override reaches the audit log,
//! the claim cache (claims, and rubric verdicts keyed by the judged reply) and the page, a refused one reaches
//! neither, a restart replays the log, and the labelled set holds the reviewer's last decision next to the
//! model's.
use super::fixtures::write_run;
use serde_json::{Value, json};
use spar_core::sample::ClaimLabel;
use spar_review::{ReviewOptions, open};
use spar_rewards::fact::{SqliteBackend, get_override};
use spar_rewards::rubric::get_rubric_override;
use std::path::Path;

struct Server {
    base: String,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path) -> (Server, usize) {
    let token = spar_review::new_token();
    let (state, replayed) = open(ReviewOptions {
        run_dir: dir.to_path_buf(),
        departments: write_deps(),
        claim_cache: Some(dir.join("claims.sqlite")),
        reviewer: "tester".into(),
        token: token.clone(),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        spar_review::serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (
        Server {
            base,
            token,
            stop: Some(tx),
            task,
        },
        replayed,
    )
}

fn write_deps() -> std::collections::HashMap<String, String> {
    (0..4)
        .map(|c| (format!("case-{c}"), "respiratory".to_string()))
        .collect()
}

impl Server {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/overrides", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn the_token_guards_the_page_and_every_endpoint() {
    let d = tempfile::tempdir().unwrap();
    write_run(d.path(), 10);
    let (s, _) = start(d.path()).await;
    let c = reqwest::Client::new();
    for path in [
        "/",
        "/?token=wrong",
        "/api/summary",
        "/api/consultations",
        "/api/consultations/0",
    ] {
        let r = c.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("cough"), "{path} leaked text");
    }
    let r = c
        .get(format!("{}/api/summary", s.base))
        .bearer_auth("0".repeat(32))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .post(format!("{}/api/overrides", s.base))
        .json(&json!({"id": 1, "kind": "claim", "index": 1, "label": "supported"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(!d.path().join("review-audit.jsonl").exists());

    let r = c
        .get(format!("{}/?token={}", s.base, s.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"list\"") && html.contains("/api/consultations"));
    assert!(
        !html.contains("{{") && !html.contains("/*{{"),
        "unfilled template"
    );
    s.stop().await;
}

#[tokio::test]
async fn lists_pages_and_reports_bad_requests() {
    let d = tempfile::tempdir().unwrap();
    write_run(d.path(), 120);
    let (s, _) = start(d.path()).await;
    let (st, v) = s.get("/api/summary").await;
    assert_eq!((st, v["consultations"].as_u64()), (200, Some(120)));
    let (_, p) = s.get("/api/consultations?offset=100&limit=50").await;
    assert_eq!(p["total"], 120);
    assert_eq!(p["rows"].as_array().unwrap().len(), 20);
    assert_eq!(p["rows"][0]["id"], 100);
    let (_, p) = s.get("/api/consultations?hallucinated=true&q=case-1").await;
    assert_eq!(p["total"], 30);
    let (st, e) = s.get("/api/consultations?stage=nope").await;
    assert_eq!(st, 400);
    assert!(e["error"].as_str().unwrap().contains("stage"), "{e}");
    let (st, e) = s.get("/api/consultations?colour=red").await;
    assert_eq!(st, 400, "{e}");
    let (st, _) = s.get("/api/consultations/120").await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/api/consultations/x").await;
    assert_eq!(st, 400);
    let (st, v) = s.get("/api/consultations/3").await;
    assert_eq!(st, 200);
    assert_eq!(v["claims"][1]["label"], "refuted");
    s.stop().await;
}

#[tokio::test]
async fn an_override_reaches_the_log_the_cache_and_the_page_and_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    write_run(d.path(), 10);
    let (s, replayed) = start(d.path()).await;
    assert_eq!(replayed, 0);
    // Refused: no such claim, no label, a long note. Nothing is written.
    for bad in [
        json!({"id": 1, "kind": "claim", "index": 7, "label": "supported"}),
        json!({"id": 1, "kind": "claim", "index": 1}),
        json!({"id": 1, "kind": "claim", "index": 1, "label": "supported", "note": "x".repeat(3000)}),
    ] {
        let (st, e) = s.post(bad.clone()).await;
        assert_eq!(st, 422, "{bad} -> {e}");
    }
    let (st, _) = s
        .post(json!({"id": 99, "kind": "claim", "index": 0, "label": "refuted"}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post(json!({"id": 1, "kind": "claim", "index": 0, "label": "maybe"}))
        .await;
    assert_eq!(st, 400);
    assert!(!d.path().join("review-audit.jsonl").exists());

    let (st, v) = s
        .post(json!({"id": 1, "kind": "claim", "index": 1, "label": "supported", "note": "folk remedy, but"}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["consultation"]["claims"][1]["label"], "supported");
    let (st, v) = s
        .post(json!({"id": 3, "kind": "rubric", "index": 0, "met": false}))
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, p) = s.get("/api/consultations?hallucinated=true").await;
    assert_eq!(p["total"], 4, "consultation 1 has no refuted claim left");
    s.stop().await;

    let log: Vec<Value> = std::fs::read_to_string(d.path().join("review-audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["reviewer"], "tester");
    assert_eq!(log[0]["target"], "Garlic cures pneumonia");
    assert_eq!(
        (log[0]["before"].as_str(), log[0]["after"].as_str()),
        (Some("refuted"), Some("supported"))
    );
    assert_eq!(log[1]["kind"], "rubric");
    assert_eq!(
        (log[1]["before"].as_bool(), log[1]["after"].as_bool()),
        (Some(true), Some(false))
    );

    let b = SqliteBackend::open(&d.path().join("claims.sqlite")).unwrap();
    let v = get_override(&b, "Garlic cures pneumonia")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.label, ClaimLabel::Supported);
    assert_eq!(v.evidence, "folk remedy, but");
    assert_eq!(v.source.as_deref(), Some("review:tester"));
    // The rubric verdict, keyed by criterion and the reply text the judge read, for the next scoring run.
    let judged = spar_rewards::dialogue::Dialogue::from_sample(&super::fixtures::sample(3))
        .unwrap()
        .sampled_text();
    let r = get_rubric_override(&b, "Asks about fever", &judged)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.met, Some(false));
    assert_eq!(r.source.as_deref(), Some("review:tester"));
    assert!(
        get_rubric_override(&b, "Asks about fever", "another reply")
            .await
            .unwrap()
            .is_none()
    );
    drop(b);

    // A restart replays the log onto the run.
    let (s, replayed) = start(d.path()).await;
    assert_eq!(replayed, 2);
    let (_, v) = s.get("/api/consultations/1").await;
    assert_eq!(v["claims"][1]["label"], "supported");
    let (_, v) = s.get("/api/consultations/3").await;
    assert_eq!(v["rubric"][0]["met"], false);
    s.stop().await;

    // The labelled set.
    let out = d.path().join("labels.jsonl");
    assert_eq!(
        spar_review::export_labels(d.path(), &write_deps(), &out).unwrap(),
        2
    );
    let labels: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(labels[0]["kind"], "claim");
    assert_eq!(
        (
            labels[0]["label"].as_str(),
            labels[0]["model_label"].as_str()
        ),
        (Some("supported"), Some("refuted"))
    );
    assert_eq!(labels[1]["kind"], "rubric");
    assert_eq!(
        (labels[1]["met"].as_bool(), labels[1]["judge_met"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(labels[1]["dialogue"].as_array().unwrap().len() == 6);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["labels.jsonl", "review-audit.jsonl"] {
            let mode = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
}
