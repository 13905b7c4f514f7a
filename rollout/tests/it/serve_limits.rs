//! `spar serve` hardening, work: the limits on `n`, `max_tokens`, prompt length and sequences in flight are
//! reported by `/v1/models` and enforced (400 naming the parameter; a bounded wait, then 429, when the server
//! is full), and a request whose client disconnects stops generating (the engine's `cancelled` count,
//! `GET /stats`).
use super::serve::{http, options, post_json, send, stats, with_options};
use serde_json::{Value, json};
use spar_rollout::engine::EngineConfig;
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

/// A long context, so that a request can run for a while (thousands of tokens of the tiny model).
fn long_engine() -> EngineConfig {
    EngineConfig {
        max_batch: 4,
        kv_slots: 4,
        max_seq_len: 4096,
        prefill_tokens: 512,
        seed: 0,
        record_routing: false,
        batch_invariant: false,
        prefill_wait_steps: 0,
        overlap_prefill: false,
        async_decode: true,
    }
}

/// Waits (up to 60 s) for `GET /stats` to satisfy `ok`; returns the stats that did.
fn wait_for_stats(addr: SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = stats(addr);
        if ok(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A streamed completion of `max_tokens` tokens that never stops early; returns the reader once the first
/// event has arrived.
fn start_stream(addr: SocketAddr, max_tokens: u32) -> BufReader<std::net::TcpStream> {
    let body = json!({"prompt": "tell me everything", "max_tokens": max_tokens, "ignore_eos": true,
                      "temperature": 0, "stream": true});
    let s = send(
        addr,
        "POST",
        "/v1/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended before its first event"
        );
        if line.starts_with("HTTP/1.1 ") {
            assert!(line.contains(" 200 "), "{line}");
        }
        if line.starts_with("data: {") {
            return r;
        }
    }
}

#[test]
fn serve_reports_and_enforces_its_limits() {
    let mut opts = options(None, long_engine());
    opts.limits.max_n = 2;
    opts.limits.max_tokens = 8;
    opts.limits.max_prompt_tokens = 20;
    with_options(opts, |addr| {
        let models = http(addr, "GET", "/v1/models", &[], b"").json();
        let limits = &models["data"][0]["spar_limits"];
        assert_eq!(limits["max_n"], 2, "{models}");
        assert_eq!(limits["max_tokens"], 8, "{models}");
        assert_eq!(limits["max_prompt_tokens"], 20, "{models}");
        assert_eq!(limits["max_in_flight_sequences"], 16, "{models}");
        assert_eq!(limits["max_queue_wait_ms"], 30_000, "{models}");
        assert!(limits["max_body_bytes"].as_u64().is_some(), "{models}");
        let cmpl = |body: Value| post_json(addr, "/v1/completions", None, &body);
        let refused = [
            (json!({"prompt": "hi", "n": 3, "max_tokens": 2}), "n"),
            (json!({"prompt": "hi", "max_tokens": 9}), "max_tokens"),
            (json!({"prompt": "x".repeat(21), "max_tokens": 2}), "prompt"),
            // A batch of 9 prompts x n = 2 is more sequences than the server runs at once.
            (
                json!({"prompt": vec!["hi"; 9], "n": 2, "max_tokens": 2}),
                "prompt",
            ),
        ];
        for (body, param) in refused {
            let r = cmpl(body.clone());
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(
                r.json()["error"]["param"],
                json!(param),
                "{body}: {}",
                r.body
            );
        }
        let chat =
            json!({"messages": [{"role": "user", "content": "y".repeat(40)}], "max_tokens": 2});
        let r = post_json(addr, "/v1/chat/completions", None, &chat);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["param"], "messages", "{}", r.body);
        // At the limits: served, and a request without max_tokens gets at most the limit.
        let r =
            cmpl(json!({"prompt": "x".repeat(20), "n": 2, "max_tokens": 8, "ignore_eos": true}));
        assert_eq!(r.status, 200, "{}", r.body);
        let r = cmpl(json!({"prompt": "hi", "ignore_eos": true})).json();
        assert!(
            r["usage"]["completion_tokens"].as_u64().unwrap() <= 8,
            "{r}"
        );
    })
    .unwrap();
}

#[test]
fn serve_waits_a_bounded_time_for_room_then_answers_429() {
    let mut opts = options(None, long_engine());
    opts.limits.max_n = 1;
    opts.limits.max_in_flight_sequences = 1;
    opts.limits.max_queue_wait_ms = 500;
    with_options(opts, |addr| {
        // 4000 tokens of the tiny model take seconds: the one sequence in flight stays taken meanwhile.
        let first = start_stream(addr, 4000);
        let small = json!({"prompt": "hi", "max_tokens": 2});
        let t = Instant::now();
        let r = post_json(addr, "/v1/completions", None, &small);
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "answered after {:?}, without waiting",
            t.elapsed()
        );
        assert_eq!(r.json()["error"]["type"], "rate_limit_error", "{}", r.body);
        assert!(
            r.headers.to_ascii_lowercase().contains("retry-after: 1"),
            "{}",
            r.headers
        );
        // A request that waits while the first client leaves gets the room and is served.
        let waiting = std::thread::spawn(move || post_json(addr, "/v1/completions", None, &small));
        std::thread::sleep(Duration::from_millis(100));
        drop(first);
        let r = waiting.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        wait_for_stats(addr, "the sequences to be released", |s| {
            s["in_flight_sequences"] == 0
        });
    })
    .unwrap();
}

#[test]
fn a_stream_whose_client_disconnects_stops_generating() {
    let max_tokens = 4000u64;
    let s = with_options(options(None, long_engine()), move |addr| {
        let reader = start_stream(addr, max_tokens as u32);
        drop(reader);
        wait_for_stats(addr, "the request to be cancelled", |s| {
            s["engine"]["cancelled"] == 1 && s["running"] == 0
        })
    })
    .unwrap();
    let generated = s["engine"]["generated_tokens"].as_u64().unwrap();
    assert!(
        generated < max_tokens / 2,
        "generated {generated} of {max_tokens}: {s}"
    );
    assert_eq!(s["in_flight_sequences"], 0, "{s}");
}

#[test]
fn a_request_whose_client_disconnects_stops_generating() {
    let max_tokens = 4000u64;
    let s = with_options(options(None, long_engine()), move |addr| {
        let body = json!({"prompt": "tell me everything", "max_tokens": max_tokens, "ignore_eos": true, "n": 2});
        let conn = send(
            addr,
            "POST",
            "/v1/completions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        wait_for_stats(addr, "both choices to run", |s| {
            s["running"] == 2 && s["engine"]["generated_tokens"].as_u64() > Some(2)
        });
        conn.shutdown(Shutdown::Both).unwrap();
        drop(conn);
        wait_for_stats(addr, "both choices to be cancelled", |s| {
            s["engine"]["cancelled"] == 2 && s["running"] == 0
        })
    })
    .unwrap();
    let generated = s["engine"]["generated_tokens"].as_u64().unwrap();
    assert!(
        generated < max_tokens,
        "generated {generated} of 2 x {max_tokens}: {s}"
    );
    assert_eq!(s["in_flight_sequences"], 0, "{s}");
}
