//! Report charts: grouped bar charts, each written as a PNG and an SVG side by side. Every chart in a report is a
//! [`BarChart`]: stage scores, departments, acuity strata, HealthBench themes and axes, before / after comparisons.
/// The chart text (a compiled-in font): `spar-plot-text`.
pub use spar_plot_text as text;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::FontStyle as BackendFontStyle;
use std::path::{Path, PathBuf};
use text::{TextBackend, text_size};

/// Tableau 10: distinguishable, colour-blind tolerant, prints well in grey.
const PALETTE: [(u8, u8, u8); 10] = [
    (0x4E, 0x79, 0xA7),
    (0xF2, 0x8E, 0x2B),
    (0xE1, 0x57, 0x59),
    (0x76, 0xB7, 0xB2),
    (0x59, 0xA1, 0x4F),
    (0xED, 0xC9, 0x48),
    (0xB0, 0x7A, 0xA1),
    (0xFF, 0x9D, 0xA7),
    (0x9C, 0x75, 0x5F),
    (0xBA, 0xB0, 0xAC),
];

/// One bar per category (None: no value, e.g. a department without cases of that kind).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart: categories along x, one coloured bar per series within each category.
#[derive(Clone, Debug)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// Top of the y axis (scores in [0, 1] use 1.0).
    pub y_max: f64,
}

const TITLE_SIZE: f64 = 26.0;
const LABEL_SIZE: f64 = 17.0;
const VALUE_SIZE: f64 = 13.0;

impl BarChart {
    /// A chart of scores in [0, 1].
    pub fn scores(title: impl Into<String>, categories: Vec<String>, series: Vec<Series>) -> Self {
        BarChart {
            title: title.into(),
            y_label: "score".into(),
            categories,
            series,
            y_max: 1.0,
        }
    }

    /// Writes `<stem>.png` and `<stem>.svg` (each atomically) and returns their paths.
    pub fn write(&self, stem: &Path) -> Result<[PathBuf; 2]> {
        for (i, s) in self.series.iter().enumerate() {
            if s.values.len() != self.categories.len() {
                return Err(anyhow!(
                    "chart `{}`: series {i} `{}` has {} values for {} categories",
                    self.title,
                    s.name,
                    s.values.len(),
                    self.categories.len()
                ));
            }
        }
        let size = self.size();
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        let dir = png
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = png
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The PNG encoder picks its format from the extension, so the temp name keeps `.png`.
        let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
        let drawn = (|| -> Result<()> {
            let root = TextBackend::raster(BitMapBackend::new(&tmp, size)).into_drawing_area();
            self.draw(&root)
                .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
            root.present()
                .map_err(|e| anyhow!("encoding {}: {e}", png.display()))
        })();
        if let Err(e) = drawn.and_then(|_| {
            std::fs::rename(&tmp, &png).with_context(|| format!("writing {}", png.display()))
        }) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut out = String::new();
        {
            let root =
                TextBackend::vector(SVGBackend::with_string(&mut out, size)).into_drawing_area();
            self.draw(&root)
                .map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
            root.present()
                .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
        }
        spar_core::fsio::write_atomic(&svg, out.as_bytes())?;
        Ok([png, svg])
    }

    fn size(&self) -> (u32, u32) {
        let bars = self.categories.len() * self.series.len().max(1);
        let width = 140 + bars * 26 + self.categories.len() * 24;
        (width.clamp(760, 2400) as u32, 560)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let area = root.titled(
            &self.title,
            ("sans-serif", TITLE_SIZE)
                .into_font()
                .style(FontStyle::Bold)
                .color(&BLACK),
        )?;
        let (legend, plot) = area.split_vertically(34);
        self.draw_legend(&legend)?;
        let n = self.categories.len().max(1);
        let label_area = (2.0 * LABEL_SIZE * 1.1 + 18.0) as u32;
        let mut chart = ChartBuilder::on(&plot)
            .margin_left(12)
            .margin_right(24)
            .margin_top(8)
            .x_label_area_size(label_area)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..self.y_max * 1.07)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(6)
            .y_desc(self.y_label.as_str())
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", LABEL_SIZE))
            .axis_desc_style(("sans-serif", LABEL_SIZE))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;

        let k = self.series.len().max(1) as f64;
        let group = 0.8;
        let bar = group / k;
        let annotate = self.categories.len() * self.series.len() <= 20;
        for (j, s) in self.series.iter().enumerate() {
            let color = palette(j);
            let bars = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i, v)))
                .map(|(i, v)| {
                    let x0 = i as f64 - group / 2.0 + j as f64 * bar;
                    Rectangle::new(
                        [
                            (x0 + bar * 0.06, 0.0),
                            (x0 + bar * 0.94, v.clamp(0.0, self.y_max)),
                        ],
                        color.filled(),
                    )
                });
            chart.draw_series(bars)?;
            if annotate {
                let style = TextStyle::from(("sans-serif", VALUE_SIZE).into_font())
                    .color(&RGBColor(60, 60, 60))
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                let labels = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (i, v)))
                    .map(|(i, v)| {
                        let xc = i as f64 - group / 2.0 + (j as f64 + 0.5) * bar;
                        EmptyElement::at((xc, v.clamp(0.0, self.y_max)))
                            + Text::new(format!("{v:.2}"), (0, -3), style.clone())
                    });
                chart.draw_series(labels)?;
            }
        }

        // Category names under the bars, wrapped onto two lines or shortened when a slot is too narrow.
        let style = TextStyle::from(("sans-serif", LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        // backend_coord is in backend pixels; text drawn on `root` is relative to the root area's origin.
        let (rx, ry) = root.get_base_pixel();
        for (i, cat) in self.categories.iter().enumerate() {
            let left = chart.backend_coord(&(i as f64 - 0.5, 0.0));
            let right = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let slot = (right.0 - left.0 - 6).max(10) as u32;
            let center = chart.backend_coord(&(i as f64, 0.0));
            for (line_no, line) in fit_label(cat, slot, LABEL_SIZE).into_iter().enumerate() {
                let y = center.1 + 8 + (line_no as f64 * LABEL_SIZE * 1.1) as i32;
                root.draw(&Text::new(line, (center.0 - rx, y - ry), style.clone()))?;
            }
        }
        Ok(())
    }

    fn draw_legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let swatch = 14;
        let gap = 22;
        let widths: Vec<i32> = self
            .series
            .iter()
            .map(|s| swatch + 6 + text_size(&s.name, LABEL_SIZE, BackendFontStyle::Normal).0 as i32)
            .collect();
        let total: i32 = widths.iter().sum::<i32>() + gap * (widths.len() as i32 - 1).max(0);
        let (w, h) = area.dim_in_pixel();
        let mut x = ((w as i32 - total) / 2).max(8);
        let y = h as i32 / 2;
        let style = TextStyle::from(("sans-serif", LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (j, s) in self.series.iter().enumerate() {
            area.draw(&Rectangle::new(
                [(x, y - swatch / 2), (x + swatch, y + swatch / 2)],
                palette(j).filled(),
            ))?;
            area.draw(&Text::new(
                s.name.clone(),
                (x + swatch + 6, y),
                style.clone(),
            ))?;
            x += widths[j] + gap;
        }
        Ok(())
    }
}

fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Lays a category name into at most two lines of at most `width` pixels: as is, else split at the word break
/// that balances the lines best, else shortened with an ellipsis.
fn fit_label(label: &str, width: u32, size: f64) -> Vec<String> {
    let fits = |s: &str| text_size(s, size, BackendFontStyle::Normal).0 <= width;
    if fits(label) {
        return vec![label.to_string()];
    }
    let breaks: Vec<usize> = label
        .char_indices()
        .filter(|(_, c)| matches!(c, ' ' | '_' | '-' | '/' | ':'))
        .map(|(i, _)| i)
        .collect();
    let best = breaks
        .iter()
        .map(|&b| {
            let (a, rest) = label.split_at(b);
            let keep = rest.starts_with(['-', '/', ':']);
            let (a, b) = if keep {
                (format!("{a}{}", &rest[..1]), rest[1..].trim().to_string())
            } else {
                (a.trim().to_string(), rest[1..].trim().to_string())
            };
            let w = text_size(&a, size, BackendFontStyle::Normal)
                .0
                .max(text_size(&b, size, BackendFontStyle::Normal).0);
            (w, a, b)
        })
        .min_by_key(|(w, _, _)| *w);
    match best {
        Some((_, a, b)) => vec![shorten(&a, width, size), shorten(&b, width, size)],
        None => vec![shorten(label, width, size)],
    }
}

fn shorten(s: &str, width: u32, size: f64) -> String {
    if text_size(s, size, BackendFontStyle::Normal).0 <= width {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    for keep in (1..chars.len()).rev() {
        let t: String = chars[..keep].iter().collect::<String>() + "…";
        if text_size(&t, size, BackendFontStyle::Normal).0 <= width {
            return t;
        }
    }
    "…".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_wrap_then_shorten() {
        assert_eq!(fit_label("lab", 200, 17.0), vec!["lab"]);
        let two = fit_label("infectious disease", 110, 17.0);
        assert_eq!(two, vec!["infectious", "disease"]);
        let short = fit_label("otorhinolaryngology", 60, 17.0);
        assert_eq!(short.len(), 1);
        assert!(
            short[0].ends_with('…') && short[0].chars().count() < 19,
            "{short:?}"
        );
    }

    #[test]
    fn writes_png_and_svg_with_text() {
        let dir = tempfile::tempdir().unwrap();
        // SPAR_KEEP_CHARTS=DIR keeps the files for a look.
        let out = std::env::var_os("SPAR_KEEP_CHARTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().to_path_buf());
        let chart = BarChart::scores(
            "Per-department scores",
            vec![
                "cardiology".into(),
                "infectious disease".into(),
                "gastroenterology".into(),
            ],
            vec![
                Series {
                    name: "inquiry".into(),
                    values: vec![Some(0.8), Some(0.55), None],
                },
                Series {
                    name: "diagnosis".into(),
                    values: vec![Some(0.25), Some(1.0), Some(0.0)],
                },
            ],
        );
        let [png, svg] = chart.write(&out.join("dept")).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(svg).unwrap();
        for s in [
            "Per-department scores",
            "cardiology",
            "infectious",
            "disease",
            "inquiry",
            "0.55",
        ] {
            assert!(svg.contains(s), "svg lacks {s}");
        }
        assert_eq!(
            std::fs::read_dir(&out)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("tmp"))
                .count(),
            0
        );
        let bad = BarChart::scores(
            "x",
            vec!["a".into()],
            vec![Series {
                name: "s".into(),
                values: vec![],
            }],
        );
        assert!(
            bad.write(&out.join("bad"))
                .unwrap_err()
                .to_string()
                .contains("series 0")
        );
    }
}
