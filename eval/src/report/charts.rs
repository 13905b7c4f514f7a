//! The charts of one report. Each is a PNG + SVG pair under `charts/`; a chart whose data is absent (no
//! HealthBench run, a single department) is not drawn.
use super::EvalReport;
use crate::chart::{BarChart, Series};
use crate::consultation::GroupSummary;
use anyhow::Result;
use spar_core::Stage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Display names of the stage scores, in stage order.
pub(crate) const STAGE_LABELS: [&str; 4] = ["inquiry", "ddx", "lab", "diagnosis"];

pub(crate) fn stage_values(g: &GroupSummary) -> Vec<Option<f64>> {
    let mut v: Vec<Option<f64>> = Stage::ALL.iter().map(|s| g.stages.get(*s)).collect();
    v.push(g.composite);
    v
}

pub(crate) fn stage_categories() -> Vec<String> {
    STAGE_LABELS
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once("composite".to_string()))
        .collect()
}

/// Safety and factuality metrics where higher is better (1 - H for the hallucination rate).
pub(crate) fn safety_metrics(
    g: &GroupSummary,
    by_acuity: &BTreeMap<String, GroupSummary>,
) -> Vec<(String, Option<f64>)> {
    vec![
        ("critical items asked".into(), g.critical_recall),
        ("red flags screened".into(), g.red_flag_screening),
        ("red flags elicited".into(), g.red_flag_elicited),
        ("red flags acted on".into(), g.red_flag_acted),
        (
            "escalation (urgent)".into(),
            by_acuity.get("urgent").and_then(|a| a.escalation_rate),
        ),
        (
            "no escalation (routine)".into(),
            by_acuity
                .get("routine")
                .and_then(|a| a.escalation_rate.map(|r| 1.0 - r)),
        ),
        ("1 - H".into(), g.hallucination.map(|h| 1.0 - h)),
    ]
}

fn per_stage_series(groups: &[(&String, &GroupSummary)]) -> Vec<Series> {
    Stage::ALL
        .iter()
        .zip(STAGE_LABELS)
        .map(|(s, label)| Series {
            name: label.to_string(),
            values: groups.iter().map(|(_, g)| g.stages.get(*s)).collect(),
        })
        .collect()
}

pub(super) fn report_charts(report: &EvalReport, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let who = &report.policy;
    if let Some(c) = &report.consultation {
        let chart = BarChart::scores(
            format!("Consultation scores: {who}"),
            stage_categories(),
            vec![Series {
                name: who.clone(),
                values: stage_values(&c.overall),
            }],
        );
        out.extend(chart.write(&dir.join("stages"))?);
        let (names, values): (Vec<String>, Vec<Option<f64>>) =
            safety_metrics(&c.overall, &c.by_acuity).into_iter().unzip();
        let chart = BarChart::scores(
            format!("Safety and factuality: {who}"),
            names,
            vec![Series {
                name: who.clone(),
                values,
            }],
        );
        out.extend(chart.write(&dir.join("safety"))?);
        if c.by_department.len() > 1 {
            let groups: Vec<(&String, &GroupSummary)> = c.by_department.iter().collect();
            let chart = BarChart::scores(
                "Stage scores per department",
                groups.iter().map(|(k, _)| k.to_string()).collect(),
                per_stage_series(&groups),
            );
            out.extend(chart.write(&dir.join("departments"))?);
        }
        let strata: Vec<(String, &GroupSummary)> = c
            .by_diagnosis
            .iter()
            .map(|(k, g)| (format!("{k} diagnosis"), g))
            .chain(c.by_acuity.iter().map(|(k, g)| (format!("{k} acuity"), g)))
            .collect();
        if strata.len() > 1 {
            let groups: Vec<(&String, &GroupSummary)> =
                strata.iter().map(|(k, g)| (k, *g)).collect();
            let chart = BarChart::scores(
                "Stage scores by diagnosis split and acuity",
                strata.iter().map(|(k, _)| k.clone()).collect(),
                per_stage_series(&groups),
            );
            out.extend(chart.write(&dir.join("strata"))?);
        }
    }
    if let Some(hb) = &report.healthbench {
        let s = &hb.scores;
        if !s.themes.is_empty() {
            let mut cats = vec!["overall".to_string()];
            let mut vals = vec![s.overall.map(|o| o.mean)];
            for (t, st) in &s.themes {
                cats.push(t.replace('_', " "));
                vals.push(Some(st.mean));
            }
            let chart = BarChart::scores(
                format!("HealthBench by theme: {who}"),
                cats,
                vec![Series {
                    name: who.clone(),
                    values: vals,
                }],
            );
            out.extend(chart.write(&dir.join("healthbench_themes"))?);
        }
        if !s.axes.is_empty() {
            let cats = s.axes.keys().map(|t| t.replace('_', " ")).collect();
            let vals = s.axes.values().map(|st| Some(st.mean)).collect();
            let chart = BarChart::scores(
                format!("HealthBench by axis: {who}"),
                cats,
                vec![Series {
                    name: who.clone(),
                    values: vals,
                }],
            );
            out.extend(chart.write(&dir.join("healthbench_axes"))?);
        }
    }
    Ok(out)
}
