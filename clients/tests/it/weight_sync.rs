//! SGLang's weight refresh against the loopback fake: the request SGLang reads, the bearer token, every server
//! asked, and a refusal reported with the server's own message.
use super::common::server;
use spar_clients::SglangWeightReceiver;
use spar_core::recipe::{WeightSyncConfig, WeightSyncKind};
use spar_core::traits::WeightReceiver;
use spar_testkit::{FakeServerConfig, Scripted};

/// A folder the fake accepts: config.json and a safetensors file.
fn model_folder(dir: &std::path::Path) -> std::path::PathBuf {
    let f = dir.join("v000003");
    std::fs::create_dir_all(&f).unwrap();
    std::fs::write(f.join("config.json"), "{}").unwrap();
    std::fs::write(f.join("model.safetensors"), b"").unwrap();
    f
}

fn cfg(servers: Vec<String>) -> WeightSyncConfig {
    WeightSyncConfig {
        kind: WeightSyncKind::Sglang,
        servers,
        timeout_s: 10.0,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_server_loads_the_folder_with_the_token_and_version() {
    let (a, b) = (
        server(FakeServerConfig::default()).await,
        server(FakeServerConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path());
    // SAFETY: tests in this binary do not read this variable concurrently.
    unsafe { std::env::set_var("SPAR_TEST_SGLANG_KEY", "s3cret") };
    let mut c = cfg(vec![
        format!("http://{}/", a.addr()),
        format!("http://{}", b.addr()),
    ]);
    c.api_key_env = Some("SPAR_TEST_SGLANG_KEY".into());
    let r = SglangWeightReceiver::new(&c).unwrap();
    assert!(r.describe().contains(&a.addr().to_string()));
    r.load(&folder, 3).await.unwrap();
    for s in [&a, &b] {
        let reqs = s.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/update_weights_from_disk");
        assert_eq!(reqs[0].body["model_path"], folder.display().to_string());
        assert_eq!(reqs[0].body["weight_version"], "3");
        assert_eq!(reqs[0].body["flush_cache"], true);
        assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer s3cret"));
    }
    // A folder that is not a model: the fake refuses as SGLang would, and the error carries its message.
    let e = r
        .load(&dir.path().join("missing"), 4)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a model folder") && e.contains("version 4"),
        "{e}"
    );
}

#[tokio::test]
async fn a_refusal_or_a_foreign_answer_is_an_error_naming_the_server() {
    let s = server(FakeServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let folder = model_folder(dir.path());
    let r = SglangWeightReceiver::new(&cfg(vec![format!("http://{}", s.addr())])).unwrap();
    s.script([Scripted::Json(
        serde_json::json!({"success": false, "message": "out of memory while loading"}),
    )]);
    let e = r.load(&folder, 1).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("http://{}/update_weights_from_disk", s.addr()))
            && e.contains("out of memory while loading"),
        "{e}"
    );
    s.script([Scripted::Json(serde_json::json!({"choices": []}))]);
    let e = r.load(&folder, 2).await.unwrap_err().to_string();
    assert!(e.contains("not an SGLang weight-update answer"), "{e}");
    // No server, or a token variable that is not set: refused at start-up.
    assert!(SglangWeightReceiver::new(&cfg(vec![])).is_err());
    let mut c = cfg(vec!["http://127.0.0.1:1".into()]);
    c.api_key_env = Some("SPAR_TEST_UNSET_VARIABLE_FOR_SGLANG".into());
    let e = SglangWeightReceiver::new(&c).err().unwrap().to_string();
    assert!(e.contains("SPAR_TEST_UNSET_VARIABLE_FOR_SGLANG"), "{e}");
}
