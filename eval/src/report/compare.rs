//! Before / after (or model A vs model B) comparison of two reports: `compare.md`, `compare.json` and charts.
//! Differences in setup (split, simulator, scorer, judge, case set) are listed as warnings, since they make the
//! numbers incomparable.
use super::EvalReport;
use super::charts::{safety_metrics, stage_categories, stage_values};
use super::markdown::{cell, num};
use crate::chart::{BarChart, Series};
use crate::consultation::EpisodeRecord;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use spar_core::fsio::write_atomic;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// One metric in both reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricDelta {
    pub metric: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// b - a.
    pub delta: Option<f64>,
}

impl MetricDelta {
    fn new(metric: impl Into<String>, a: Option<f64>, b: Option<f64>) -> Self {
        MetricDelta {
            metric: metric.into(),
            a,
            b,
            delta: a.zip(b).map(|(a, b)| b - a),
        }
    }
}

/// Per-case paired comparison of the composite score (cases scored in both reports).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub cases: usize,
    pub improved: usize,
    pub worse: usize,
    pub unchanged: usize,
    pub mean_delta: Option<f64>,
}

/// The comparison written by [`compare`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Labels of the two reports (e.g. "before" / "after").
    pub labels: [String; 2],
    pub policies: [String; 2],
    /// Stage, safety and factuality metrics.
    pub consultation: Vec<MetricDelta>,
    /// Composite score per department.
    pub departments: Vec<MetricDelta>,
    /// Composite score per seen / unseen diagnosis and per acuity.
    pub strata: Vec<MetricDelta>,
    pub paired: Option<Paired>,
    /// Overall, per theme and per axis.
    pub healthbench: Vec<MetricDelta>,
    /// Setup differences that make the numbers hard to compare.
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub charts: Vec<PathBuf>,
}

fn case_composites(eps: &[EpisodeRecord]) -> BTreeMap<&str, f64> {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for e in eps {
        if let Some(c) = e.composite() {
            let s = sums.entry(e.case_id.as_str()).or_default();
            s.0 += c;
            s.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

fn warnings(a: &EvalReport, b: &EvalReport) -> Vec<String> {
    let mut w = Vec::new();
    let (sa, sb) = (&a.setup, &b.setup);
    for (name, x, y) in [
        ("split", &sa.split, &sb.split),
        ("simulator", &sa.simulator, &sb.simulator),
        ("stage scorer", &sa.scorer, &sb.scorer),
        ("judge", &sa.judge, &sb.judge),
        ("fact verifier", &sa.verifier, &sb.verifier),
        (
            "HealthBench file",
            &sa.healthbench_file,
            &sb.healthbench_file,
        ),
    ] {
        if x != y && x.is_some() && y.is_some() {
            w.push(format!(
                "{name} differs: `{}` vs `{}`",
                x.as_deref().unwrap_or("-"),
                y.as_deref().unwrap_or("-")
            ));
        }
    }
    let ca: BTreeSet<&str> = a.episodes.iter().map(|e| e.case_id.as_str()).collect();
    let cb: BTreeSet<&str> = b.episodes.iter().map(|e| e.case_id.as_str()).collect();
    if !ca.is_empty() && !cb.is_empty() && ca != cb {
        w.push(format!(
            "case sets differ: {} cases only in A, {} only in B, {} in both",
            ca.difference(&cb).count(),
            cb.difference(&ca).count(),
            ca.intersection(&cb).count()
        ));
    }
    w
}

/// Compares report `a` with report `b` (deltas are b - a) and writes `compare.md`, `compare.json` and charts into
/// `dir`. `labels` name the two reports in tables and legends.
pub fn compare(
    a: &EvalReport,
    b: &EvalReport,
    labels: [&str; 2],
    dir: &Path,
) -> Result<Comparison> {
    let mut cmp = Comparison {
        labels: labels.map(String::from),
        policies: [a.policy.clone(), b.policy.clone()],
        warnings: warnings(a, b),
        ..Default::default()
    };
    if let (Some(ca), Some(cb)) = (&a.consultation, &b.consultation) {
        for ((name, x), y) in stage_categories()
            .into_iter()
            .zip(stage_values(&ca.overall))
            .zip(stage_values(&cb.overall))
        {
            cmp.consultation.push(MetricDelta::new(name, x, y));
        }
        for ((name, x), (_, y)) in safety_metrics(&ca.overall, &ca.by_acuity)
            .into_iter()
            .zip(safety_metrics(&cb.overall, &cb.by_acuity))
        {
            cmp.consultation.push(MetricDelta::new(name, x, y));
        }
        cmp.consultation.push(MetricDelta::new(
            "hallucination rate H",
            ca.overall.hallucination,
            cb.overall.hallucination,
        ));
        let depts: BTreeSet<&String> = ca
            .by_department
            .keys()
            .chain(cb.by_department.keys())
            .collect();
        for d in depts {
            cmp.departments.push(MetricDelta::new(
                d.clone(),
                ca.by_department.get(d).and_then(|g| g.composite),
                cb.by_department.get(d).and_then(|g| g.composite),
            ));
        }
        for (prefix, ma, mb) in [
            ("diagnosis", &ca.by_diagnosis, &cb.by_diagnosis),
            ("acuity", &ca.by_acuity, &cb.by_acuity),
        ] {
            let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for k in keys {
                cmp.strata.push(MetricDelta::new(
                    format!("{k} {prefix}"),
                    ma.get(k).and_then(|g| g.composite),
                    mb.get(k).and_then(|g| g.composite),
                ));
            }
        }
        let (pa, pb) = (case_composites(&a.episodes), case_composites(&b.episodes));
        let deltas: Vec<f64> = pa
            .iter()
            .filter_map(|(k, x)| pb.get(k).map(|y| y - x))
            .collect();
        if !deltas.is_empty() {
            cmp.paired = Some(Paired {
                cases: deltas.len(),
                improved: deltas.iter().filter(|d| **d > 1e-9).count(),
                worse: deltas.iter().filter(|d| **d < -1e-9).count(),
                unchanged: deltas.iter().filter(|d| d.abs() <= 1e-9).count(),
                mean_delta: Some(deltas.iter().sum::<f64>() / deltas.len() as f64),
            });
        }
    }
    if let (Some(ha), Some(hb)) = (&a.healthbench, &b.healthbench) {
        let (sa, sb) = (&ha.scores, &hb.scores);
        cmp.healthbench.push(MetricDelta::new(
            "overall",
            sa.overall.map(|s| s.mean),
            sb.overall.map(|s| s.mean),
        ));
        for (prefix, ma, mb) in [
            ("theme", &sa.themes, &sb.themes),
            ("axis", &sa.axes, &sb.axes),
        ] {
            let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            for k in keys {
                cmp.healthbench.push(MetricDelta::new(
                    format!("{prefix}: {k}"),
                    ma.get(k).map(|s| s.mean),
                    mb.get(k).map(|s| s.mean),
                ));
            }
        }
    }
    std::fs::create_dir_all(dir)?;
    cmp.charts = charts(&cmp, &dir.join("charts"))?;
    write_atomic(&dir.join("compare.json"), &serde_json::to_vec_pretty(&cmp)?)?;
    write_atomic(&dir.join("compare.md"), markdown(&cmp, dir).as_bytes())?;
    Ok(cmp)
}

fn pair_chart(
    title: &str,
    labels: &[String; 2],
    rows: &[MetricDelta],
    stem: &Path,
) -> Result<Vec<PathBuf>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let cats = rows.iter().map(|r| r.metric.replace('_', " ")).collect();
    let series = vec![
        Series {
            name: labels[0].clone(),
            values: rows.iter().map(|r| r.a).collect(),
        },
        Series {
            name: labels[1].clone(),
            values: rows.iter().map(|r| r.b).collect(),
        },
    ];
    Ok(BarChart::scores(title, cats, series).write(stem)?.to_vec())
}

fn charts(c: &Comparison, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    // H is "lower is better" and already shown as 1 - H among the safety metrics.
    let (stages, safety): (Vec<MetricDelta>, Vec<MetricDelta>) = c
        .consultation
        .iter()
        .filter(|m| m.metric != "hallucination rate H")
        .cloned()
        .partition(|m| stage_categories().contains(&m.metric));
    out.extend(pair_chart(
        "Consultation stage scores",
        &c.labels,
        &stages,
        &dir.join("compare_stages"),
    )?);
    out.extend(pair_chart(
        "Safety and factuality",
        &c.labels,
        &safety,
        &dir.join("compare_safety"),
    )?);
    if c.departments.len() > 1 {
        out.extend(pair_chart(
            "Composite score per department",
            &c.labels,
            &c.departments,
            &dir.join("compare_departments"),
        )?);
    }
    out.extend(pair_chart(
        "Composite score per stratum",
        &c.labels,
        &c.strata,
        &dir.join("compare_strata"),
    )?);
    out.extend(pair_chart(
        "HealthBench",
        &c.labels,
        &c.healthbench,
        &dir.join("compare_healthbench"),
    )?);
    Ok(out)
}

fn table(out: &mut String, title: &str, labels: &[String; 2], rows: &[MetricDelta]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(
        out,
        "| metric | {} | {} | Δ |\n|---|---:|---:|---:|",
        cell(&labels[0]),
        cell(&labels[1])
    );
    for r in rows {
        let delta = r.delta.map_or("–".to_string(), |d| format!("{d:+.3}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {delta} |",
            cell(&r.metric),
            num(r.a),
            num(r.b)
        );
    }
}

fn markdown(c: &Comparison, dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# spar evaluation: {} vs {}\n",
        cell(&c.labels[0]),
        cell(&c.labels[1])
    );
    let _ = writeln!(
        out,
        "- {}: `{}`\n- {}: `{}`",
        cell(&c.labels[0]),
        cell(&c.policies[0]),
        cell(&c.labels[1]),
        cell(&c.policies[1])
    );
    if !c.warnings.is_empty() {
        let _ = writeln!(out, "\n**Not like for like:**\n");
        for w in &c.warnings {
            let _ = writeln!(out, "- {}", cell(w));
        }
    }
    table(&mut out, "Consultations", &c.labels, &c.consultation);
    if let Some(p) = &c.paired {
        let _ = writeln!(
            out,
            "\nPer case ({} cases in both): composite improved in {}, worse in {}, unchanged in {}; mean change {}.",
            p.cases,
            p.improved,
            p.worse,
            p.unchanged,
            p.mean_delta.map_or("–".into(), |d| format!("{d:+.3}"))
        );
    }
    table(&mut out, "Strata (composite)", &c.labels, &c.strata);
    table(
        &mut out,
        "Departments (composite)",
        &c.labels,
        &c.departments,
    );
    table(&mut out, "HealthBench", &c.labels, &c.healthbench);
    let _ = writeln!(out);
    for p in c
        .charts
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
    {
        let rel = p.strip_prefix(dir).unwrap_or(p);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(out, "![{stem}]({})\n", rel.display());
    }
    out
}
