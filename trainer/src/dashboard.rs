//! One picture of a run (`plots/dashboard.png|svg`, drawn with the per-metric plots): RL reward, the RL rounds'
//! stage scores, the held-out curve, the share of zero-variance groups, the KL term with the rollout/trainer
//! log-prob mismatch, entropy, the round's time line (colocated: playing and learning; actors apart: the
//! learner's waiting, learning and weight sending next to the actors' busy seconds) and generation throughput,
//! on one x axis (the run's step: SFT steps, then RL rounds).
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// Panels: title and the metric keys drawn in it.
const PANELS: [(&str, &[&str]); 8] = [
    ("RL reward (mean R)", &["rl/reward_mean"]),
    (
        "RL stage scores G_k",
        &["rl/G_inquiry", "rl/G_ddx", "rl/G_lab", "rl/G_diag"],
    ),
    (
        "held-out (greedy)",
        &[
            "eval/reward",
            "eval/G_inquiry",
            "eval/G_ddx",
            "eval/G_lab",
            "eval/G_diag",
        ],
    ),
    ("zero-variance groups", &["rl/zero_variance_groups"]),
    (
        "KL to the reference, rollout mismatch",
        &["rl/kl", "rl/mismatch_mean"],
    ),
    ("entropy (nats/token)", &["rl/entropy"]),
    (
        "round time line (s)",
        &[
            "time/play_s",
            "time/learner_wait_s",
            "time/learn_s",
            "time/publish_s",
            "time/actor_busy_s",
        ],
    ),
    ("generated tokens/s", &["rl/gen_tokens_per_s"]),
];

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Draws the dashboard of `series` into `dir` (PNG and SVG); None when no panel has data (a run with no RL yet).
pub fn draw_dashboard(dir: &Path, series: &Series) -> Result<Option<[PathBuf; 2]>> {
    if !PANELS.iter().any(|(_, keys)| {
        keys.iter()
            .any(|k| series.get(*k).is_some_and(|p| !p.is_empty()))
    }) {
        return Ok(None);
    }
    let png = dir.join("dashboard.png");
    let svg = dir.join("dashboard.svg");
    draw(
        spar_plot_text::TextBackend::raster(BitMapBackend::new(&png, (1900, 860)))
            .into_drawing_area(),
        series,
    )
    .with_context(|| format!("drawing {}", png.display()))?;
    draw(
        spar_plot_text::TextBackend::vector(SVGBackend::new(&svg, (1900, 860))).into_drawing_area(),
        series,
    )
    .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(Some([png, svg]))
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    series: &Series,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    // The x range of every panel: the RL rounds and held-out points (SFT steps carry none of these keys).
    let xs = PANELS
        .iter()
        .flat_map(|(_, keys)| keys.iter())
        .filter_map(|k| series.get(*k))
        .flatten()
        .map(|p| p.0);
    let (x0, x1) = crate::plot::bounds(xs);
    for ((title, keys), cell) in PANELS.iter().zip(area.split_evenly((2, 4))) {
        let lines: Vec<(&str, &Vec<(f64, f64)>)> = keys
            .iter()
            .filter_map(|k| series.get(*k).filter(|p| !p.is_empty()).map(|p| (*k, p)))
            .collect();
        let (y0, y1) = crate::plot::bounds(lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
        let mut chart = ChartBuilder::on(&cell)
            .caption(
                if lines.is_empty() {
                    format!("{title}: no data")
                } else {
                    title.to_string()
                },
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| spar_plot_text::tick_label(*v, x0, x1))
            .y_label_formatter(&|v| spar_plot_text::tick_label(*v, y0, y1))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        for (i, (key, points)) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let label = key.rsplit('/').next().unwrap_or(key).to_string();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            if points.len() <= 60 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
        }
        if lines.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(err)?;
        }
    }
    area.present().map_err(err)?;
    Ok(())
}
