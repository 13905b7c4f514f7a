//! verl parquet import: RL prompt rows and rows carrying a case, with errors that name row and field.
use super::common::*;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use serde_json::json;
use spar_data::verl::import_verl;
use std::sync::Arc;

fn verl_schema(with_reward: bool) -> Arc<Schema> {
    let msg = DataType::Struct(Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]));
    let mut f = vec![
        Field::new("data_source", DataType::Utf8, true),
        Field::new(
            "prompt",
            DataType::List(Arc::new(Field::new_list_field(msg, true))),
            true,
        ),
        Field::new("ability", DataType::Utf8, true),
    ];
    if with_reward {
        f.push(Field::new(
            "reward_model",
            DataType::Struct(Fields::from(vec![
                Field::new("ground_truth", DataType::Utf8, true),
                Field::new("style", DataType::Utf8, true),
            ])),
            true,
        ));
    }
    f.push(Field::new(
        "extra_info",
        DataType::Struct(Fields::from(vec![
            Field::new("index", DataType::Int64, true),
            Field::new("split", DataType::Utf8, true),
            Field::new("case", DataType::Utf8, true),
        ])),
        true,
    ));
    Arc::new(Schema::new(f))
}

#[test]
fn prompts_and_cases_from_a_verl_file() {
    let d = tmp();
    let case = &some_cases(1)[0];
    let rows = vec![
        json!({"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "2+2?"}], "ability": "math",
               "reward_model": {"style": "rule", "ground_truth": "4"}, "extra_info": {"index": 7, "split": "train"}}),
        json!({"data_source": "spar/cases", "prompt": [{"role": "system", "content": "You are a doctor."}, {"role": "user", "content": case.chief_complaint}],
               "reward_model": {"style": "rule", "ground_truth": case.diagnosis.icd10}, "extra_info": {"index": 1, "case": serde_json::to_string(case).unwrap()}}),
    ];
    let p = d.path().join("mixed.parquet");
    write_raw_parquet(&p, verl_schema(true), &rows, &[]);
    let got = import_verl(&p).unwrap();
    assert_eq!(got.cases, vec![case.clone()]);
    assert_eq!(got.prompts.len(), 1);
    let pr = &got.prompts[0];
    assert_eq!(pr.id, "openai/gsm8k-7");
    assert_eq!(pr.prompt[0].content, "2+2?");
    assert_eq!(pr.ground_truth, json!("4"));
    assert_eq!(pr.ability.as_deref(), Some("math"));
}

#[test]
fn verl_errors_name_row_and_field() {
    let d = tmp();
    let rows = vec![
        json!({"data_source": "x", "prompt": [{"role": "user", "content": "hi"}], "extra_info": {"index": 0}}),
    ];
    let p = d.path().join("norm.parquet");
    write_raw_parquet(&p, verl_schema(false), &rows, &[]);
    let e = import_verl(&p).unwrap_err().to_string();
    assert!(e.contains("norm.parquet:1: field `reward_model`"), "{e}");

    let mut case = some_cases(1).remove(0);
    case.diagnosis.icd10 = "nonsense".into();
    let ok = json!({"data_source": "x", "prompt": [{"role": "user", "content": "hi"}], "reward_model": {"style": "rule", "ground_truth": "a"}});
    let rows = vec![
        ok.clone(),
        json!({"data_source": "x", "prompt": [{"content": "no role"}], "reward_model": {"style": "rule", "ground_truth": "a"}}),
    ];
    let p = d.path().join("role.parquet");
    write_raw_parquet(&p, verl_schema(true), &rows, &[]);
    let e = import_verl(&p).unwrap_err().to_string();
    assert!(e.contains("role.parquet:2: field `prompt[0].role`"), "{e}");

    let rows = vec![
        ok,
        json!({"data_source": "x", "prompt": [{"role": "user", "content": "hi"}], "reward_model": {"style": "rule", "ground_truth": "a"},
                                "extra_info": {"case": serde_json::to_string(&case).unwrap()}}),
    ];
    let p = d.path().join("case.parquet");
    write_raw_parquet(&p, verl_schema(true), &rows, &[]);
    let e = import_verl(&p).unwrap_err().to_string();
    assert!(
        e.contains("case.parquet:2: field `extra_info.case.diagnosis.icd10`"),
        "{e}"
    );
}

#[test]
fn verl_file_written_by_pyarrow() {
    let Some(py) = python() else { return };
    let d = tmp();
    let p = d.path().join("verl.parquet");
    let case = serde_json::to_string(&some_cases(1)[0]).unwrap();
    run_python(
        &py,
        "import sys, json, pyarrow as pa, pyarrow.parquet as pq\n\
         rows = [\n\
         {'data_source': 'openai/gsm8k', 'prompt': [{'role': 'user', 'content': 'What is 3*4?'}], 'ability': 'math',\n\
          'reward_model': {'style': 'rule', 'ground_truth': '12'}, 'extra_info': {'split': 'train', 'index': 0}},\n\
         {'data_source': 'openai/gsm8k', 'prompt': [{'role': 'user', 'content': 'What is 5+5?'}], 'ability': 'math',\n\
          'reward_model': {'style': 'rule', 'ground_truth': '10'}, 'extra_info': {'split': 'train', 'index': 1}}]\n\
         pq.write_table(pa.Table.from_pylist(rows), sys.argv[1])\n\
         case_rows = [{'data_source': 'spar', 'prompt': [{'role': 'user', 'content': 'hi'}], 'ability': 'medicine',\n\
          'reward_model': {'style': 'rule', 'ground_truth': sys.argv[3]}, 'extra_info': {'split': 'train', 'index': 0}}]\n\
         pq.write_table(pa.Table.from_pylist(case_rows), sys.argv[2])",
        &[
            p.to_str().unwrap(),
            d.path().join("cases.parquet").to_str().unwrap(),
            &case,
        ],
    );
    let got = import_verl(&p).unwrap();
    assert!(got.cases.is_empty());
    assert_eq!(
        got.prompts
            .iter()
            .map(|x| x.id.as_str())
            .collect::<Vec<_>>(),
        ["openai/gsm8k-0", "openai/gsm8k-1"]
    );
    assert_eq!(got.prompts[1].ground_truth, json!("10"));
    let got = import_verl(&d.path().join("cases.parquet")).unwrap();
    assert_eq!(got.cases, some_cases(1));
}

#[test]
fn export_then_import_gives_the_cases_back() {
    let d = tmp();
    let cases = some_cases(12);
    let splits = spar_data::Splits::build(&cases, &[cases[0].diagnosis.icd10.clone()], 0.5, 1);
    let p = d.path().join("verl.parquet");
    spar_data::verl::export_verl(&p, &cases, Some(&splits)).unwrap();
    let got = import_verl(&p).unwrap();
    assert!(got.prompts.is_empty());
    assert_eq!(got.cases, cases);
    let Some(py) = python() else { return };
    let out = run_python(
        &py,
        "import sys, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1])\n\
         print(t.column_names)\n\
         r = t.slice(0, 1).to_pylist()[0]\n\
         print(r['prompt'][0]['role'], r['reward_model']['style'], r['extra_info']['split'], r['extra_info']['index'])",
        &[p.to_str().unwrap()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "['data_source', 'prompt', 'ability', 'reward_model', 'extra_info']"
    );
    assert_eq!(lines[1], "user rule test 0");
}
