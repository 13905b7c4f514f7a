//! The ablation's curves: per metric one chart, one line per arm (the mean over seeds) with its 95% bootstrap
//! band, as PNG and SVG (plotters, drawn like spar-trainer's run plots: same sizes, mesh and margins; text in the
//! compiled-in font of `spar-plot-text`, so no system font is needed).
use crate::aggregate::{Curve, CurvePoint};
use anyhow::{Context, Result};
use plotters::prelude::*;
use spar_plot_text::TextBackend;
use std::path::{Path, PathBuf};

/// Draws every curve with at least one arm into `dir` (`<key>.png` / `.svg`, `/` as `_`). Returns the files.
pub fn draw_curves(dir: &Path, curves: &[Curve]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for c in curves.iter().filter(|c| !c.arms.is_empty()) {
        let stem = c.key.replace(['/', ' ', ':'], "_");
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        draw(
            TextBackend::raster(BitMapBackend::new(&png, (820, 460))).into_drawing_area(),
            c,
        )
        .with_context(|| format!("drawing {}", png.display()))?;
        draw(
            TextBackend::vector(SVGBackend::new(&svg, (820, 460))).into_drawing_area(),
            c,
        )
        .with_context(|| format!("drawing {}", svg.display()))?;
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

fn draw<DB: DrawingBackend>(area: DrawingArea<DB, plotters::coord::Shift>, c: &Curve) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    area.fill(&WHITE).map_err(err)?;
    let all: Vec<&CurvePoint> = c.arms.iter().flat_map(|(_, p)| p.iter()).collect();
    let (x0, x1) = bounds(all.iter().map(|p| p.x));
    let (y0, y1) = bounds(
        all.iter()
            .flat_map(|p| [p.lo, p.hi, p.mean])
            .filter(|v| v.is_finite()),
    );
    let mut chart = ChartBuilder::on(&area)
        .caption(
            format!("{} (mean, 95% CI over seeds)", c.label),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("RL round")
        .x_label_formatter(&|v| spar_plot_text::tick_label(*v, x0, x1))
        .y_label_formatter(&|v| spar_plot_text::tick_label(*v, y0, y1))
        .y_desc(c.key.as_str())
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for (i, (arm, points)) in c.arms.iter().enumerate() {
        let (r, g, b) = TAB10[i % TAB10.len()];
        let color = RGBColor(r, g, b).to_rgba();
        if points.len() > 1 {
            let mut band: Vec<(f64, f64)> = points.iter().map(|p| (p.x, p.hi)).collect();
            band.extend(points.iter().rev().map(|p| (p.x, p.lo)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.18).filled(),
                )))
                .map_err(err)?;
        } else {
            chart
                .draw_series(points.iter().map(|p| {
                    PathElement::new(vec![(p.x, p.lo), (p.x, p.hi)], color.stroke_width(2))
                }))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.x, p.mean)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(arm.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if points.len() <= 60 {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.x, p.mean), 3, color.filled())),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

/// Line colours (matplotlib's tab10), one per arm in spec order.
const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Range with a margin; a flat series gets a unit-wide window.
fn bounds(it: impl Iterator<Item = f64>) -> (f64, f64) {
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
