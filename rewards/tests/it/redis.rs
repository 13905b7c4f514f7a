//! The Redis claim-cache backend against a real `redis-server` (Debian package `redis-server`), started here
//! on loopback; skipped with a printed reason where the binary is absent.
use spar_core::sample::ClaimLabel;
use spar_core::traits::ClaimVerdict;
use spar_rewards::fact::{CacheBackend, CacheEntry, ClaimCache, Hit, RedisBackend};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_redis() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn redis_backend_round_trip_and_sharing() {
    let Some(bin) = find_redis() else {
        eprintln!(
            "SKIPPED redis_backend_round_trip_and_sharing: no redis-server on PATH (apt-get install redis-server)"
        );
        return;
    };
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let _server = Server(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let mut backend = None;
    for _ in 0..100 {
        match RedisBackend::connect(&url).await {
            Ok(b) => {
                backend = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let backend = Arc::new(backend.expect("redis-server accepts connections within 5 s"));
    let entry = CacheEntry {
        claim: "Aspirin is contraindicated in children".into(),
        verdict: ClaimVerdict {
            label: ClaimLabel::Supported,
            evidence: "e".into(),
            source: Some("kb:1".into()),
        },
        encoder: "enc".into(),
        embedding: vec![0.0, 1.0],
    };
    backend.put("ns", "k", &entry).await.unwrap();
    assert_eq!(backend.get("ns", "k").await.unwrap(), Some(entry.clone()));
    assert_eq!(backend.get("other", "k").await.unwrap(), None);
    assert_eq!(
        backend.load_all("ns").await.unwrap(),
        vec![("k".to_string(), entry)]
    );
    // Two workers sharing the server: a verdict one stores is an exact hit for the other, and a worker that
    // opens later sees it semantically too.
    let a = ClaimCache::open(backend.clone(), "verifier", "enc", 0.9)
        .await
        .unwrap();
    let b = ClaimCache::open(
        Arc::new(RedisBackend::connect(&url).await.unwrap()),
        "verifier",
        "enc",
        0.9,
    )
    .await
    .unwrap();
    let v = ClaimVerdict {
        label: ClaimLabel::Refuted,
        evidence: String::new(),
        source: None,
    };
    a.insert("Garlic cures pneumonia", &[1.0, 0.0], &v).await;
    assert_eq!(
        b.lookup("garlic cures pneumonia", &[0.0, 1.0])
            .await
            .map(|x| x.1),
        Some(Hit::Exact)
    );
    let c = ClaimCache::open(
        Arc::new(RedisBackend::connect(&url).await.unwrap()),
        "verifier",
        "enc",
        0.9,
    )
    .await
    .unwrap();
    assert_eq!(
        c.lookup("Garlic cures pneumonia quickly", &[1.0, 0.0])
            .await
            .map(|x| (x.0.label, x.1)),
        Some((ClaimLabel::Refuted, Hit::Semantic))
    );
}
