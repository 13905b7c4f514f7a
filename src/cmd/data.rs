//! `spar data`: generate, validate, import, export and summarise cases (the logic lives in `spar-data`).
use anyhow::{Context, bail};
use spar_data::cases::{self, Format};
use spar_data::splits::{Split, Splits};
use spar_data::{expert, generate, redact, verl, wire};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Generate synthetic cases from the disease table: writes DIR/cases.jsonl and DIR/splits.json.
    Generate {
        /// Number of cases (cycles through the disease table).
        #[arg(long, default_value_t = generate::SHIPPED_PER_DISEASE * generate::diseases().len())]
        n: usize,
        #[arg(long, default_value_t = generate::SHIPPED_SEED)]
        seed: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a case file or folder (every problem, with file, line/row and field) and its splits.
    Validate {
        /// Case file (.jsonl / .parquet) or folder; default: the shipped cases.
        #[arg(long = "in", alias = "input")]
        input: Option<PathBuf>,
        /// Split file; default: splits.json next to the cases, if present.
        #[arg(long)]
        splits: Option<PathBuf>,
    },
    /// Import verl-style parquet (prompt, reward_model, extra_info, data_source) as cases, or as RL prompt
    /// records when the rows carry no case. Free text is PHI-redacted unless --no-redact.
    ImportVerl {
        #[arg(long = "in", alias = "input")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Keep the text as the file has it (like `[data] redact_on_ingest = false`): only for data that is
        /// already de-identified or that stays where it may hold PHI.
        #[arg(long)]
        no_redact: bool,
    },
    /// Import cases in the field's formats as spar cases: AgentClinic's JSONL (`--format agentclinic`: the OSCE
    /// layout of its MedQA files, or its NEJM layout) or SCAN-bench-style case objects (`--format scan`: a JSON
    /// array or JSONL). Diagnoses are coded through the knowledge base's ICD-10-CM tree. A row that cannot be
    /// mapped is reported (file, line, field) and the others are written; free text is PHI-redacted unless
    /// --no-redact.
    Import {
        #[arg(long = "in", alias = "input")]
        input: PathBuf,
        /// Case file to write (.jsonl or .parquet).
        #[arg(long)]
        out: PathBuf,
        /// agentclinic or scan.
        #[arg(long)]
        format: String,
        /// Knowledge base folder whose ICD-10-CM tree codes the diagnoses (default: the shipped one).
        #[arg(long)]
        knowledge_base: Option<PathBuf>,
        /// Keep the text as the file has it (like `[data] redact_on_ingest = false`).
        #[arg(long)]
        no_redact: bool,
    },
    /// Write cases as verl RL parquet (prompt = the patient's opening, reward_model.ground_truth = the case).
    ExportVerl {
        #[arg(long = "in", alias = "input")]
        input: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Only this split (train, validation, test); default: every case.
        #[arg(long)]
        split: Option<String>,
    },
    /// Convert between JSONL and parquet (by extension) for cases, samples or scored records. Cases are
    /// PHI-redacted on the way (an import from elsewhere) unless --no-redact.
    Export {
        #[arg(long = "in", alias = "input")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// What the file holds.
        #[arg(long, value_enum, default_value_t = Kind::Cases)]
        kind: Kind,
        /// Keep case text as the file has it (like `[data] redact_on_ingest = false`).
        #[arg(long)]
        no_redact: bool,
    },
    /// Cases per department and per split; without --in, the shipped cases and the knowledge base.
    Stats {
        #[arg(long = "in", alias = "input")]
        input: Option<PathBuf>,
        #[arg(long)]
        splits: Option<PathBuf>,
    },
    /// List the shipped recipes, or print one (`spar train --recipe NAME` runs it from any folder).
    Recipes {
        /// The recipe to print.
        name: Option<String>,
    },
    /// Write the scripted expert's gold consultations (JSONL: case_id, split, turns) for SFT, from PHI-redacted
    /// cases unless --no-redact, with an audit manifest next to the file (OUT.audit.json).
    Expert {
        #[arg(long = "in", alias = "input")]
        input: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Only this split (train, validation, test); default: every case.
        #[arg(long)]
        split: Option<String>,
        /// Quote the cases as the file has them (like `[data] redact_on_ingest = false`).
        #[arg(long)]
        no_redact: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Cases,
    Samples,
    Scored,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Generate { n, seed, out } => {
            let (cases, splits) = generate::write_dataset(&out, n, seed)?;
            println!(
                "wrote {} cases ({} diagnoses) to {}; splits: train {}, validation {}, test {}",
                cases.len(),
                cases
                    .iter()
                    .map(|c| &c.diagnosis.icd10)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                out.join("cases.jsonl").display(),
                splits.train.len(),
                splits.validation.len(),
                splits.test.len()
            );
        }
        Command::Validate { input, splits } => {
            validate(&input_or_shipped(input)?, splits.as_deref())?
        }
        Command::ImportVerl {
            input,
            out,
            no_redact,
        } => {
            let mut got = verl::import_verl(&input)?;
            if !no_redact {
                redact::redact_cases(&mut got.cases);
                got.prompts.iter_mut().for_each(redact::redact_prompt);
            }
            match (got.cases.is_empty(), got.prompts.is_empty()) {
                (_, true) => {
                    cases::write_cases(&out, &got.cases)?;
                    println!("imported {} cases into {}", got.cases.len(), out.display());
                }
                (true, false) => {
                    if Format::of(&out)? != Format::Jsonl {
                        bail!(
                            "{}: rows without a case become RL prompt records, written as JSONL",
                            out.display()
                        );
                    }
                    spar_core::fsio::write_jsonl(&out, &got.prompts)?;
                    println!(
                        "{} rows carry no case: wrote {} RL prompt records to {}",
                        got.prompts.len(),
                        got.prompts.len(),
                        out.display()
                    );
                }
                (false, false) => bail!(
                    "{}: {} rows carry a case and {} do not; split the file so each output holds one kind",
                    input.display(),
                    got.cases.len(),
                    got.prompts.len()
                ),
            }
        }
        Command::Import {
            input,
            out,
            format,
            knowledge_base,
            no_redact,
        } => import(&input, &out, &format, knowledge_base.as_deref(), no_redact)?,
        Command::Export {
            input,
            out,
            kind,
            no_redact,
        } => {
            let n = match kind {
                Kind::Cases => {
                    let mut c = cases::load_cases(&input)?;
                    if !no_redact {
                        redact::redact_cases(&mut c);
                    }
                    cases::write_cases(&out, &c)?;
                    c.len()
                }
                Kind::Samples => {
                    let s = wire::read_samples(&input)?;
                    wire::write_samples(&out, &s)?;
                    s.len()
                }
                Kind::Scored => {
                    let s = wire::read_scored(&input)?;
                    wire::write_scored(&out, &s)?;
                    s.len()
                }
            };
            println!("wrote {n} records to {}", out.display());
        }
        Command::Stats { input, splits } => {
            let shipped = input.is_none();
            stats(&input_or_shipped(input)?, splits.as_deref())?;
            if shipped {
                kb_stats()?;
            }
        }
        Command::Recipes { name } => recipes(name.as_deref())?,
        Command::ExportVerl { input, out, split } => {
            let (chosen, splits) = chosen_cases(input, split.as_deref())?;
            verl::export_verl(&out, &chosen, splits.as_ref())?;
            println!(
                "wrote {} cases as verl rows to {}",
                chosen.len(),
                out.display()
            );
        }
        Command::Expert {
            input,
            out,
            split,
            no_redact,
        } => {
            // The gold consultations quote every answer of every case: a training set like any other output, so it
            // gets a manifest of what it was made from.
            let source = input_or_shipped(input)?;
            let spec = spar_data::audit::AuditSpec::for_file("spar data expert", &out)
                .with_data(super::audit::files_of(&source));
            super::audit::run_audited(spec, || {
                let (mut chosen, splits) = chosen_cases(Some(source.clone()), split.as_deref())?;
                if !no_redact {
                    redact::redact_cases(&mut chosen);
                }
                let records = expert::gold_transcripts(&chosen, splits.as_ref());
                spar_core::fsio::write_jsonl(&out, &records)?;
                println!(
                    "wrote {} gold consultations to {}",
                    records.len(),
                    out.display()
                );
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// `spar data import`: every row's error on standard error, the mapped cases written (redacted unless
/// `no_redact`); an error when no row could be mapped.
fn import(
    input: &Path,
    out: &Path,
    format: &str,
    knowledge_base: Option<&Path>,
    no_redact: bool,
) -> anyhow::Result<()> {
    use spar_data::import::{ImportFormat, import};
    let format = ImportFormat::parse(format)?;
    // Said before the knowledge base loads: a typo in --in is the likelier mistake.
    spar_core::Error::must_exist(input)?;
    let kb = match knowledge_base {
        Some(p) => spar_data::kb::KnowledgeBase::load(p)?,
        None => spar_data::kb::KnowledgeBase::load_default()?,
    };
    let mut got = import(input, format, &kb)?;
    for e in &got.errors {
        eprintln!("{e}");
    }
    if got.cases.is_empty() {
        bail!(
            "{}: none of its {} rows could be mapped to a case (reasons above)",
            input.display(),
            got.rows
        );
    }
    if !no_redact {
        redact::redact_cases(&mut got.cases);
    }
    cases::write_cases(out, &got.cases)?;
    println!(
        "imported {} of {} rows into {}{}",
        got.cases.len(),
        got.rows,
        out.display(),
        match got.errors.len() {
            0 => String::new(),
            n => format!("; {n} rows could not be mapped (listed above)"),
        }
    );
    Ok(())
}

/// One line on the knowledge base `KnowledgeBase::load_default` reads.
fn kb_stats() -> anyhow::Result<()> {
    let kb = spar_data::kb::KnowledgeBase::load_default()?;
    println!(
        "knowledge base {}: version {}, {} ICD-10 codes, {} drugs, {} interaction rules, {} labs",
        kb.dir().display(),
        kb.version(),
        kb.icd10_len(),
        kb.drugs().len(),
        kb.interaction_rule_count(),
        kb.labs().len()
    );
    Ok(())
}

/// `spar data recipes [NAME]`: the shipped recipe names, or the text of one.
fn recipes(name: Option<&str>) -> anyhow::Result<()> {
    let names = spar_data::shipped::recipe_names()?;
    match name {
        None => {
            for n in &names {
                println!("{n}");
            }
        }
        Some(n) => {
            let path = spar_data::shipped::recipe_path(n)?.with_context(|| {
                format!("no shipped recipe `{n}` (shipped: {})", names.join(", "))
            })?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            print!("{text}");
        }
    }
    Ok(())
}

/// `--in`, else the shipped cases' folder.
fn input_or_shipped(input: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match input {
        Some(p) => Ok(p),
        None => Ok(spar_data::shipped::cases_dir()?),
    }
}

/// The cases of `input` (default: the shipped cases), only those of `split` when given, and their split file.
fn chosen_cases(
    input: Option<PathBuf>,
    split: Option<&str>,
) -> anyhow::Result<(Vec<spar_core::Case>, Option<Splits>)> {
    let input = input_or_shipped(input)?;
    let all = cases::load_cases(&input)?;
    let splits = find_splits(&input, None)?.map(|(_, sp)| sp);
    let chosen = match split {
        None => all,
        Some(s) => {
            let s = Split::parse(s)
                .with_context(|| format!("`{s}` is not train, validation or test"))?;
            splits
                .as_ref()
                .context("no splits.json next to the cases")?
                .select(&all, s)
        }
    };
    Ok((chosen, splits))
}

/// The split file to use: `explicit`, else `splits.json` beside the cases when it exists.
fn find_splits(cases: &Path, explicit: Option<&Path>) -> anyhow::Result<Option<(PathBuf, Splits)>> {
    let default = if cases.is_dir() {
        cases.join("splits.json")
    } else {
        cases.with_file_name("splits.json")
    };
    let path = explicit.map(Path::to_path_buf).unwrap_or(default);
    if explicit.is_none() && !path.exists() {
        return Ok(None);
    }
    Ok(Some((path.clone(), Splits::load(&path)?)))
}

fn validate(input: &Path, splits: Option<&Path>) -> anyhow::Result<()> {
    let files = if input.is_dir() {
        cases::case_files(input)?
    } else {
        vec![input.to_path_buf()]
    };
    let mut problems = Vec::new();
    let mut all = Vec::new();
    let mut origin: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    for f in &files {
        // JSONL: every line's problems, also after a line that does not parse; parquet: the first unreadable
        // row stops the file (its rows cannot be told apart once decoding fails), then every case's problems.
        let read = match Format::of(f)? {
            Format::Jsonl => cases::check_cases_jsonl(f),
            Format::Parquet => cases::read_cases_parquet(f).map(|c| {
                let p = cases::case_problems(&f.display().to_string(), &c);
                (c, p)
            }),
        };
        match read {
            Ok((c, found)) => {
                problems.extend(found);
                for (i, case) in c.iter().enumerate() {
                    match origin.get(&case.id) {
                        Some(prev) if prev != f => problems.push(spar_core::Error::Field {
                            file: f.display().to_string(),
                            line: i + 1,
                            field: "id".into(),
                            msg: format!(
                                "case id `{}` also appears in {}",
                                case.id,
                                prev.display()
                            ),
                        }),
                        _ => {
                            origin.insert(case.id.clone(), f.clone());
                        }
                    }
                }
                all.extend(c);
            }
            Err(e) => problems.push(e),
        }
    }
    if let Some((path, sp)) = find_splits(input, splits)?
        && let Err(e) = sp.check(&path.display().to_string(), &all)
    {
        problems.push(e);
    }
    for p in &problems {
        eprintln!("{p}");
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {}", problems.len(), input.display());
    }
    println!("{} cases in {} file(s): all valid", all.len(), files.len());
    Ok(())
}

fn stats(input: &Path, splits: Option<&Path>) -> anyhow::Result<()> {
    let all = cases::load_cases(input)?;
    let sp = find_splits(input, splits)?;
    let mut table: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for c in &all {
        let row = table.entry(c.department.as_str()).or_default();
        row[0] += 1;
        if let Some(s) = sp.as_ref().and_then(|(_, sp)| sp.split_of(&c.id)) {
            row[1 + s as usize] += 1;
        }
    }
    println!(
        "{:<24} {:>6} {:>6} {:>10} {:>6}",
        "department", "cases", "train", "validation", "test"
    );
    let mut tot = [0usize; 4];
    for (dept, r) in &table {
        println!(
            "{dept:<24} {:>6} {:>6} {:>10} {:>6}",
            r[0], r[1], r[2], r[3]
        );
        for (t, x) in tot.iter_mut().zip(r) {
            *t += x;
        }
    }
    println!(
        "{:<24} {:>6} {:>6} {:>10} {:>6}",
        "total", tot[0], tot[1], tot[2], tot[3]
    );
    let dx: std::collections::BTreeSet<&str> =
        all.iter().map(|c| c.diagnosis.icd10.as_str()).collect();
    println!(
        "{} departments, {} distinct diagnoses",
        table.len(),
        dx.len()
    );
    Ok(())
}
