//! Property test over `spar serve`'s request parser (issue 19's fuzz harness; the file readers' is
//! `data/tests/it/fuzz.rs`): good chat and completion requests, mutated at random with a fixed seed (a field set
//! to a hostile value of another type or range, a field dropped or added, the body's bytes flipped, cut or
//! duplicated), are sent to a running server. Every answer is a 200 with a well-formed body or an OpenAI-style
//! JSON error with a 4xx status; none is a 5xx, a plain-text body or a dropped connection, and the server still
//! answers afterwards. Tight limits keep each accepted request to a few tokens of the tiny model.
use super::serve::{Reply, engine_config, http, options, with_options};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// Mutated requests per endpoint.
const ROUNDS: usize = 150;

/// Fields the handlers read, so that mutations hit the parser's real paths more often than unknown keys.
const FIELDS: [&str; 24] = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "n",
    "stream",
    "ignore_eos",
    "include_stop_str_in_output",
    "logprobs",
    "top_logprobs",
    "echo",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "tools",
    "chat_template_kwargs",
    "unknown_field",
];

/// A value of a type or range a field does not expect (or, by chance, one it does).
fn hostile(rng: &mut ChaCha8Rng) -> Value {
    let deep = (0..64).fold(json!(1), |v, _| json!([v]));
    let choices = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1),
        json!(2),
        json!(21),
        json!(100000),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(-9223372036854775807i64),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!(1e300),
        json!(-2.5),
        json!(""),
        json!("hello"),
        json!("nan"),
        json!("\u{0}\u{feff}\u{10ffff}"),
        json!("x".repeat(3000)),
        json!([]),
        json!([1, 2, 3]),
        json!([999999999]),
        json!([[1, 2], []]),
        json!(["a", 3]),
        json!({}),
        json!({"role": "user"}),
        json!([{"role": "user", "content": 7}]),
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        json!([{"content": "no role"}]),
        json!({"enable_thinking": "yes"}),
        deep,
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

/// One structural mutation of a request object.
fn mutate_json(rng: &mut ChaCha8Rng, good: &Value) -> Value {
    let mut v = good.clone();
    let obj = v.as_object_mut().unwrap();
    for _ in 0..rng.random_range(1..4) {
        let field = FIELDS[rng.random_range(0..FIELDS.len())];
        match rng.random_range(0..5) {
            0 => {
                obj.remove(field);
            }
            1 => {
                // Inside an existing array or object value (a message, a stop list).
                if let Some(inner) = obj.get_mut(field) {
                    match inner {
                        Value::Array(a) if !a.is_empty() => {
                            let i = rng.random_range(0..a.len());
                            a[i] = hostile(rng);
                        }
                        Value::Object(o) if !o.is_empty() => {
                            let k = o.keys().next().unwrap().clone();
                            o.insert(k, hostile(rng));
                        }
                        _ => *inner = hostile(rng),
                    }
                }
            }
            _ => {
                obj.insert(field.to_string(), hostile(rng));
            }
        }
    }
    v
}

/// One byte-level mutation of a serialized body (broken JSON, mostly).
fn mutate_bytes(rng: &mut ChaCha8Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    let at = rng.random_range(0..b.len());
    match rng.random_range(0..5) {
        0 => b[at] ^= 1 << rng.random_range(0..8),
        1 => {
            const BYTES: &[u8] = b"{}[]\":,-e\\\x00";
            b.insert(at, BYTES[rng.random_range(0..BYTES.len())])
        }
        2 => {
            b.remove(at);
        }
        3 => b.truncate(at),
        _ => {
            let copy = b.clone();
            b.extend_from_slice(&copy[at..]);
        }
    }
    b
}

/// What the property allows: a 200 with a JSON body holding `choices` (or an event stream ending in
/// `[DONE]`), or a 4xx OpenAI-style JSON error whose `code` repeats the status. Err describes a violation.
fn check(path: &str, body: &[u8], r: &Reply) -> Result<(), String> {
    let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let fail = |why: &str| {
        Err(format!(
            "{path} {shown}\n  -> {} {}: {why}",
            r.status,
            &r.body[..r.body.len().min(300)]
        ))
    };
    if r.status == 200 {
        if r.headers.to_ascii_lowercase().contains("text/event-stream") {
            if !r.body.contains("data: [DONE]") {
                return fail("a stream without [DONE]");
            }
            return Ok(());
        }
        return match serde_json::from_str::<Value>(&r.body) {
            Ok(v) if v["choices"].as_array().is_some_and(|c| !c.is_empty()) => Ok(()),
            _ => fail("a 200 without choices"),
        };
    }
    if !(400..500).contains(&r.status) {
        return fail("not a 200 or a 4xx");
    }
    match serde_json::from_str::<Value>(&r.body) {
        Ok(v)
            if v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
                && v["error"]["code"] == json!(r.status) =>
        {
            Ok(())
        }
        _ => fail("not an OpenAI JSON error"),
    }
}

#[test]
fn mutated_requests_get_a_reply_or_an_openai_4xx_never_a_5xx() {
    let mut opts = options(None, engine_config());
    // Every accepted request is cheap: a few tokens, one or two choices, short prompts.
    opts.default_max_tokens = 3;
    opts.limits.max_tokens = 4;
    opts.limits.max_n = 2;
    opts.limits.max_prompt_tokens = 200;
    opts.limits.max_body_bytes = 16 << 10;
    let (failures, accepted, refused) = with_options(opts, |addr| {
        let goods = [
            (
                "/v1/chat/completions",
                json!({"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                       {"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0.7,
                       "top_p": 0.9, "logprobs": true, "top_logprobs": 2, "stop": ["\n"], "seed": 1}),
            ),
            (
                "/v1/completions",
                json!({"model": "tiny", "prompt": "hello", "max_tokens": 3, "temperature": 0.0,
                       "logprobs": 1, "stop": "x", "n": 1, "return_token_ids": true}),
            ),
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(19);
        let (mut failures, mut accepted, mut refused) = (Vec::new(), 0, 0);
        for round in 0..ROUNDS {
            for (path, good) in &goods {
                let body = if round % 3 == 2 {
                    mutate_bytes(&mut rng, good.to_string().as_bytes())
                } else {
                    mutate_json(&mut rng, good).to_string().into_bytes()
                };
                let r = http(
                    addr,
                    "POST",
                    path,
                    &[("Content-Type", "application/json")],
                    &body,
                );
                if r.status == 200 {
                    accepted += 1;
                } else {
                    refused += 1;
                }
                if let Err(e) = check(path, &body, &r) {
                    failures.push(format!("round {round}: {e}"));
                }
            }
        }
        // Still serving.
        let alive = http(addr, "GET", "/v1/models", &[], b"");
        if alive.status != 200 {
            failures.push(format!("/v1/models after the fuzz: {}", alive.status));
        }
        (failures, accepted, refused)
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Both sides of the parser were exercised: mutations it accepted and ones it refused.
    assert!(
        accepted > 20 && refused > 50,
        "{accepted} accepted, {refused} refused"
    );
}
