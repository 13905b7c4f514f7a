#!/usr/bin/env python3
"""Writes the bad-input corpus (recipes/, cases/, samples/) and expected.tsv next to this script.

Each file is malformed in one way; expected.tsv names, per file, a substring its error must contain (the field
or key at fault). `data/tests/it/bad_inputs.rs` reads every file with spar's own reader and checks: no panic, an
error, and a message that names the file and that substring. Run this script again after changing it; the files
are kept in the repository so the test needs no Python.
"""
import copy
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
expected = []


def put(sub, name, text, want):
    path = os.path.join(HERE, sub, name)
    with open(path, "w") as f:
        f.write(text)
    expected.append((f"{sub}/{name}", want))


for sub in ("recipes", "cases", "samples"):
    shutil.rmtree(os.path.join(HERE, sub), ignore_errors=True)
    os.makedirs(os.path.join(HERE, sub))

# ---------------------------------------------------------------- recipes (core's Recipe::load)
# Values out of range: (section, key, value, key the error names).
RANGE = [
    ("trainer", "lr", "-1.0", "trainer.lr"),
    ("trainer", "lr", "0.0", "trainer.lr"),
    ("trainer", "lr", "nan", "trainer.lr"),
    ("trainer", "lr", "inf", "trainer.lr"),
    ("trainer", "micro_batch", "0", "trainer.micro_batch"),
    ("trainer", "keep_last", "0", "trainer.keep_last"),
    ("trainer", "sft_batch", "0", "trainer.sft_batch"),
    ("trainer", "ppo_epochs", "0", "trainer.ppo_epochs"),
    ("trainer", "l_max", "0", "trainer.l_max"),
    ("trainer", "dual_clip", "0.5", "trainer.dual_clip"),
    ("trainer", "tis_cap", "-1.0", "trainer.tis_cap"),
    ("trainer", "eps_low", "-0.1", "trainer.eps_low"),
    ("trainer", "bpe_vocab_size", "3", "trainer.bpe_vocab_size"),
    ("trainer.gae", "gamma", "1.5", "trainer.gae.gamma"),
    ("trainer.gae", "lambda", "-0.5", "trainer.gae.lambda"),
    ("trainer.gae", "vf_coef", "-1.0", "trainer.gae.vf_coef"),
    ("trainer.gae", "value_clip", "0.0", "trainer.gae.value_clip"),
    ("trainer.gae", "critic_lr", "0.0", "trainer.gae.critic_lr"),
    ("trainer.distill", "coef", "-1.0", "trainer.distill.coef"),
    ("trainer.distill", "task_coef", "-1.0", "trainer.distill.task_coef"),
    ("trainer.sft_expert", "skip_question", "1.5", "trainer.sft_expert.skip_question"),
    ("trainer.sft_expert", "false_claim_rate", "-0.1", "trainer.sft_expert.false_claim_rate"),
    ("trainer.sft_expert", "max_diagnosis_rank", "0", "trainer.sft_expert.max_diagnosis_rank"),
    ("rollout", "group_size", "1", "rollout.group_size"),
    ("rollout", "group_size", "0", "rollout.group_size"),
    ("rollout", "groups_per_step", "0", "rollout.groups_per_step"),
    ("rollout", "interruption_rate", "1.5", "rollout.interruption_rate"),
    ("rollout", "interruption_rate", "-0.1", "rollout.interruption_rate"),
    ("rollout", "tau", "2.0", "rollout.tau"),
    ("rollout", "top_m", "0", "rollout.top_m"),
    ("rollout", "turn_limits", "[0, 1, 1, 1]", "rollout.turn_limits"),
    ("rollout", "max_batch", "0", "rollout.max_batch"),
    ("rollout", "max_seq_len", "8", "rollout.max_seq_len"),
    ("rollout", "kv_slots", "1", "rollout.kv_slots"),
    ("rollout", "instructions", '["only one"]', "rollout.instructions"),
    ("rollout.sampling", "temperature", "-1.0", "rollout.sampling.temperature"),
    ("rollout.sampling", "top_p", "0.0", "rollout.sampling.top_p"),
    ("rollout.sampling", "top_p", "1.5", "rollout.sampling.top_p"),
    ("rollout.sampling", "max_new_tokens", "0", "rollout.sampling.max_new_tokens"),
    ("rollout.sampling", "max_new_tokens", "100000", "rollout.sampling.max_new_tokens"),
    ("rollout.endpoint", "base_url", '"ftp://x"', "rollout.endpoint.base_url"),
    ("rollout.endpoint", "timeout_s", "0.0", "rollout.endpoint.timeout_s"),
    ("rollout.endpoint", "concurrency", "0", "rollout.endpoint.concurrency"),
    ("eval", "temperature", "-1.0", "eval.temperature"),
    ("eval", "max_new_tokens", "0", "eval.max_new_tokens"),
    ("rewards.spar", "sigma_floor", "-1.0", "rewards.spar.sigma_floor"),
    ("rewards.spar", "adv_clip", "0.0", "rewards.spar.adv_clip"),
    ("rewards.fact", "kappa", "0.0", "rewards.fact.kappa"),
    ("rewards.fact", "eps", "0.0", "rewards.fact.eps"),
    ("rewards.fact", "tau_max", "0.0", "rewards.fact.tau_max"),
    ("rewards.dynamic_rubrics", "admit_rate", "1.5", "rewards.dynamic_rubrics.admit_rate"),
    ("rewards.dynamic_rubrics", "exit_rate", "-0.5", "rewards.dynamic_rubrics.exit_rate"),
    ("rewards.stages", "ddx_max_len", "0", "rewards.stages.ddx_max_len"),
    ("distributed", "timeout_secs", "0", "distributed.timeout_secs"),
    ("trainer", "rl_aux_loss_coef", "-1.0", "trainer.rl_aux_loss_coef"),
    ("trainer", "aux_loss_coef", "nan", "trainer.aux_loss_coef"),
]
for i, (sec, key, val, want) in enumerate(RANGE):
    put("recipes", f"range-{i:02}-{sec.replace('.', '-')}-{key}.toml", f"[{sec}]\n{key} = {val}\n", want)

# Values of the wrong type.
TYPES = [
    ("trainer", "lr", '"fast"', "trainer.lr"),
    ("trainer", "micro_batch", "1.5", "trainer.micro_batch"),
    ("trainer", "micro_batch", "-1", "trainer.micro_batch"),
    ("trainer", "keep_last", '"all"', "trainer.keep_last"),
    ("trainer", "out_dir", "5", "trainer.out_dir"),
    ("rollout", "group_size", '"eight"', "rollout.group_size"),
    ("rollout", "turn_limits", '"4,1,1,1"', "rollout.turn_limits"),
    ("rollout", "turn_limits", '["a"]', "rollout.turn_limits"),
    ("rollout.sampling", "temperature", "true", "rollout.sampling.temperature"),
    ("model", "device", "0", "model.device"),
    ("model", "path", "[1, 2]", "model.path"),
    ("data", "cases", "3", "data.cases"),
    ("data", "max_cases", "-4", "data.max_cases"),
    ("eval", "max_cases", '"ten"', "eval.max_cases"),
    ("rewards.fact", "kappa", '"high"', "rewards.fact.kappa"),
    ("distributed", "data_parallel", '"eight"', "distributed.data_parallel"),
]
for i, (sec, key, val, want) in enumerate(TYPES):
    put("recipes", f"type-{i:02}-{sec.replace('.', '-')}-{key}.toml", f"[{sec}]\n{key} = {val}\n", want)

# Enum-valued keys with a value they do not take.
ENUMS = [
    ("trainer", "loss_agg", '"token-sum"', "trainer.loss_agg"),
    ("trainer", "policy_loss", '"dpo"', "trainer.policy_loss"),
    ("rewards.fact", "verifier", '"kb+web"', "rewards.fact.verifier"),
    ("rewards.fact", "mode", '"sometimes"', "rewards.fact.mode"),
    ("rewards.spar", "estimator", '"ppo2"', "rewards.spar.estimator"),
    ("model", "dtype", '"fp8"', "model.dtype"),
    ("rollout.simulator", "kind", '"human"', "rollout.simulator.kind"),
    ("rollout", "backend", '"vllm"', "rollout.backend"),
    ("distributed", "sharding", '"half"', "distributed.sharding"),
    ("distributed", "backend", '"mpi"', "distributed.backend"),
    ("eval", "split", '"holdout"', "eval.split"),
]
for i, (sec, key, val, want) in enumerate(ENUMS):
    put("recipes", f"enum-{i:02}-{sec.replace('.', '-')}-{key}.toml", f"[{sec}]\n{key} = {val}\n", want)

# Keys no section has (typos): the error names the key.
UNKNOWN = [
    ("trainer", "lrr"), ("trainer", "sft_step"), ("rollout", "groupsize"), ("rollout.sampling", "topp"),
    ("model", "devise"), ("data", "case"), ("eval", "max_case"), ("rewards", "judges"),
    ("rewards.fact", "kapa"), ("rewards.spar", "estimater"), ("distributed", "world"),
    ("trainer.gae", "gama"), ("rollout.simulator", "kinds"), ("rollout.endpoint", "url"),
]
for i, (sec, key) in enumerate(UNKNOWN):
    put("recipes", f"unknown-{i:02}-{sec.replace('.', '-')}-{key}.toml", f"[{sec}]\n{key} = 1\n", key)
put("recipes", "unknown-section.toml", "[trainr]\nlr = 1e-5\n", "trainr")

# Not TOML, or TOML of the wrong shape.
put("recipes", "toml-open-bracket.toml", "[trainer\nlr = 1\n", "line 1")
put("recipes", "toml-no-value.toml", "[trainer]\nlr =\n", "line 2")
put("recipes", "toml-duplicate-key.toml", "[trainer]\nlr = 1e-5\nlr = 2e-5\n", "line 3")
put("recipes", "toml-duplicate-table.toml", "[trainer]\nlr = 1e-5\n[trainer]\nsft_lr = 1e-5\n", "line 3")
put("recipes", "toml-section-is-value.toml", "trainer = 5\n", "trainer")
put("recipes", "toml-binary.toml", "\x00\x01\x02garbage", "line 1")
put("recipes", "toml-unterminated-string.toml", '[model]\ndevice = "cpu\n', "line 2")
put("recipes", "toml-seed-string.toml", 'seed = "forty-two"\n', "seed")
put("recipes", "toml-seed-negative.toml", "seed = -1\n", "seed")

# ---------------------------------------------------------------- cases (spar-data's read_cases)
with open(os.path.join(HERE, "..", "..", "data", "cases", "cases.jsonl")) as f:
    CASE = json.loads(f.readline())
assert CASE["red_flags"] and CASE["differential"] and CASE["rubric"], "the first shipped case has every list"


def case_file(name, cases, want, raw=None):
    text = raw if raw is not None else "".join(json.dumps(c) + "\n" for c in cases)
    put("cases", name, text, want)


def mutate(name, edit, want, line=2):
    """A file of a good case then the mutated one (so the error names line 2)."""
    bad = copy.deepcopy(CASE)
    bad["id"] = CASE["id"] + "-bad"
    edit(bad)
    good = copy.deepcopy(CASE)
    case_file(name, [good, bad] if line == 2 else [bad], want)


for field in ["id", "department", "demographics", "chief_complaint", "hpi", "inquiry_items", "diagnosis",
              "tests"]:
    mutate(f"missing-{field}.jsonl", lambda c, f=field: c.pop(f), f"field `{field}`")
for field in ["age", "sex"]:
    mutate(f"missing-demographics-{field}.jsonl", lambda c, f=field: c["demographics"].pop(f),
           f"field `demographics.{field}`")
for field in ["id", "topic", "keywords", "answer", "weight"]:
    mutate(f"missing-inquiry-{field}.jsonl", lambda c, f=field: c["inquiry_items"][1].pop(f),
           f"field `inquiry_items[1].{field}`")
for field in ["name", "icd10"]:
    mutate(f"missing-diagnosis-{field}.jsonl", lambda c, f=field: c["diagnosis"].pop(f),
           f"field `diagnosis.{field}`")
WRONG = [
    ("id", 5), ("department", ["cardiology"]), ("demographics", "54F"), ("chief_complaint", None),
    ("past_history", "diabetes"), ("medications", [1, 2]), ("inquiry_items", {}), ("red_flags", "none"),
    ("diagnosis", "MI"), ("differential", {"name": "x"}), ("tests", []), ("rubric", 3), ("source", 7),
]
for field, val in WRONG:
    mutate(f"type-{field}.jsonl", lambda c, f=field, v=val: c.__setitem__(f, v), f"field `{field}")
NESTED = [
    ("demographics-age-string", lambda c: c["demographics"].__setitem__("age", "54"), "demographics.age"),
    ("demographics-age-negative", lambda c: c["demographics"].__setitem__("age", -3), "demographics.age"),
    ("demographics-age-float", lambda c: c["demographics"].__setitem__("age", 54.5), "demographics.age"),
    ("demographics-sex-unknown", lambda c: c["demographics"].__setitem__("sex", "robot"), "demographics.sex"),
    ("inquiry-weight-string", lambda c: c["inquiry_items"][2].__setitem__("weight", "heavy"),
     "inquiry_items[2].weight"),
    ("inquiry-critical-string", lambda c: c["inquiry_items"][0].__setitem__("critical", "yes"),
     "inquiry_items[0].critical"),
    ("inquiry-keywords-string", lambda c: c["inquiry_items"][0].__setitem__("keywords", "chest"),
     "inquiry_items[0].keywords"),
    ("inquiry-unknown-field", lambda c: c["inquiry_items"][0].__setitem__("wieght", 1), "inquiry_items[0]"),
    ("red-flag-present-string", lambda c: c["red_flags"][0].__setitem__("present", "no"),
     "red_flags[0].present"),
    ("red-flag-weight-null", lambda c: c["red_flags"][0].__setitem__("weight", None), "red_flags[0].weight"),
    ("differential-icd10-number", lambda c: c["differential"][0].__setitem__("icd10", 121), "differential[0].icd10"),
    ("tests-essential-string", lambda c: c["tests"].__setitem__("essential", "troponin"), "tests.essential"),
    ("tests-item-name-missing", lambda c: c["tests"]["essential"][0].pop("name"), "tests.essential[0].name"),
    ("rubric-points-string", lambda c: c["rubric"][0].__setitem__("points", "five"), "rubric[0].points"),
    ("rubric-points-float", lambda c: c["rubric"][0].__setitem__("points", 2.5), "rubric[0].points"),
    ("rubric-rule-stage-unknown", lambda c: c["rubric"][0].__setitem__("rule", {"stage": "triage"}),
     "rubric[0].rule.stage"),
    ("unknown-top-field", lambda c: c.__setitem__("diagnosiss", {}), "diagnosiss"),
]
for name, edit, want in NESTED:
    mutate(f"nested-{name}.jsonl", edit, f"field `{want}")
# Values the reader takes but Case::validate refuses.
VALUES = [
    ("id-blank", lambda c: c.__setitem__("id", "  "), "id"),
    ("department-empty", lambda c: c.__setitem__("department", ""), "department"),
    ("age-200", lambda c: c["demographics"].__setitem__("age", 200), "demographics.age"),
    ("chief-complaint-blank", lambda c: c.__setitem__("chief_complaint", " "), "chief_complaint"),
    ("inquiry-empty", lambda c: c.__setitem__("inquiry_items", []), "inquiry_items"),
    ("inquiry-keywords-empty", lambda c: c["inquiry_items"][3].__setitem__("keywords", []),
     "inquiry_items[3].keywords"),
    ("inquiry-weight-zero", lambda c: c["inquiry_items"][1].__setitem__("weight", 0.0), "inquiry_items[1].weight"),
    ("inquiry-weight-negative", lambda c: c["inquiry_items"][1].__setitem__("weight", -2.0),
     "inquiry_items[1].weight"),
    ("red-flag-keywords-empty", lambda c: c["red_flags"][0].__setitem__("keywords", []), "red_flags[0].keywords"),
    ("icd10-lowercase", lambda c: c["diagnosis"].__setitem__("icd10", "i21.4"), "diagnosis.icd10"),
    ("icd10-undotted", lambda c: c["diagnosis"].__setitem__("icd10", "I214"), "diagnosis.icd10"),
    ("icd10-garbage", lambda c: c["diagnosis"].__setitem__("icd10", "heart attack"), "diagnosis.icd10"),
    ("differential-icd10-bad", lambda c: c["differential"][0].__setitem__("icd10", "XX"), "differential[0].icd10"),
    ("tests-essential-empty", lambda c: c["tests"].__setitem__("essential", []), "tests.essential"),
    ("rubric-points-zero", lambda c: c["rubric"][0].__setitem__("points", 0), "rubric[0].points"),
    ("rubric-points-11", lambda c: c["rubric"][0].__setitem__("points", 11), "rubric[0].points"),
    ("rubric-points-minus-11", lambda c: c["rubric"][0].__setitem__("points", -11), "rubric[0].points"),
    ("rubric-regex-unclosed", lambda c: c["rubric"][0].__setitem__("rule", {"regex": "(chest"}),
     "rubric[0].rule.regex"),
]
for name, edit, want in VALUES:
    mutate(f"value-{name}.jsonl", edit, f"field `{want}`")
case_file("duplicate-id.jsonl", [CASE, CASE], "duplicate case id")
case_file("not-json.jsonl", None, "not JSON", raw=json.dumps(CASE) + "\n{this is not json}\n")
case_file("truncated-line.jsonl", None, "not JSON", raw=json.dumps(CASE)[:200] + "\n")
case_file("array-line.jsonl", None, ":1:", raw="[1, 2, 3]\n")
case_file("null-line.jsonl", None, ":1:", raw="null\n")
case_file("string-line.jsonl", None, ":1:", raw='"a case"\n')
case_file("number-line.jsonl", None, ":1:", raw="42\n")
case_file("empty-object.jsonl", None, "field `", raw="{}\n")
case_file("trailing-garbage.jsonl", None, "not JSON", raw=json.dumps(CASE) + " trailing\n")
case_file("parquet-that-is-text.parquet", None, "parquet", raw="this is not a parquet file\n")
case_file("parquet-empty.parquet", None, "parquet", raw="")

# ---------------------------------------------------------------- samples (spar-data's wire::read_samples)
SAMPLE = {
    "schema_version": 1, "run_id": "r", "case_id": "c", "group_id": "g", "sample_idx": 0,
    "stages": ["inquiry"], "mode": "fresh", "policy_version": 0, "end_reason": "done",
    "token_ids": [1, 2, 3, 4], "loss_mask": [0, 1, 1, 1], "rollout_logprobs": [0.0, -0.5, -0.2, -0.1],
    "steps": [{"stage": "inquiry", "start": 1, "end": 4}],
    "turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
}


def smutate(name, edit, want):
    bad = copy.deepcopy(SAMPLE)
    bad["sample_idx"] = 1
    edit(bad)
    put("samples", name, json.dumps(SAMPLE) + "\n" + json.dumps(bad) + "\n", want)


for field in ["schema_version", "run_id", "case_id", "group_id", "sample_idx", "stages", "mode",
              "policy_version", "end_reason", "token_ids", "loss_mask", "rollout_logprobs", "steps", "turns"]:
    smutate(f"missing-{field}.jsonl", lambda s, f=field: s.pop(f), f"field `{field}`")
SWRONG = [
    ("run_id", 3, "run_id"), ("sample_idx", -1, "sample_idx"), ("sample_idx", "0", "sample_idx"),
    ("stages", "inquiry", "stages"), ("stages", ["triage"], "stages[0]"), ("mode", "warm", "mode"),
    ("end_reason", "crashed", "end_reason"), ("token_ids", [1, -2, 3, 4], "token_ids[1]"),
    ("token_ids", "1 2 3", "token_ids"), ("loss_mask", [0, 1, 1, 300], "loss_mask[3]"),
    ("rollout_logprobs", [0, "x", 0, 0], "rollout_logprobs[1]"), ("policy_version", -5, "policy_version"),
    ("turns", [{"role": "doctor", "text": "x"}], "turns[0].role"), ("turns", [{"role": "user"}], "turns[0].text"),
    ("steps", [{"stage": "inquiry", "start": "1", "end": 4}], "steps[0].start"),
    ("steps", [{"stage": "exam", "start": 1, "end": 4}], "steps[0].stage"),
    ("extra_field", 1, "extra_field"),
    ("routed_experts", {"layers": 1, "k": 1}, "routed_experts.ids"),
]
for i, (field, val, want) in enumerate(SWRONG):
    smutate(f"type-{i:02}-{field}.jsonl", lambda s, f=field, v=val: s.__setitem__(f, v), f"field `{want}")
# Records that read but break the trainer's consistency rules (Sample::check).
SCHECK = [
    ("loss-mask-short", lambda s: s.__setitem__("loss_mask", [0, 1]), "loss_mask"),
    ("loss-mask-value-2", lambda s: s.__setitem__("loss_mask", [0, 1, 2, 1]), "loss_mask"),
    ("logprobs-long", lambda s: s.__setitem__("rollout_logprobs", [0.0] * 9), "rollout_logprobs"),
    ("step-past-end", lambda s: s.__setitem__("steps", [{"stage": "inquiry", "start": 1, "end": 9}]), "steps"),
    ("step-reversed", lambda s: s.__setitem__("steps", [{"stage": "inquiry", "start": 3, "end": 1}]), "steps"),
    ("steps-overlap", lambda s: s.__setitem__("steps", [{"stage": "inquiry", "start": 1, "end": 3},
                                                        {"stage": "ddx", "start": 2, "end": 4}]), "steps"),
    ("routed-experts-count", lambda s: s.__setitem__("routed_experts", {"layers": 2, "k": 2, "ids": [1, 2]}),
     "routed_experts"),
]
for name, edit, want in SCHECK:
    smutate(f"check-{name}.jsonl", edit, f"field `{want}`")
put("samples", "schema-version-2.jsonl", json.dumps(SAMPLE) + "\n" + json.dumps({**SAMPLE, "schema_version": 2}) + "\n",
    "schema_version")
put("samples", "schema-version-string.jsonl", json.dumps({**SAMPLE, "schema_version": "1"}) + "\n",
    "schema_version")
put("samples", "not-json.jsonl", json.dumps(SAMPLE) + "\n{\n", "not JSON")
put("samples", "array-line.jsonl", "[]\n", ":1:")
put("samples", "parquet-that-is-text.parquet", "PAR1 but not really\n", "parquet")

with open(os.path.join(HERE, "expected.tsv"), "w") as f:
    f.write("# file\tsubstring its error must contain (besides the file's name); written by make.py\n")
    for path, want in expected:
        f.write(f"{path}\t{want}\n")
print(f"{len(expected)} bad inputs")
