//! Charts as server-rendered SVG (no script, no inline style: the console's
//! Content-Security-Policy refuses both): a bar chart and a line chart,
//! each with a y axis of round ticks, x labels, and a `<title>` per bar or
//! point that a browser shows on hover. Each chart has a fixed `viewBox`,
//! so it scales with its column and never shifts the layout.
//!
//! A chart is a picture of a table, never its only form: every page puts
//! the same numbers in a `table` beside it ([`figure`]). Text (labels,
//! titles) is escaped by `maud`; a capsule or tenant name cannot become
//! markup. Cost: O(points) string building, no I/O.

use maud::{Markup, html};

/// The drawing's size in SVG units (it scales to the page's width).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
/// Room for the y-axis labels, the x labels and the edges.
const LEFT: f64 = 76.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;
/// Most x labels drawn (the others are in the bars' titles and the table).
const MAX_X_LABELS: usize = 12;
/// Longest x label drawn, in characters (longer ones end with `…`).
const MAX_LABEL_CHARS: usize = 14;
/// Widest bar, SVG units (one bar must not fill the chart).
const MAX_BAR_WIDTH: f64 = 48.0;

/// One bar: its x label, its value (scaled), and its hover text.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Under the bar (shortened when long).
    pub label: String,
    /// Its height, in the chart's unit (e.g. micro-units).
    pub value: u64,
    /// Shown on hover (e.g. `"sha256:ab… · 1.250000"`).
    pub title: String,
}

/// One line of a line chart: a CSS class (its colour) and its points as
/// (x index, value, hover text).
#[derive(Debug, Clone)]
pub struct Line {
    /// Its name, in the legend.
    pub name: String,
    /// The class of its `g` (e.g. `series-history`), styled in
    /// `console.css`.
    pub class: &'static str,
    /// (index into the x labels, value, hover text).
    pub points: Vec<(usize, u64, String)>,
}

/// The y axis: ticks from 0 to `top` in `step`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axis {
    /// The highest tick (≥ every value; ≥ 1).
    pub top: u64,
    /// The distance between ticks (1, 2 or 5 × a power of ten).
    pub step: u64,
}

impl Axis {
    /// Round ticks for values up to `max`: at most 5 steps of 1, 2 or 5 ×
    /// 10ⁿ, the top tick the first at or above `max`.
    pub fn for_max(max: u64) -> Self {
        if max == 0 {
            return Self { top: 1, step: 1 };
        }
        let rough = max.div_ceil(5).max(1);
        let mut power: u64 = 1;
        while power.saturating_mul(10) <= rough {
            power = power.saturating_mul(10);
        }
        let step = [1u64, 2, 5, 10]
            .iter()
            .map(|m| power.saturating_mul(*m))
            .find(|s| *s >= rough)
            .unwrap_or(rough);
        let top = max.div_ceil(step).saturating_mul(step);
        Self { top, step }
    }

    /// The ticks' values, 0 first.
    pub fn ticks(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut t = 0u64;
        while t <= self.top && out.len() <= 10 {
            out.push(t);
            match t.checked_add(self.step) {
                Some(n) => t = n,
                None => break,
            }
        }
        out
    }

    /// The y coordinate of `value` (0 at the bottom of the plot, `top` at
    /// its top).
    pub fn y(&self, value: u64) -> f64 {
        let plot = HEIGHT - TOP - BOTTOM;
        let share = (value as f64 / self.top as f64).clamp(0.0, 1.0);
        HEIGHT - BOTTOM - share * plot
    }
}

/// `label` cut to `max` characters (with `…`).
fn short(label: &str, max: usize) -> String {
    if label.chars().count() <= max {
        label.to_owned()
    } else {
        let cut: String = label.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Width of one character of an axis label (11 px system font), SVG units.
const CHAR_WIDTH: f64 = 6.4;
/// Fewest characters a label is cut to before labels are thinned instead.
const MIN_LABEL_CHARS: usize = 6;

/// How the x labels fit under `n` bands of `band` units: (every how many
/// bands one is drawn, its most characters). Labels are first cut to fit
/// their band (down to [`MIN_LABEL_CHARS`]); if they still do not fit,
/// only every k-th is drawn. Never more than [`MAX_X_LABELS`].
fn label_fit(labels: &[&str], band: f64) -> (usize, usize) {
    let n = labels.len();
    let longest = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .min(MAX_LABEL_CHARS);
    let fits = ((band - 4.0) / CHAR_WIDTH).floor().max(0.0) as usize;
    let at_least = n.div_ceil(MAX_X_LABELS).max(1);
    if fits >= longest.min(MIN_LABEL_CHARS) {
        return (at_least, longest.min(fits).max(1));
    }
    let chars = longest.clamp(1, MIN_LABEL_CHARS.max(1));
    let needed = (chars as f64 * CHAR_WIDTH + 4.0) / band.max(1.0);
    (at_least.max(needed.ceil() as usize), chars)
}

/// One decimal place is enough for SVG coordinates.
fn at(v: f64) -> String {
    format!("{v:.1}")
}

/// The axes, the y ticks with their labels (`unit` formats a value) and
/// the x labels centred on `n` bands.
fn frame(axis: Axis, x_labels: &[&str], unit: fn(u64) -> String) -> Markup {
    let n = x_labels.len().max(1);
    let band = (WIDTH - LEFT - RIGHT) / n as f64;
    let (every, chars) = label_fit(x_labels, band);
    html! {
        g.grid {
            @for t in axis.ticks() {
                line x1=(at(LEFT)) x2=(at(WIDTH - RIGHT)) y1=(at(axis.y(t))) y2=(at(axis.y(t))) {}
            }
        }
        g.axis {
            line x1=(at(LEFT)) x2=(at(LEFT)) y1=(at(TOP)) y2=(at(HEIGHT - BOTTOM)) {}
            line x1=(at(LEFT)) x2=(at(WIDTH - RIGHT)) y1=(at(HEIGHT - BOTTOM)) y2=(at(HEIGHT - BOTTOM)) {}
            @for t in axis.ticks() {
                text.tick x=(at(LEFT - 6.0)) y=(at(axis.y(t) + 4.0)) text-anchor="end" { (unit(t)) }
            }
            @for (i, label) in x_labels.iter().enumerate() {
                @if i % every == 0 {
                    text.label x=(at(LEFT + band * (i as f64 + 0.5))) y=(at(HEIGHT - BOTTOM + 16.0))
                        text-anchor="middle" { (short(label, chars)) }
                }
            }
        }
    }
}

/// A bar chart of `bars` (in order) titled `title` (the SVG's accessible
/// name); `unit` formats the y ticks. No bars: the axes and "No data".
pub fn bars(title: &str, bars: &[Bar], unit: fn(u64) -> String) -> Markup {
    let axis = Axis::for_max(bars.iter().map(|b| b.value).max().unwrap_or(0));
    let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
    let band = (WIDTH - LEFT - RIGHT) / bars.len().max(1) as f64;
    let width = (band * 0.7).clamp(1.0, MAX_BAR_WIDTH);
    html! {
        svg.chart-svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            (frame(axis, &labels, unit))
            @if bars.is_empty() {
                text.empty x=(at(LEFT + (WIDTH - LEFT - RIGHT) / 2.0)) y=(at(HEIGHT / 2.0)) text-anchor="middle" { "No data" }
            }
            g.bars {
                @for (i, b) in bars.iter().enumerate() {
                    @let y = axis.y(b.value);
                    rect.bar x=(at(LEFT + band * (i as f64 + 0.5) - width / 2.0)) y=(at(y))
                        width=(at(width)) height=(at(HEIGHT - BOTTOM - y)) data-value=(b.value) {
                        title { (b.title) }
                    }
                }
            }
        }
    }
}

/// A line chart over `x_labels` (e.g. days) of `lines`, titled `title`;
/// `unit` formats the y ticks. A point is a circle with its `<title>`;
/// consecutive points of a line are joined.
pub fn lines(title: &str, x_labels: &[String], lines: &[Line], unit: fn(u64) -> String) -> Markup {
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(0);
    let axis = Axis::for_max(max);
    let labels: Vec<&str> = x_labels.iter().map(String::as_str).collect();
    let band = (WIDTH - LEFT - RIGHT) / x_labels.len().max(1) as f64;
    let x = |i: usize| LEFT + band * (i as f64 + 0.5);
    let empty = lines.iter().all(|l| l.points.is_empty());
    html! {
        svg.chart-svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            (frame(axis, &labels, unit))
            @if empty {
                text.empty x=(at(LEFT + (WIDTH - LEFT - RIGHT) / 2.0)) y=(at(HEIGHT / 2.0)) text-anchor="middle" { "No data" }
            }
            @for line in lines {
                g class=(line.class) {
                    @if line.points.len() > 1 {
                        polyline fill="none" points=(line.points.iter()
                            .map(|(i, v, _)| format!("{},{}", at(x(*i)), at(axis.y(*v))))
                            .collect::<Vec<_>>()
                            .join(" ")) {}
                    }
                    @for (i, v, hover) in &line.points {
                        circle.point cx=(at(x(*i))) cy=(at(axis.y(*v))) r="3" data-value=(v) {
                            title { (hover) }
                        }
                    }
                }
            }
        }
        @if lines.len() > 1 {
            ul.legend {
                @for line in lines {
                    li class=(line.class) { span.swatch aria-hidden="true" {} (line.name) }
                }
            }
        }
    }
}

/// A `figure.chart#id` holding a chart and the table of its numbers, with
/// `caption` as its `figcaption`.
pub fn figure(id: &str, caption: &str, chart: Markup, table: Markup) -> Markup {
    html! {
        figure.chart id=(id) {
            figcaption { (caption) }
            (chart)
            div.table-wrap { (table) }
        }
    }
}

/// Micro-units as a short axis label: `1.25`, `0.0005`, `0`.
pub fn money_tick(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let frac = micros % 1_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: u64) -> Bar {
        Bar {
            label: label.into(),
            value,
            title: format!("{label}: {value}"),
        }
    }

    /// The `attr="…"` values of every `<tag` in `svg`, in order.
    fn attrs(svg: &str, tag: &str, attr: &str) -> Vec<f64> {
        svg.split(&format!("<{tag} "))
            .skip(1)
            .filter_map(|s| {
                let start = s.find(&format!(" {attr}=\""))? + attr.len() + 3;
                let end = s[start..].find('"')? + start;
                s[start..end].parse().ok()
            })
            .collect()
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(Axis::for_max(0), Axis { top: 1, step: 1 });
        assert_eq!(Axis::for_max(1), Axis { top: 1, step: 1 });
        assert_eq!(Axis::for_max(7), Axis { top: 8, step: 2 });
        assert_eq!(Axis::for_max(100), Axis { top: 100, step: 20 });
        assert_eq!(
            Axis::for_max(1_234_567),
            Axis {
                top: 1_500_000,
                step: 500_000
            }
        );
        for max in [3u64, 9, 11, 99, 101, 4_999, 123_456_789, u64::MAX / 3] {
            let a = Axis::for_max(max);
            assert!(a.top >= max, "{max}: {a:?}");
            assert!(a.ticks().len() <= 7, "{max}: {a:?}");
            let mantissa = a.step / 10u64.pow(a.step.ilog10());
            assert!([1, 2, 5].contains(&mantissa), "{max}: {a:?}");
        }
        assert_eq!(Axis::for_max(u64::MAX).top, u64::MAX);
    }

    #[test]
    fn bars_scale_to_the_top_tick() {
        let svg = bars(
            "costs",
            &[bar("a", 100), bar("b", 50), bar("c", 0)],
            money_tick,
        )
        .into_string();
        let heights = attrs(&svg, "rect", "height");
        let plot = HEIGHT - TOP - BOTTOM;
        assert_eq!(heights.len(), 3, "{svg}");
        assert!((heights[0] - plot).abs() < 0.11, "{heights:?}");
        assert!((heights[1] - plot / 2.0).abs() < 0.11, "{heights:?}");
        assert!(heights[2].abs() < 0.11, "{heights:?}");
        // Every bar carries its raw value and a hover title.
        assert!(svg.contains(r#"data-value="50""#));
        assert_eq!(svg.matches("<title>").count(), 4, "{svg}");
        assert!(!svg.contains("No data"));
    }

    #[test]
    fn labels_and_titles_are_escaped() {
        let hostile = r#"<script>alert("x")</script>&"#;
        let svg = bars("t<", &[bar(hostile, 3)], money_tick).into_string();
        assert!(!svg.contains("<script"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(svg.contains("<title>t&lt;</title>"), "{svg}");
        let svg = lines(
            "l",
            &[hostile.to_owned()],
            &[Line {
                name: hostile.into(),
                class: "series-history",
                points: vec![(0, 1, hostile.into())],
            }],
            money_tick,
        )
        .into_string();
        assert!(!svg.contains("<script"), "{svg}");
    }

    #[test]
    fn empty_data_draws_axes_and_says_so() {
        let svg = bars("nothing", &[], money_tick).into_string();
        assert!(svg.contains("No data"), "{svg}");
        assert!(!svg.contains("<rect"), "{svg}");
        assert!(svg.contains("<line"), "axes: {svg}");
        let svg = lines("nothing", &[], &[], money_tick).into_string();
        assert!(svg.contains("No data"), "{svg}");
        assert!(!svg.contains("<circle"), "{svg}");
    }

    #[test]
    fn one_point_is_a_circle_without_a_line() {
        let svg = lines(
            "one",
            &["2026-11-01".into()],
            &[Line {
                name: "history".into(),
                class: "series-history",
                points: vec![(0, 5, "2026-11-01: 5".into())],
            }],
            money_tick,
        )
        .into_string();
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(!svg.contains("<polyline"), "{svg}");
        let cy = attrs(&svg, "circle", "cy");
        assert!((cy[0] - TOP).abs() < 0.11, "the maximum is the top: {cy:?}");
        // One bar is not wider than the cap.
        let svg = bars("one", &[bar("a", 1)], money_tick).into_string();
        assert!(attrs(&svg, "rect", "width")[0] <= MAX_BAR_WIDTH);
    }

    #[test]
    fn many_labels_are_thinned() {
        let many: Vec<Bar> = (0..31).map(|d| bar(&format!("day-{d}"), d)).collect();
        let svg = bars("month", &many, money_tick).into_string();
        assert_eq!(svg.matches("<rect").count(), 31);
        let drawn = svg.matches(r#"class="label""#).count();
        assert!((8..=MAX_X_LABELS).contains(&drawn), "{drawn}");
        assert!(short("sha256:0123456789abcdef", 8).ends_with('…'));
        assert_eq!(short("sha256:0123456789abcdef", 8).chars().count(), 8);
    }

    #[test]
    fn labels_fit_their_bands() {
        // Few wide bands: every label, cut to its band.
        let long = ["a-long-capsule-name"; 4];
        assert_eq!(label_fit(&long, 138.0), (1, MAX_LABEL_CHARS));
        // Narrow bands: labels cut, down to the minimum…
        let (every, chars) = label_fit(&long, 60.0);
        assert_eq!(every, 1);
        assert!(chars as f64 * CHAR_WIDTH <= 60.0 && chars >= MIN_LABEL_CHARS);
        // …then thinned so that drawn labels never overlap.
        let days: Vec<String> = (0..90).map(|d| format!("2026-{d:05}")).collect();
        let days: Vec<&str> = days.iter().map(String::as_str).collect();
        let band = 552.0 / 90.0;
        let (every, chars) = label_fit(&days, band);
        assert!(
            chars as f64 * CHAR_WIDTH <= band * every as f64,
            "{every} {chars}"
        );
        assert!(90usize.div_ceil(every) <= MAX_X_LABELS);
        assert_eq!(label_fit(&[], 552.0).0, 1);
    }

    #[test]
    fn money_ticks_are_short() {
        assert_eq!(money_tick(0), "0");
        assert_eq!(money_tick(2_000_000), "2");
        assert_eq!(money_tick(1_250_000), "1.25");
        assert_eq!(money_tick(500), "0.0005");
    }
}
