//! spar-plot-text: chart text that renders the same on every machine, system fonts or none (the GPU machine has
//! none). plotters' `ttf` feature finds fonts through fontconfig, so a machine without system fonts fails on the
//! first axis label; the workspace builds plotters without it. [`TextBackend`] wraps a plotters backend and lays
//! out (and, for bitmaps, rasterizes) text with a DejaVu Sans subset compiled into the binary (`assets/fonts`,
//! licence alongside). SVG keeps real `<text>` elements; only their measurement uses the font. Every chart of spar
//! (eval's charts, the trainer's metric plots and dashboard, spar ablate's curves) draws through it.
use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontStyle,
};
use std::sync::LazyLock;

static REGULAR: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../assets/fonts/DejaVuSans-subset.ttf"))
        .expect("bundled font parses")
});
static BOLD: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../assets/fonts/DejaVuSans-Bold-subset.ttf"))
        .expect("bundled font parses")
});

fn font_for(style: FontStyle) -> &'static FontRef<'static> {
    match style {
        FontStyle::Bold => &BOLD,
        _ => &REGULAR,
    }
}

/// Pixel scale of a plotters font size. plotters treats `size` as 1.24 em (its ttf and SVG backends both divide by
/// 1.24), so the same division keeps bitmap and SVG text the same size.
fn scale(font: &FontRef<'static>, size: f64) -> PxScale {
    let em = (size / 1.24) as f32;
    let upem = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(em * font.height_unscaled() / upem)
}

/// Width and height in pixels of `text` set in the bundled font at plotters size `size`.
pub fn text_size(text: &str, size: f64, style: FontStyle) -> (u32, u32) {
    let font = font_for(style);
    let scaled = font.as_scaled(scale(font, size));
    let mut width = 0.0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            width += scaled.kern(p, id);
        }
        width += scaled.h_advance(id);
        prev = Some(id);
    }
    (
        width.ceil().max(0.0) as u32,
        (scaled.ascent() - scaled.descent()).ceil() as u32,
    )
}

/// A plotters backend whose text is measured (always) and drawn (bitmaps only) with the bundled font.
pub struct TextBackend<B> {
    inner: B,
    /// The inner backend writes text as text (SVG); only measurement is ours.
    vector: bool,
}

impl<B: DrawingBackend> TextBackend<B> {
    /// For pixel backends: glyphs are rasterized here and blended into the inner backend.
    pub fn raster(inner: B) -> Self {
        TextBackend {
            inner,
            vector: false,
        }
    }

    /// For vector backends that emit text elements themselves (SVG).
    pub fn vector(inner: B) -> Self {
        TextBackend {
            inner,
            vector: true,
        }
    }
}

impl<B: DrawingBackend> DrawingBackend for TextBackend<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok(text_size(text, style.size(), style.style()))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        if self.vector {
            return self.inner.draw_text(text, style, pos);
        }
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let font = font_for(style.style());
        let px = scale(font, style.size());
        let scaled = font.as_scaled(px);
        let (width, height) = text_size(text, style.size(), style.style());
        let (width, height) = (width as i32, height as i32);
        // Anchor the layout box the way plotters' default text drawing does.
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.inner.get_size();
        let mut caret = 0.0f32;
        let mut prev = None;
        let mut result = Ok(());
        for c in text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(px, point(caret, scaled.ascent()));
            caret += scaled.h_advance(id);
            prev = Some(id);
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let inner = &mut self.inner;
            outline.draw(|gx, gy, coverage| {
                if result.is_err() || coverage <= 0.0 {
                    return;
                }
                let x = bounds.min.x as i32 + gx as i32 + dx;
                let y = bounds.min.y as i32 + gy as i32 + dy;
                let (x, y) = trans.transform(x, y);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && (x as u32) < w && (y as u32) < h {
                    let alpha = color.alpha * f64::from(coverage.min(1.0));
                    result = inner.draw_pixel(
                        (x, y),
                        BackendColor {
                            alpha,
                            rgb: color.rgb,
                        },
                    );
                }
            });
            if result.is_err() {
                break;
            }
        }
        result
    }
}

/// An axis tick's label for `value` on an axis that spans `lo..hi`: as many decimals as a tenth of the span
/// needs (steps 120..180 read "120", rewards 0.45..0.72 read "0.45"), and scientific notation where the values
/// are all tiny or huge (a log-prob mismatch of 1e-8 reads "1.0e-8", not "0.0" on every tick, as plotters'
/// default label did).
pub fn tick_label(value: f64, lo: f64, hi: f64) -> String {
    let magnitude = lo.abs().max(hi.abs());
    if magnitude > 0.0 && !(1e-3..1e6).contains(&magnitude) {
        return format!("{value:.1e}");
    }
    let step = (hi - lo).abs() / 10.0;
    let decimals = if step > 0.0 && step.is_finite() {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        2
    };
    // -0.00 reads as a bug on an axis.
    let text = format!("{value:.decimals$}");
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wider_text_measures_wider_and_bold_is_wider() {
        let (a, ha) = text_size("inquiry", 20.0, FontStyle::Normal);
        let (b, hb) = text_size("inquiry coverage", 20.0, FontStyle::Normal);
        assert!(a > 20 && b > a, "{a} {b}");
        assert_eq!(ha, hb);
        let (bold, _) = text_size("inquiry coverage", 20.0, FontStyle::Bold);
        assert!(bold > b);
        let (big, hbig) = text_size("inquiry", 40.0, FontStyle::Normal);
        assert!(big > a && hbig > ha);
    }

    #[test]
    fn tick_labels_resolve_the_axis_span() {
        assert_eq!(tick_label(120.0, 118.0, 182.0), "120");
        assert_eq!(tick_label(0.45, 0.44, 0.73), "0.45");
        assert_eq!(tick_label(0.5, 0.0, 1.0), "0.5");
        // A series of ~1e-8 and a flat zero beside it: every tick distinct, none "0.0".
        assert_eq!(tick_label(2.5e-8, -1e-9, 3e-8), "2.5e-8");
        assert_eq!(tick_label(-0.0001, -0.2, 0.2), "0.00");
        assert_eq!(tick_label(3.0e7, 0.0, 5.0e7), "3.0e7");
        assert_eq!(tick_label(1.0, 0.5, 1.5), "1.0");
    }
}
