//! `spar serve` hardening, requests: every error is an OpenAI-style JSON body with the right status (axum's
//! plain-text rejections included), sampling parameters out of range are 400s naming the parameter, and the
//! auth rules hold at start (no token off loopback without `--insecure-no-auth`, no empty token) and per
//! request (401 before the body is even parsed).
use super::serve::{Reply, engine_config, http, options, post_json, with_options};
use serde_json::json;

/// Asserts `r` is an OpenAI error: status `status`, `{"error": {"message", "type", "param", "code"}}` with a
/// message, the status as `code` and `param` as given.
#[track_caller]
fn openai_error(r: &Reply, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{} {}", r.headers, r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        r.headers
    );
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert_eq!(e["code"], json!(status), "{v}");
    assert!(e.as_object().unwrap().contains_key("param"), "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
}

#[test]
fn serve_answers_every_error_with_an_openai_json_body() {
    let mut opts = options(Some("sekret"), engine_config());
    opts.limits.max_body_bytes = 2048;
    with_options(opts, |addr| {
        let key = [("Authorization", "Bearer sekret")];
        let json_key = [
            ("Authorization", "Bearer sekret"),
            ("Content-Type", "application/json"),
        ];
        openai_error(&http(addr, "GET", "/nowhere", &key, b""), 404, None);
        openai_error(
            &http(addr, "GET", "/v1/chat/completions", &key, b""),
            405,
            None,
        );
        openai_error(&http(addr, "DELETE", "/v1/models", &key, b""), 405, None);
        openai_error(
            &http(addr, "POST", "/v1/completions", &json_key, b"{\"prompt\": "),
            400,
            None,
        );
        openai_error(
            &http(
                addr,
                "POST",
                "/v1/completions",
                &[
                    ("Authorization", "Bearer sekret"),
                    ("Content-Type", "text/plain"),
                ],
                br#"{"prompt": "hi"}"#,
            ),
            415,
            None,
        );
        // Fields of the wrong type or missing: axum's 422, answered as OpenAI does (400 naming the field).
        let r = post_json(
            addr,
            "/v1/completions",
            Some("sekret"),
            &json!({"prompt": "hi", "max_tokens": -1}),
        );
        openai_error(&r, 400, Some("max_tokens"));
        let r = post_json(
            addr,
            "/v1/completions",
            Some("sekret"),
            &json!({"max_tokens": 3}),
        );
        openai_error(&r, 400, Some("prompt"));
        let big = json!({"prompt": "x".repeat(4096)});
        openai_error(
            &post_json(addr, "/v1/completions", Some("sekret"), &big),
            413,
            None,
        );
        // Auth: no token, a wrong one, the wrong scheme; checked before the body is parsed.
        let body = json!({"prompt": "hi", "max_tokens": 2});
        openai_error(&post_json(addr, "/v1/completions", None, &body), 401, None);
        openai_error(
            &post_json(addr, "/v1/completions", Some("sekreT"), &body),
            401,
            None,
        );
        openai_error(
            &http(
                addr,
                "GET",
                "/v1/models",
                &[("Authorization", "Basic sekret")],
                b"",
            ),
            401,
            None,
        );
        openai_error(
            &http(
                addr,
                "POST",
                "/v1/completions",
                &[("Content-Type", "application/json")],
                b"{oops",
            ),
            401,
            None,
        );
        openai_error(&http(addr, "GET", "/stats", &[], b""), 401, None);
        // Health checks need no token.
        assert_eq!(http(addr, "GET", "/health", &[], b"").status, 200);
        // The happy path still works, the scheme in any case.
        let ok = http(
            addr,
            "GET",
            "/v1/models",
            &[("Authorization", "bearer sekret")],
            b"",
        );
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(
            post_json(addr, "/v1/completions", Some("sekret"), &body).status,
            200
        );
    })
    .unwrap();
}

#[test]
fn serve_refuses_sampling_parameters_out_of_range() {
    with_options(options(None, engine_config()), |addr| {
        let cmpl = |extra: serde_json::Value| {
            let mut body = json!({"prompt": "hello", "max_tokens": 2});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            post_json(addr, "/v1/completions", None, &body)
        };
        let cases = [
            (json!({"temperature": -1}), "temperature"),
            (json!({"temperature": 2.5}), "temperature"),
            // A valid JSON number that is infinite as f32.
            (json!({"temperature": 1e300}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 5}), "top_p"),
            (json!({"min_p": 1.5}), "min_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"n": 0}), "n"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"logprobs": 21}), "logprobs"),
            (json!({"stop_token_ids": [99999999]}), "stop_token_ids"),
            (json!({"prompt": [99999999]}), "prompt"),
            (json!({"prompt": ""}), "prompt"),
            (json!({"stream": true, "n": 2}), "n"),
        ];
        for (extra, param) in cases {
            let r = cmpl(extra.clone());
            assert_eq!(r.status, 400, "{extra}: {}", r.body);
            assert_eq!(
                r.json()["error"]["param"],
                json!(param),
                "{extra}: {}",
                r.body
            );
        }
        let chat = |extra: serde_json::Value| {
            let mut body =
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            post_json(addr, "/v1/chat/completions", None, &body)
        };
        for (extra, param) in [
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"temperature": -0.5}), "temperature"),
            (json!({"messages": [{"content": "no role"}]}), "messages"),
        ] {
            let r = chat(extra.clone());
            assert_eq!(r.status, 400, "{extra}: {}", r.body);
            assert_eq!(
                r.json()["error"]["param"],
                json!(param),
                "{extra}: {}",
                r.body
            );
        }
        // In range: served.
        let r = cmpl(json!({"temperature": 0, "top_p": 1, "top_k": -1, "n": 2, "logprobs": 20}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(chat(json!({"temperature": 2})).status, 200);
    })
    .unwrap();
}

#[test]
fn serve_refuses_to_start_off_loopback_without_a_token() {
    let mut open = options(None, engine_config());
    open.host = "0.0.0.0".into();
    let e = with_options(open.clone(), |_| ()).unwrap_err().to_string();
    assert!(
        e.contains("--insecure-no-auth") && e.contains("0.0.0.0"),
        "{e}"
    );
    // An empty token is no token, on loopback too.
    let e = with_options(options(Some(""), engine_config()), |_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
    // Explicitly insecure: it starts, and serves without a token.
    open.insecure_no_auth = true;
    let status = with_options(open, |addr| {
        let lo = std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()));
        http(lo, "GET", "/v1/models", &[], b"").status
    })
    .unwrap();
    assert_eq!(status, 200);
}
