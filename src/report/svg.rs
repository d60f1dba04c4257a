//! A line chart as inline SVG, hand-written rather than drawn with `plotters`: the axes must
//! label the data's exact minimum and maximum (what a reader compares between runs), which a
//! general plotting library's tick picker does not promise, and the page stays free of font
//! and system dependencies.

use super::html::escape;
use std::fmt::Write;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Thin and faint: the raw values under their smoothed curve.
    Raw,
    /// Solid: a smoothed curve, or a plain series.
    Solid,
    /// Solid with a dot (and a hover title) per point: sparse series such as validations.
    Dots,
}

impl Style {
    fn class(self) -> &'static str {
        match self {
            Style::Raw => "raw",
            Style::Solid => "solid",
            Style::Dots => "dots",
        }
    }
}

pub struct Series {
    /// The run it belongs to, kept on the polyline (`data-run`) so the page can be inspected.
    pub run: String,
    /// Its legend entry; `None` keeps it out of the legend (a raw curve under its smoothed one).
    pub legend: Option<String>,
    pub color: &'static str,
    pub style: Style,
    /// (x, y), in x order; non-finite values are the caller's to drop.
    pub points: Vec<(f64, f64)>,
}

pub struct Chart<'a> {
    /// The `id` of the `<svg>` element.
    pub id: &'a str,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
}

/// A labelled position on an axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: String,
    /// The data's minimum or maximum (labelled exactly, drawn bold).
    pub extreme: bool,
}

// Geometry in SVG user units (the page scales the whole picture to its width).
const WIDTH: f64 = 720.0;
const PLOT_HEIGHT: f64 = 240.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
/// Below the plot: tick labels and the x-axis name.
const BOTTOM: f64 = 44.0;
const LEGEND_ROW: f64 = 16.0;

/// A value as the y axis labels it: four significant digits, fixed-point for 0.01 <= |v| < 1e5
/// (decimals = 3 - floor(log10 |v|), none below 0), otherwise `{:.3e}`; zero is "0".
pub fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if fixed_point(v.abs()) {
        let a = v.abs();
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.3e}")
    }
}

/// Whether a magnitude reads better in fixed point than in scientific notation.
fn fixed_point(a: f64) -> bool {
    (1e-2..1e5).contains(&a)
}

/// A value as the x axis (training steps, whole numbers) labels it.
pub fn fmt_step(v: f64) -> String {
    format!("{}", v.round() as i64)
}

/// Ticks over the data range [lo, hi]: both extremes, labelled by `extreme_label`, and round
/// values (1, 2 or 5 × 10^k apart) strictly between them, kept a tenth of the range away from the
/// extremes so that labels do not collide. `integer` keeps round values whole (steps).
pub fn ticks(lo: f64, hi: f64, integer: bool, extreme_label: fn(f64) -> String) -> Vec<Tick> {
    let mut out = vec![Tick {
        value: lo,
        label: extreme_label(lo),
        extreme: true,
    }];
    if hi > lo {
        let range = hi - lo;
        let mut step = nice_step(range / 5.0);
        if integer {
            step = step.max(1.0);
        }
        let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
        for k in first..=last {
            let v = k as f64 * step;
            if v - lo > 0.1 * range && hi - v > 0.1 * range {
                out.push(Tick {
                    value: v,
                    label: if integer {
                        fmt_step(v)
                    } else {
                        round_label(v, step, lo.abs().max(hi.abs()))
                    },
                    extreme: false,
                });
            }
        }
        out.push(Tick {
            value: hi,
            label: extreme_label(hi),
            extreme: true,
        });
    }
    out
}

/// The smallest of 1, 2, 5 × 10^k that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A round value with the decimals its step needs (0.5 apart: one decimal), or in scientific
/// notation without trailing zeros (`8e-4`, `1.5e-4`) where the axis's extremes use it.
fn round_label(v: f64, step: f64, scale: f64) -> String {
    if fixed_point(scale) {
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    } else {
        let s = format!("{v:.3e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exp}")
    }
}

/// The range of the finite coordinates picked by `f`, or `None` without any.
fn range(series: &[Series], f: impl Fn(&(f64, f64)) -> f64) -> Option<(f64, f64)> {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(&f))
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A linear map from [lo, hi] onto [a, b] pixels; a single value maps to the middle.
struct Scale {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        if self.hi > self.lo {
            self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)
        } else {
            (self.a + self.b) / 2.0
        }
    }
}

impl Chart<'_> {
    /// The chart as one `<svg>` element; `None` when no series has a point.
    pub fn render(&self) -> Option<String> {
        let (x_lo, x_hi) = range(&self.series, |p| p.0)?;
        let (y_lo, y_hi) = range(&self.series, |p| p.1)?;
        let legend: Vec<(&str, &str)> = self
            .series
            .iter()
            .filter_map(|s| s.legend.as_deref().map(|l| (l, s.color)))
            .collect();
        let height = TOP + PLOT_HEIGHT + BOTTOM + legend.len() as f64 * LEGEND_ROW + 4.0;
        // The data fills the plot but for a margin, so the extremes' points are not on the frame.
        let (x0, x1) = (LEFT + 6.0, WIDTH - RIGHT - 6.0);
        let (y0, y1) = (TOP + PLOT_HEIGHT - 6.0, TOP + 6.0);
        let sx = Scale {
            lo: x_lo,
            hi: x_hi,
            a: x0,
            b: x1,
        };
        let sy = Scale {
            lo: y_lo,
            hi: y_hi,
            a: y0,
            b: y1,
        };
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg id="{}" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img"><title>{}</title>"#,
            escape(self.id),
            escape(self.title)
        );
        let (plot_bottom, plot_right) = (TOP + PLOT_HEIGHT, WIDTH - RIGHT);
        let _ = write!(
            s,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{}" height="{PLOT_HEIGHT}"/>"#,
            plot_right - LEFT
        );
        for t in ticks(y_lo, y_hi, false, fmt_value) {
            let y = sy.at(t.value);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{plot_right}" y2="{y:.1}"/><text class="{}" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                tick_class(&t),
                LEFT - 4.0,
                y + 3.5,
                escape(&t.label)
            );
        }
        for t in ticks(x_lo, x_hi, true, fmt_step) {
            let x = sx.at(t.value);
            let _ = write!(
                s,
                r#"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{plot_bottom}"/><text class="{}" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                tick_class(&t),
                plot_bottom + 14.0,
                escape(&t.label)
            );
        }
        let _ = write!(
            s,
            r#"<text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (LEFT + plot_right) / 2.0,
            plot_bottom + 32.0,
            escape(self.x_label)
        );
        let _ = write!(
            s,
            r#"<text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + PLOT_HEIGHT / 2.0,
            escape(self.y_label)
        );
        for series in &self.series {
            draw_series(&mut s, series, &sx, &sy);
        }
        for (i, (label, color)) in legend.iter().enumerate() {
            let y = plot_bottom + BOTTOM + i as f64 * LEGEND_ROW + 8.0;
            let _ = write!(
                s,
                r#"<line class="key" x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{color}"/><text class="legend" x="{}" y="{:.1}">{}</text>"#,
                LEFT + 22.0,
                LEFT + 28.0,
                y + 4.0,
                escape(label)
            );
        }
        s.push_str("</svg>");
        Some(s)
    }
}

fn tick_class(t: &Tick) -> &'static str {
    if t.extreme { "tick extreme" } else { "tick" }
}

fn draw_series(s: &mut String, series: &Series, sx: &Scale, sy: &Scale) {
    let pts: Vec<(f64, f64)> = series
        .points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|&(x, y)| (x, y))
        .collect();
    if pts.is_empty() {
        return;
    }
    let coords: Vec<String> = pts
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx.at(x), sy.at(y)))
        .collect();
    let _ = write!(
        s,
        r#"<polyline class="line {}" data-run="{}" fill="none" stroke="{}" points="{}"/>"#,
        series.style.class(),
        escape(&series.run),
        series.color,
        coords.join(" ")
    );
    if series.style == Style::Dots {
        for &(x, y) in &pts {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: step {}, {}</title></circle>"#,
                sx.at(x),
                sy.at(y),
                series.color,
                escape(&series.run),
                fmt_step(x),
                fmt_value(y)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_with_four_significant_digits() {
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(5.123456), "5.123");
        assert_eq!(fmt_value(-5.123456), "-5.123");
        assert_eq!(fmt_value(12.3456), "12.35");
        assert_eq!(fmt_value(0.0123456), "0.01235");
        assert_eq!(fmt_value(0.00123456), "1.235e-3");
        assert_eq!(fmt_value(12345.6), "12346");
        assert_eq!(fmt_value(3e-4), "3.000e-4");
        assert_eq!(fmt_value(123456.0), "1.235e5");
        assert_eq!(fmt_step(1500.0), "1500");
    }

    #[test]
    fn ticks_label_both_extremes_and_round_values_between() {
        let t = ticks(2.137, 5.861, false, fmt_value);
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        // Range 3.724: steps of 1 (the first 1-2-5 value above 3.724 / 5); 3 and 5 are more
        // than a tenth of the range from the ends, so they stay.
        assert_eq!(labels, ["2.137", "3", "4", "5", "5.861"]);
        assert!(t[0].extreme && t[4].extreme && !t[1].extreme);
        // Values ascend.
        assert!(t.windows(2).all(|w| w[0].value < w[1].value));
    }

    #[test]
    fn round_values_close_to_an_extreme_are_dropped() {
        // 2.0 is 0.05 from the minimum, under a tenth of the range (1.9): dropped.
        let t = ticks(1.95, 3.85, false, fmt_value);
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["1.950", "2.5", "3.0", "3.5", "3.850"]);
    }

    #[test]
    fn step_ticks_are_whole_and_a_constant_has_one_tick() {
        let t = ticks(1.0, 6.0, true, fmt_step);
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["1", "2", "3", "4", "5", "6"]);
        // A long run's steps stay whole numbers, never 2e5.
        let t = ticks(10.0, 1_000_000.0, true, fmt_step);
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            ["10", "200000", "400000", "600000", "800000", "1000000"]
        );
        let one = ticks(4.25, 4.25, false, fmt_value);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].label, "4.250");
    }

    #[test]
    fn tiny_values_get_scientific_labels() {
        let t = ticks(3e-6, 3e-4, false, fmt_value);
        assert_eq!(t.first().unwrap().label, "3.000e-6");
        assert_eq!(t.last().unwrap().label, "3.000e-4");
        // Range 2.97e-4: steps of 1e-4; 3e-4 is the maximum itself, so 1e-4 and 2e-4 lie inside.
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["3.000e-6", "1e-4", "2e-4", "3.000e-4"]);
        // The learning rate's warm-up: 1e-3 reads as its neighbours do.
        let t = ticks(2e-5, 1e-3, false, fmt_value);
        let labels: Vec<&str> = t.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            ["2.000e-5", "2e-4", "4e-4", "6e-4", "8e-4", "1.000e-3"]
        );
    }

    #[test]
    fn chart_escapes_text_and_draws_one_polyline_per_series() {
        let chart = Chart {
            id: "c",
            title: "a<b",
            x_label: "step",
            y_label: "loss & more",
            series: vec![
                Series {
                    run: "r\"1".into(),
                    legend: Some("<run 1>".into()),
                    color: "#000",
                    style: Style::Solid,
                    points: vec![(1.0, 2.0), (2.0, 1.0)],
                },
                Series {
                    run: "r2".into(),
                    legend: None,
                    color: "#111",
                    style: Style::Dots,
                    points: vec![(1.0, 3.0), (2.0, f64::NAN)],
                },
            ],
        };
        let svg = chart.render().unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(
            svg.matches("<circle").count(),
            1,
            "the NaN point is not drawn"
        );
        assert!(svg.contains("<title>a&lt;b</title>"));
        assert!(svg.contains(">loss &amp; more</text>"));
        assert!(svg.contains(">&lt;run 1&gt;</text>"));
        assert!(svg.contains(r#"data-run="r&quot;1""#));
        assert!(!svg.contains("<run 1>"));
        // Extremes of y over both series: 1 and 3.
        assert!(svg.contains(">1.000</text>") && svg.contains(">3.000</text>"));
        let empty = Chart {
            series: vec![],
            ..chart
        };
        assert!(empty.render().is_none());
    }
}
