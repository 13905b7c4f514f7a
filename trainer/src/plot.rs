//! `spar plot RUN_DIR`: one line chart per metric of `metrics.jsonl`, as PNG and SVG under `RUN_DIR/plots/`, and
//! the run's dashboard (`crate::dashboard`) when every metric is drawn. Text is set in the font compiled into
//! `spar-plot-text`, so plots render on a machine without system fonts (the GPU machine has none).
use crate::metrics::read_series;
use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use spar_plot_text::TextBackend;
use std::path::{Path, PathBuf};

/// Draws every series (or those whose key starts with one of `only`, when given). Returns the files written.
pub fn plot_run(run_dir: &Path, only: &[String]) -> Result<Vec<PathBuf>> {
    let series = read_series(&run_dir.join("metrics.jsonl"))?;
    let out_dir = run_dir.join("plots");
    std::fs::create_dir_all(&out_dir)?;
    let mut written = Vec::new();
    for (key, points) in &series {
        if !only.is_empty() && !only.iter().any(|p| key.starts_with(p.as_str())) {
            continue;
        }
        if points.is_empty() {
            continue;
        }
        let stem = key.replace(['/', ' ', ':'], "_");
        let png = out_dir.join(format!("{stem}.png"));
        let svg = out_dir.join(format!("{stem}.svg"));
        draw(
            TextBackend::raster(BitMapBackend::new(&png, (720, 420))).into_drawing_area(),
            key,
            points,
        )
        .with_context(|| format!("drawing {}", png.display()))?;
        draw(
            TextBackend::vector(SVGBackend::new(&svg, (720, 420))).into_drawing_area(),
            key,
            points,
        )
        .with_context(|| format!("drawing {}", svg.display()))?;
        written.push(png);
        written.push(svg);
    }
    if only.is_empty()
        && let Some(files) = crate::dashboard::draw_dashboard(&out_dir, &series)?
    {
        written.extend(files);
    }
    if written.is_empty() {
        bail!(
            "{}: no metric to plot",
            run_dir.join("metrics.jsonl").display()
        );
    }
    Ok(written)
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    points: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let (x0, x1) = bounds(points.iter().map(|p| p.0));
    let (y0, y1) = bounds(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
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
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?;
    if points.len() <= 60 {
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
            .map_err(err)?;
    }
    area.present().map_err(err)?;
    Ok(())
}

/// Range with a margin; a flat series gets a unit-wide window.
pub(crate) fn bounds(it: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in it {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let m = (hi - lo) * 0.05;
    (lo - m, hi + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The title is drawn (dark pixels in the band above the chart) with no system font: plotters is built
    /// without its fontconfig-backed `ttf` feature, so only the compiled-in font can set it.
    #[test]
    fn a_plot_sets_its_text_without_system_fonts() {
        let (w, h) = (720u32, 420u32);
        let mut buf = vec![0u8; (w * h * 3) as usize];
        {
            let area = TextBackend::raster(BitMapBackend::with_buffer(&mut buf, (w, h)))
                .into_drawing_area();
            draw(
                area,
                "rl/reward_mean",
                &[(0.0, 0.1), (1.0, 0.4), (2.0, 0.3)],
            )
            .unwrap();
        }
        // The caption band: the top 40 rows, where nothing but the title is drawn.
        let dark = buf[..(40 * w * 3) as usize]
            .chunks(3)
            .filter(|p| p.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 50, "{dark} dark pixels in the title band");
    }
}
