//! Parity with HF transformers on tiny random Qwen3 / Qwen3-MoE models (fp32, CPU).

use crate::common::{max_abs_diff, oracle, rel_diff, run_py};
use spar_model::generate::{SamplingParams, generate};
use spar_model::{ForwardInput, Qwen3Model, aux_load_balancing_loss, token_logprobs};
use tch::{Device, Kind};

fn load(name: &str) -> Option<(Qwen3Model, &'static crate::common::Oracle)> {
    let o = oracle()?;
    let m = Qwen3Model::load(&o.dir.join(name), Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    Some((m, o))
}

#[test]
fn logits_match_transformers() {
    let Some(o) = oracle() else { return };
    for name in o.spec_names() {
        let (m, _) = load(&name).unwrap();
        let ids = o.get(&format!("{name}.input_ids"));
        let out = tch::no_grad(|| m.forward(ForwardInput::new(&ids))).unwrap();
        let d = max_abs_diff(&out.logits, &o.get(&format!("{name}.logits")));
        eprintln!("{name}: logits max abs diff {d:.2e}");
        assert!(d <= 1e-4, "{name}: logits differ by {d}");
    }
}

fn check_grads(checkpointing: bool) {
    let Some(o) = oracle() else { return };
    for name in o.spec_names() {
        let (mut m, _) = load(&name).unwrap();
        m.set_activation_checkpointing(checkpointing);
        let ids = o.get(&format!("{name}.input_ids"));
        let targets = o.get(&format!("{name}.targets"));
        let out = m.forward(ForwardInput::new(&ids)).unwrap();
        assert_eq!(out.is_checkpointed(), checkpointing);
        let mut loss = -token_logprobs(&out.logits, &targets).mean(Kind::Float);
        let meta = &o.meta[&name];
        if let Some(aux_ref) = meta["aux_loss"].as_f64() {
            let aux = aux_load_balancing_loss(
                &out.router_logits,
                m.config.num_experts,
                m.config.num_experts_per_tok,
            );
            let d = (aux.double_value(&[]) - aux_ref).abs();
            assert!(
                d <= 1e-5,
                "{name}: aux loss {} vs {aux_ref}",
                aux.double_value(&[])
            );
            loss += aux * 0.1;
        }
        assert!(
            (loss.double_value(&[]) - meta["loss"].as_f64().unwrap()).abs() <= 1e-4,
            "{name}: loss differs"
        );
        m.backward(&loss, &out).unwrap();
        let vars = m.vs.variables();
        for p in o.spec(&name)["grad_params"].as_array().unwrap() {
            let p = p.as_str().unwrap();
            let g = vars[p].grad();
            assert!(g.defined(), "{name}: no gradient for {p}");
            let r = rel_diff(&g, &o.get(&format!("{name}.grad.{p}")));
            eprintln!("{name} (checkpointing {checkpointing}): grad {p} rel diff {r:.2e}");
            assert!(r <= 1e-4, "{name}: gradient of {p} differs (rel {r})");
        }
    }
}

#[test]
fn gradients_match_torch_autograd() {
    check_grads(false);
}

#[test]
fn gradients_match_with_activation_checkpointing() {
    check_grads(true);
}

#[test]
fn greedy_generation_with_kv_cache_matches_transformers() {
    let Some(o) = oracle() else { return };
    for name in o.spec_names() {
        let (m, _) = load(&name).unwrap();
        let mut checked = 0;
        for g in o.meta[&name]["generations"].as_array().unwrap() {
            if g["min_margin"].as_f64().unwrap() <= 1e-3 {
                continue; // a near-tie could flip on summation order; the issue asks for margins above 1e-3
            }
            let prompt: Vec<u32> = g["prompt"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let want: Vec<u32> = g["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(want.len(), 32);
            let params = SamplingParams {
                max_new_tokens: 32,
                ..Default::default()
            };
            let got = generate(&m, &prompt, &params).unwrap();
            assert_eq!(
                got.tokens, want,
                "{name}: greedy generation differs for prompt {prompt:?}"
            );
            checked += 1;
        }
        eprintln!("{name}: {checked} prompts with margin > 1e-3 generated identically");
        assert!(
            checked >= 1,
            "{name}: no prompt had a top-2 margin above 1e-3"
        );
    }
}

#[test]
fn hf_round_trip_loads_in_transformers() {
    let Some(o) = oracle() else { return };
    // A private copy of the oracle directory's spec list, so `check` only sees what this test re-saved.
    for name in o.spec_names() {
        let (m, _) = load(&name).unwrap();
        m.save_hf(&o.dir.join(&name).join("resaved")).unwrap();
    }
    run_py(
        "hf_oracle.py",
        &[
            "check",
            o.dir.join("spec.json").to_str().unwrap(),
            o.dir.to_str().unwrap(),
        ],
    )
    .unwrap();
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.dir.join("check.json")).unwrap()).unwrap();
    let logits = tch::Tensor::read_safetensors(o.dir.join("check.safetensors")).unwrap();
    for name in o.spec_names() {
        assert_eq!(
            check[&name]["weights_identical"], true,
            "{name}: re-saved weights differ from the originals"
        );
        let l = &logits
            .iter()
            .find(|(n, _)| *n == format!("{name}.logits"))
            .unwrap()
            .1;
        let d = max_abs_diff(l, &o.get(&format!("{name}.logits")));
        assert!(
            d <= 1e-5,
            "{name}: transformers logits after round trip differ by {d}"
        );
    }
}
