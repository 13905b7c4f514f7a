//! `report.md`: the report for people. Numbers are the ones in `report.json`, rounded to three decimals.
use super::EvalReport;
use super::charts::{STAGE_LABELS, safety_metrics};
use crate::consultation::GroupSummary;
use crate::healthbench::score::Stat;
use spar_core::Stage;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

pub(crate) fn num(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.3}"))
}

fn stat(s: &Stat) -> String {
    format!("{:.3} ± {:.3} (n = {})", s.mean, s.bootstrap_std, s.n)
}

/// Markdown-safe table cell (case text and tags may hold `|`).
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn image(out: &mut String, dir: &Path, charts: &[PathBuf], stem: &str, alt: &str) {
    if let Some(p) = charts.iter().find(|p| {
        p.file_stem().is_some_and(|s| s == stem) && p.extension().is_some_and(|e| e == "png")
    }) {
        let rel = p.strip_prefix(dir).unwrap_or(p);
        let _ = writeln!(out, "\n![{alt}]({})\n", rel.display());
    }
}

fn group_table(out: &mut String, title: &str, groups: &BTreeMap<String, GroupSummary>) {
    if groups.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| group | cases | episodes | failed | {} | composite | red flags acted on | H |",
        STAGE_LABELS.join(" | ")
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|{}---:|---:|---:|",
        "---:|".repeat(4)
    );
    for (k, g) in groups {
        let stages: Vec<String> = Stage::ALL.iter().map(|s| num(g.stages.get(*s))).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(k),
            g.cases,
            g.episodes,
            g.failed,
            stages.join(" | "),
            num(g.composite),
            num(g.red_flag_acted),
            num(g.hallucination)
        );
    }
}

/// Consultations whose policy or simulator failed (after the client's retries): left out of every mean, listed
/// here with the reason so an outage is told apart from a bad model. Reasons are PHI-redacted: an endpoint's
/// error body can quote the conversation.
fn failed_table(out: &mut String, episodes: &[crate::EpisodeRecord]) {
    let failed: Vec<_> = episodes.iter().filter(|e| e.end.is_failure()).collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Failed consultations\n\n{} consultation(s) could not be played to the end and are not scored.\n",
        failed.len()
    );
    let _ = writeln!(out, "| case | end | sample | reason |\n|---|---|---:|---|");
    for e in failed {
        let reason = e.error.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&e.case_id),
            e.end.name(),
            e.sample_idx,
            cell(&spar_core::phi::redact(reason))
        );
    }
}

pub(super) fn report(r: &EvalReport, dir: &Path, charts: &[PathBuf]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# spar evaluation: {}\n", cell(&r.policy));
    let _ = writeln!(out, "Created {}.\n", r.created);
    let s = &r.setup;
    let rows = [
        ("split", &s.split),
        ("cases", &s.cases),
        ("simulator", &s.simulator),
        ("stage scorer", &s.scorer),
        ("judge", &s.judge),
        ("claim extractor", &s.extractor),
        ("fact verifier", &s.verifier),
        ("HealthBench file", &s.healthbench_file),
    ];
    let _ = writeln!(out, "| setting | value |\n|---|---|");
    for (k, v) in rows {
        if let Some(v) = v {
            let _ = writeln!(out, "| {k} | `{}` |", cell(v));
        }
    }
    if let Some(c) = &r.consultation {
        let g = &c.overall;
        let _ = writeln!(out, "\n## Consultations\n");
        let _ = writeln!(
            out,
            "{} cases, {} consultations ({} failed and not scored). Stage scores are in [0, 1]: inquiry = weighted \
             checklist coverage, ddx = rank-aware differential, lab = weighted F1 of tests, diagnosis = hierarchical \
             ICD-10 match. An unparseable stage output scores 0.\n",
            g.cases, g.episodes, g.failed
        );
        let _ = writeln!(out, "| stage | score | unparseable |\n|---|---:|---:|");
        for (st, label) in Stage::ALL.iter().zip(STAGE_LABELS) {
            let _ = writeln!(
                out,
                "| {label} | {} | {} |",
                num(g.stages.get(*st)),
                c.parse_failures.get(st).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "| **composite** | **{}** | |", num(g.composite));
        image(&mut out, dir, charts, "stages", "stage scores");
        let _ = writeln!(out, "### Safety and factuality\n");
        let _ = writeln!(out, "| metric | value |\n|---|---:|");
        for (k, v) in safety_metrics(g, &c.by_acuity) {
            let _ = writeln!(out, "| {k} | {} |", num(v));
        }
        if let Some(h) = &c.hallucination {
            let _ = writeln!(
                out,
                "\nHallucination rate H = {} over {} claims ({} supported, {} refuted, {} uncertain; Refuted weighs 1, \
                 Uncertain 0.5); mean per consultation {}; {} consultations made no checkable claim.",
                num(h.rate),
                h.counts.total(),
                h.counts.supported,
                h.counts.refuted,
                h.counts.uncertain,
                num(h.per_response_mean),
                h.responses_without_claims
            );
        }
        image(&mut out, dir, charts, "safety", "safety metrics");
        group_table(
            &mut out,
            "Seen and unseen diagnoses (test split is by diagnosis)",
            &c.by_diagnosis,
        );
        group_table(
            &mut out,
            "By acuity (urgent: a red flag is present)",
            &c.by_acuity,
        );
        image(&mut out, dir, charts, "strata", "scores by stratum");
        group_table(&mut out, "By department", &c.by_department);
        image(
            &mut out,
            dir,
            charts,
            "departments",
            "scores per department",
        );
        failed_table(&mut out, &r.episodes);
        let _ = writeln!(out, "\n### How consultations ended\n");
        let ends: Vec<String> = c
            .end_reasons
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            out,
            "{}; {} with a reply cut at the token limit; mean history-taking turns {}.",
            ends.join(", "),
            c.truncated_episodes,
            num(c.mean_inquiry_turns)
        );
    }
    if let Some(hb) = &r.healthbench {
        let sc = &hb.scores;
        let _ = writeln!(out, "\n## HealthBench\n");
        let _ = writeln!(
            out,
            "{} examples, {} failed (not scored). Score per example = points of criteria met / positive points; the \
             mean is clipped to [0, 1] ({}). Judge: `{}`.\n",
            hb.examples,
            hb.failed,
            match sc.clip {
                crate::healthbench::score::ClipMode::Mean => "clip of the mean, as HealthBench",
                crate::healthbench::score::ClipMode::Example =>
                    "each example clipped before the mean",
            },
            cell(&hb.judge)
        );
        let _ = writeln!(
            out,
            "**Overall: {}**\n",
            sc.overall.as_ref().map_or("–".into(), stat)
        );
        for (title, map) in [("Theme", &sc.themes), ("Axis", &sc.axes)] {
            if map.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | score ± bootstrap std (n) |\n|---|---:|",
                title.to_lowercase()
            );
            for (k, v) in map {
                let _ = writeln!(out, "| {} | {} |", cell(k), stat(v));
            }
            let _ = writeln!(out);
        }
        image(
            &mut out,
            dir,
            charts,
            "healthbench_themes",
            "HealthBench by theme",
        );
        image(
            &mut out,
            dir,
            charts,
            "healthbench_axes",
            "HealthBench by axis",
        );
    }
    out
}
