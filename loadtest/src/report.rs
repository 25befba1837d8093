//! Turns one load-test run into a terminal summary and a self-contained HTML page.
//!
//! Plots come from `plotters` 0.3.7 with default features off and only
//! `svg_backend` + `line_series`. Leaving out `ttf`/`ab_glyph` makes plotters use
//! its "naive" font module: text extents are estimated from character counts and
//! the SVG backend emits labels as `<text font-family="sans-serif">` for the
//! browser to render. So no font file is read and no fontconfig/freetype is
//! linked, at build or run time, and the page needs nothing from the network.

use std::fmt::Write as _;
use std::ops::Range;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub title: String,
    pub command: String,
    /// RFC 3339 UTC, formatted by the caller so this module needs no clock or time crate.
    pub started_at: String,
    pub machine: serde_json::Value,
    pub verdicts: Vec<Verdict>,
    pub figures: Vec<Figure>,
    pub charts: Vec<Chart>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub target: String,
    pub what: String,
    pub measured: String,
    /// `None` = not tested; `measured` should then say why.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    /// serde_json writes NaN/inf as `null`; without this a report holding a gap
    /// could be written but never read back.
    #[serde(deserialize_with = "null_as_nan")]
    pub points: Vec<(f64, f64)>,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
    let raw = Vec::<(Option<f64>, Option<f64>)>::deserialize(d)?;
    let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    Ok(raw.into_iter().map(|(x, y)| (nan(x), nan(y))).collect())
}

/// Untested verdicts do not fail a run; only a tested, missed target does.
pub fn all_met(r: &Report) -> bool {
    r.verdicts.iter().all(|v| v.met != Some(false))
}

fn result_word(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not tested",
    }
}

/// A newline inside a cell would break the column alignment.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

pub fn summary_table(r: &Report) -> String {
    let mut out = format!("{} [{}] {}\n", one_line(&r.title), r.scenario, r.started_at);
    if r.verdicts.is_empty() {
        out.push_str("no verdicts\n");
    } else {
        let mut rows = vec![["what", "target", "measured", "result"].map(String::from)];
        rows.extend(r.verdicts.iter().map(|v| {
            let met = result_word(v.met).to_string();
            [
                one_line(&v.what),
                one_line(&v.target),
                one_line(&v.measured),
                met,
            ]
        }));
        let w: [usize; 4] = std::array::from_fn(|i| {
            rows.iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        });
        rows.insert(1, w.map(|n| "-".repeat(n)));
        for row in &rows {
            let cells: Vec<_> = row.iter().zip(w).map(|(c, n)| format!("{c:<n$}")).collect();
            let _ = writeln!(out, "{}", cells.join(" | ").trim_end());
        }
        let overall = if all_met(r) {
            "all tested targets met"
        } else {
            "SOME TARGETS NOT MET"
        };
        let _ = writeln!(out, "overall: {overall}");
    }
    if !r.figures.is_empty() {
        out.push_str("figures:\n");
        let nw = r
            .figures
            .iter()
            .map(|f| f.name.chars().count())
            .max()
            .unwrap_or(0);
        for f in &r.figures {
            let _ = writeln!(out, "  {:<nw$} : {}", one_line(&f.name), one_line(&f.value));
        }
    }
    out
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;\
word-break:break-all}.met{color:#fff;background:#2e7d32;font-weight:bold}\
.notmet{color:#fff;background:#c62828;font-weight:bold}.untested{color:#fff;background:#888}\
.muted{color:#666}figure{margin:0 0 1.5em}svg{max-width:100%;height:auto}";

fn key_value_table<'a>(h: &mut String, rows: impl IntoIterator<Item = (&'a str, &'a str)>) {
    h.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table>\n");
}

pub fn render_html(r: &Report) -> String {
    let (title, muted) = (esc(&r.title), "<p class=\"muted\">");
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{CSS}</style></head><body>\n<h1>{title}</h1>\n\
         {muted}scenario <b>{}</b> &middot; started {}</p>\n<pre>{}</pre>\n<h2>Machine</h2>\n",
        esc(&r.scenario),
        esc(&r.started_at),
        esc(&r.command)
    );
    match &r.machine {
        serde_json::Value::Object(m) if !m.is_empty() => {
            // Strings show without JSON quotes; anything nested stays compact JSON.
            let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), Into::into);
            let vals: Vec<(&String, String)> = m.iter().map(|(k, v)| (k, text(v))).collect();
            key_value_table(&mut h, vals.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        serde_json::Value::Null | serde_json::Value::Object(_) => {
            h += &format!("{muted}not recorded</p>\n")
        }
        other => h += &format!("<pre>{}</pre>\n", esc(&other.to_string())),
    }
    h.push_str("<h2>Verdicts</h2>\n");
    if r.verdicts.is_empty() {
        h += &format!("{muted}none</p>\n");
    } else {
        let (cls, word) = match all_met(r) {
            true => ("met", "all tested targets met"),
            false => ("notmet", "some targets NOT met"),
        };
        h += &format!("<p><span class=\"{cls}\">&nbsp;{word}&nbsp;</span></p>\n<table><tr>");
        h.push_str("<th>what</th><th>target</th><th>measured</th><th>result</th></tr>");
        for v in &r.verdicts {
            let cls = match v.met {
                Some(true) => "met",
                Some(false) => "notmet",
                None => "untested",
            };
            let cells = [&v.what, &v.target, &v.measured].map(|s| format!("<td>{}</td>", esc(s)));
            let word = result_word(v.met);
            h += &format!("<tr>{}<td class=\"{cls}\">{word}</td></tr>", cells.concat());
        }
        h.push_str("</table>\n");
    }
    if !r.figures.is_empty() {
        h.push_str("<h2>Figures</h2>\n");
        key_value_table(&mut h, r.figures.iter().map(|f| (&*f.name, &*f.value)));
    }
    if !r.charts.is_empty() {
        h.push_str("<h2>Charts</h2>\n");
    }
    for c in &r.charts {
        match chart_svg(c) {
            Ok(svg) => h += &format!("<figure>{svg}</figure>\n"),
            // One broken chart should not cost the rest of the report.
            Err(e) => {
                let (t, e) = (esc(&c.title), esc(&e.to_string()));
                h += &format!("<p class=\"notmet\">chart {t} failed: {e}</p>\n");
            }
        }
    }
    if !r.notes.is_empty() {
        h.push_str("<h2>Notes</h2>\n<ul>");
        for n in &r.notes {
            h += &format!("<li>{}</li>", esc(n));
        }
        h.push_str("</ul>\n");
    }
    h + "</body></html>\n"
}

/// Beyond this magnitude `hi - lo` can overflow to infinity and plotters' pixel
/// mapping yields NaN, so such values are treated as missing, like NaN.
const MAX_ABS: f64 = 1e150;

/// Runs of consecutive plottable points: a NaN/inf leaves a visible gap instead
/// of a line bridging over missing data.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let ok = |v: f64| v.is_finite() && v.abs() <= MAX_ABS;
    let mut segs = vec![Vec::new()];
    for &(x, y) in points {
        match (ok(x) && ok(y), segs.last_mut()) {
            (true, Some(seg)) => seg.push((x, y)),
            (false, Some(seg)) if !seg.is_empty() => segs.push(Vec::new()),
            _ => {}
        }
    }
    segs.retain(|s| !s.is_empty());
    segs
}

/// `pad` is the fraction of the span added on each side. A zero span (one point,
/// constant series) is widened because plotters needs a non-empty range.
fn axis_range(vals: impl Iterator<Item = f64>, pad: f64) -> Range<f64> {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    let p = match hi - lo {
        span if span > 0.0 => span * pad,
        _ if lo == 0.0 => 1.0,
        _ => lo.abs() * 0.1,
    };
    // Latencies and rates are never negative; padding should not invent a negative axis.
    (if lo >= 0.0 { (lo - p).max(0.0) } else { lo - p })..hi + p
}

/// plotters' own f64 labels never use exponents, so 1e9 msg/s would print ten
/// digits and overflow the label area.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".into();
    } else if !(1e-4..1e6).contains(&a) {
        return format!("{v:.2e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{v:.decimals$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

fn chart_svg(c: &Chart) -> Result<String, Box<dyn std::error::Error>> {
    let segs: Vec<_> = c.series.iter().map(|s| segments(&s.points)).collect();
    let all = || segs.iter().flatten().flatten();
    let (xr, yr) = (
        axis_range(all().map(|p| p.0), 0.0),
        axis_range(all().map(|p| p.1), 0.05),
    );
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (960, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&c.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(xr, yr)?;
        chart
            .configure_mesh()
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .light_line_style(RGBColor(238, 238, 238))
            .max_light_lines(4)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for (i, (s, ss)) in c.series.iter().zip(&segs).enumerate() {
            let style = Palette99::pick(i).stroke_width(2);
            let label = match ss.is_empty() {
                true => format!("{} (no data)", s.name),
                false => s.name.clone(),
            };
            // The legend entry hangs off one draw call; an empty one keeps the
            // entry even when the series has no plottable point or several runs.
            chart
                .draw_series(LineSeries::new(std::iter::empty(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            for seg in ss {
                // A lone point is a zero-length path, invisible without a marker.
                let marker = if seg.len() == 1 { 4 } else { 0 };
                chart
                    .draw_series(LineSeries::new(seg.iter().copied(), style).point_size(marker))?;
            }
        }
        if !c.series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font(("sans-serif", 14))
                .draw()?;
        }
        root.present()?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let v = |what: &str, measured: &str, met| Verdict {
            target: "p99 < 50 ms".into(),
            what: what.into(),
            measured: measured.into(),
            met,
        };
        let s = |name: &str, points: &[(f64, f64)]| Series {
            name: name.into(),
            points: points.to_vec(),
        };
        let c = |title: &str, series| Chart {
            title: title.into(),
            x_label: "seconds since start".into(),
            y_label: "ms".into(),
            series,
        };
        let p50: Vec<_> = (0..60)
            .map(|i| (i as f64, (i as f64 * 0.3).sin() * 20.0 + 30.0))
            .collect();
        let p99: Vec<_> = p50.iter().map(|p| (p.0, p.1 * 2.0)).collect();
        let (nan, inf) = (f64::NAN, f64::INFINITY);
        let gaps = [
            (0.0, 1.0),
            (1.0, nan),
            (2.0, inf),
            (nan, 3.0),
            (4.0, 2.0),
            (5.0, 1e200),
        ];
        let fig = |name: &str, value: &str| Figure {
            name: name.into(),
            value: value.into(),
        };
        Report {
            scenario: "fanout".into(),
            title: "fanout <script>alert(1)</script> 10k subscribers".into(),
            command: "loadtest fanout --subs 10000 & echo \"done\"".into(),
            started_at: "2025-01-02T03:04:05Z".into(),
            machine: serde_json::json!({"cpus": 2, "model": "EPYC <x>", "mem": {"gib": 24}}),
            verdicts: vec![
                v("presence change → console", "12.3 ms", Some(true)),
                v("publish → subscriber", "71.0 ms", Some(false)),
                v("console replay", "no console attached", None),
            ],
            figures: vec![fig("messages delivered", "1 234 567"), fig("errors", "0")],
            charts: vec![
                c("latency", vec![s("p50", &p50), s("p99", &p99)]),
                c("empty", vec![s("none", &[])]),
                c("no series", vec![]),
                c("single point", vec![s("one", &[(3.0, 7.0)])]),
                c("gaps", vec![s("nan", &gaps)]),
                c(
                    "constant",
                    vec![
                        s("flat", &[(0.0, 5.0), (2.0, 5.0)]),
                        s("zero", &[(0.0, 0.0)]),
                    ],
                ),
                c(
                    "huge",
                    vec![s("big", &[(0.0, 1e9), (1e-9, -1e12), (2e-9, 3e-7)])],
                ),
                c(
                    "subnormal",
                    vec![s("sub", &[(1e-310, 1e-310), (2e-310, 0.0)])],
                ),
                c(
                    "near-equal",
                    vec![s("near", &[(1e9, 1e9), (1e9 + 1.0, 1e9 + 1e-6)])],
                ),
            ],
            notes: vec!["3 connections reset <by peer>".into()],
        }
    }

    #[test]
    fn one_svg_per_chart_and_escaped() {
        let r = sample();
        let html = render_html(&r);
        assert_eq!(html.matches("<svg").count(), r.charts.len());
        assert!(!html.contains("<script") && html.contains("&lt;script&gt;alert"));
        assert!(html.contains("&amp; echo &quot;done&quot;") && html.contains("EPYC &lt;x&gt;"));
        assert!(!html.contains("failed:"), "a chart failed to render");
        assert!(html.contains("class=\"notmet\">NOT met<"));
        assert!(html.contains("class=\"untested\">not tested<"));
        // Opening offline means no reference to anything outside the file.
        let offline = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !offline.contains("http") && !offline.contains("<link") && !offline.contains("src=")
        );
    }

    #[test]
    fn odd_series_survive() {
        for c in sample().charts {
            let svg = chart_svg(&c).unwrap_or_else(|e| panic!("{}: {e}", c.title));
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{}",
                c.title
            );
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{}", c.title);
        }
    }

    #[test]
    fn ranges_segments_ticks() {
        assert_eq!(axis_range([5.0].into_iter(), 0.05), 4.5..5.5);
        assert_eq!(axis_range([0.0, 0.0].into_iter(), 0.05), 0.0..1.0);
        assert_eq!(axis_range(std::iter::empty(), 0.05), 0.0..1.0);
        assert_eq!(axis_range([-2.0].into_iter(), 0.0), -2.2..-1.8);
        assert_eq!(axis_range([1.0, 11.0].into_iter(), 0.5), 0.0..16.0);
        let (nan, ninf) = (f64::NAN, f64::NEG_INFINITY);
        let s = segments(&[(0.0, 1.0), (1.0, nan), (2.0, 2.0), (3.0, 3.0), (4.0, ninf)]);
        assert_eq!(s, vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]);
        assert_eq!(
            [0.0015, 1250.0, 2e9, -0.5].map(|v| tick(&v)),
            ["0.0015", "1250", "2.00e9", "-0.5"]
        );
    }

    #[test]
    fn summary_shows_results() {
        let t = summary_table(&sample());
        assert!(t.contains("| NOT met") && t.contains("| not tested"));
        assert!(
            t.lines()
                .any(|l| l.starts_with("presence change → console |") && l.ends_with("| met"))
        );
        assert!(t.contains("overall: SOME TARGETS NOT MET"));
        assert!(t.contains("messages delivered : 1 234 567"));
        // Aligned columns: the separators sit at the same character offsets on every row.
        let bars: Vec<Vec<usize>> = (t.lines().filter(|l| l.contains(" | ")))
            .map(|l| {
                l.chars()
                    .enumerate()
                    .filter(|c| c.1 == '|')
                    .map(|c| c.0)
                    .collect()
            })
            .collect();
        assert_eq!(bars.len(), 5);
        assert!(bars.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn all_met_ignores_untested() {
        let mut r = sample();
        assert!(!all_met(&r));
        r.verdicts.retain(|v| v.met != Some(false));
        assert!(all_met(&r) && summary_table(&r).contains("overall: all tested targets met"));
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let back: Report =
            serde_json::from_str(&serde_json::to_string_pretty(&r).unwrap()).unwrap();
        // Without serde_json's `float_roundtrip` feature a parsed f64 may be 1 ULP
        // off, and non-finite values come back as NaN, so points get their own check.
        let take = |r: &Report| {
            let mut r = r.clone();
            let series = r.charts.iter_mut().flat_map(|c| &mut c.series);
            let pts: Vec<_> = series.flat_map(|s| std::mem::take(&mut s.points)).collect();
            (r, pts)
        };
        let ((r0, p0), (r1, p1)) = (take(&r), take(&back));
        assert_eq!(r1, r0);
        assert_eq!(p1.len(), p0.len());
        let same = |a: f64, b: f64| match a.is_finite() {
            true => (a - b).abs() <= a.abs() * 1e-15,
            false => b.is_nan(),
        };
        assert!(
            p0.iter()
                .zip(&p1)
                .all(|(a, b)| same(a.0, b.0) && same(a.1, b.1))
        );
        assert_eq!(render_html(&back).matches("<svg").count(), r.charts.len());
    }

    #[test]
    fn writes_sample_html() {
        let r = sample();
        // The test binary lives in <target>/<profile>/deps, wherever the target dir is.
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("report-sample.html");
        std::fs::write(&path, render_html(&r)).unwrap();
        let back = std::fs::read_to_string(&path).unwrap();
        assert!(back.starts_with("<!DOCTYPE html>") && back.trim_end().ends_with("</html>"));
        for tag in ["svg", "table", "figure", "ul", "pre", "tr", "h2", "text"] {
            let open = back.matches(&format!("<{tag}")).count();
            assert_eq!(
                open,
                back.matches(&format!("</{tag}>")).count(),
                "<{tag}> unbalanced"
            );
        }
        assert_eq!(back.matches("<svg").count(), r.charts.len());
        eprintln!("sample written to {}", path.display());
    }
}
