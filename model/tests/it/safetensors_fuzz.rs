//! Property test over the safetensors header parser of model loading (issue 19's fuzz harness; the file
//! readers' is `data/tests/it/fuzz.rs`, the serve request parser's `rollout/tests/it/serve_fuzz.rs`): a tiny
//! model's `model.safetensors` with its header mutated at random (a tensor entry's dtype, shape or offsets set
//! to a hostile value, an entry dropped or renamed, the header's bytes or its 8-byte length damaged), with a
//! fixed seed, is loaded without a panic, and every error names the file.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use spar_model::{Qwen3Config, Qwen3Model};
use std::path::Path;
use tch::{Device, Kind};

const ROUNDS: usize = 250;

fn hostile(rng: &mut ChaCha8Rng) -> Value {
    let choices = [
        json!(null),
        json!(-1),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!("F32"),
        json!("BF16"),
        json!("I64"),
        json!("F8_E4M3"),
        json!(""),
        json!([]),
        json!([0, 0]),
        json!([-1, 16]),
        json!([9223372036854775807i64, 2]),
        json!([1, 2, 3]),
        json!([64, 18446744073709551615u64]),
        json!([18446744073709551615u64, 0]),
        json!({}),
        json!([[1]]),
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

/// The header with one to three structural mutations.
fn mutate_header(rng: &mut ChaCha8Rng, header: &Value) -> Value {
    let mut h = header.clone();
    let obj = h.as_object_mut().unwrap();
    for _ in 0..rng.random_range(1..4) {
        let names: Vec<String> = obj.keys().cloned().collect();
        let name = &names[rng.random_range(0..names.len())];
        match rng.random_range(0..6) {
            0 => {
                obj.remove(name);
            }
            1 => {
                let e = obj.remove(name).unwrap();
                obj.insert(format!("{name}.x"), e);
            }
            2 => {
                obj.insert(name.clone(), hostile(rng));
            }
            _ => {
                let field = ["dtype", "shape", "data_offsets"][rng.random_range(0..3)];
                if let Some(e) = obj.get_mut(name).and_then(|e| e.as_object_mut()) {
                    e.insert(field.to_string(), hostile(rng));
                }
            }
        }
    }
    h
}

/// A damaged file: the mutated header with its true length, or raw damage to the length or header bytes.
fn damaged(rng: &mut ChaCha8Rng, header: &Value, data: &[u8]) -> Vec<u8> {
    let mut hdr = serde_json::to_vec(&mutate_header(rng, header)).unwrap();
    let mut len = hdr.len() as u64;
    match rng.random_range(0..6) {
        0 => len = rng.random(),
        1 => len = len.wrapping_add(rng.random_range(1..64)),
        2 => {
            let at = rng.random_range(0..hdr.len());
            hdr[at] ^= 1 << rng.random_range(0..8);
        }
        3 => hdr.truncate(rng.random_range(0..hdr.len())),
        _ => {}
    }
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&hdr);
    out.extend_from_slice(data);
    if rng.random_range(0..8) == 0 {
        out.truncate(rng.random_range(0..out.len()));
    }
    out
}

fn tiny() -> Qwen3Model {
    let c = Qwen3Config::from_json_str(
        r#"{"model_type":"qwen3_moe","vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,
            "num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":8,"decoder_sparse_step":2}"#,
        "test",
    )
    .unwrap();
    Qwen3Model::random(c, Device::Cpu, Kind::Float, 3).unwrap()
}

#[test]
fn mutated_safetensors_headers_never_panic_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny().save_hf(dir.path()).unwrap();
    let file = dir.path().join("model.safetensors");
    let good = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let data = good[8 + n..].to_vec();
    let load = |p: &Path| Qwen3Model::load(p, Device::Cpu, Kind::Float).err();
    assert!(load(dir.path()).is_none(), "the undamaged file loads");
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let (mut failures, mut errors) = (Vec::new(), 0);
    for round in 0..ROUNDS {
        let bytes = damaged(&mut rng, &header, &data);
        std::fs::write(&file, &bytes).unwrap();
        match std::panic::catch_unwind(|| load(dir.path())) {
            Err(_) => failures.push(format!(
                "round {round}: panicked on header {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(8 + n + 64).min(400)])
            )),
            Ok(Some(e)) => {
                errors += 1;
                let msg = format!("{e:#}");
                if !msg.contains("model.safetensors") {
                    failures.push(format!("round {round}: the error names no file: {msg}"));
                }
            }
            Ok(None) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        errors > ROUNDS / 2,
        "only {errors} of {ROUNDS} damaged files refused"
    );
}
