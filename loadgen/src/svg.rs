//! Percentile curves as a hand-written SVG, the way HdrHistogram's plotter draws them: the x
//! axis is `1/(1-p)` on a log scale (so 90 %, 99 %, 99.9 % ... are evenly spaced and the tail
//! gets the room), the y axis is latency on a log scale (brokers differ by orders of
//! magnitude). Several runs on one plot compare brokers.

use std::fmt::Write as _;

/// One curve: a label and its (latency µs, percentile as a fraction) rows.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// `log10(1/(1-p))`: 0 at 0 %, 1 at 90 %, 2 at 99 %... `None` for p = 1 (the max row).
pub fn percentile_x(quantile: f64) -> Option<f64> {
    (quantile < 1.0).then(|| (1.0 / (1.0 - quantile)).log10())
}

fn percent_label(decade: u32) -> String {
    // 1 - 10^-decade as a percentage: 0%, 90%, 99%, 99.9%, 99.99%...
    let percent = 100.0 * (1.0 - 10f64.powi(-(decade as i32)));
    let decimals = decade.saturating_sub(2) as usize;
    format!("{percent:.decimals$}%")
}

fn latency_label(us: f64) -> String {
    if us < 1.0 {
        format!("{} ns", (us * 1_000.0).round())
    } else if us < 1_000.0 {
        format!("{} µs", us.round())
    } else if us < 1_000_000.0 {
        format!("{} ms", (us / 1_000.0).round())
    } else {
        format!("{} s", (us / 1_000_000.0).round())
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole SVG document for `series` under `title`.
pub fn percentile_plot(title: &str, series: &[Series]) -> String {
    let finite_x = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter_map(|&(_, q)| percentile_x(q))
        .fold(0.0f64, f64::max);
    // Room for the max row one tick past the last finite percentile, at least up to 99.9 %.
    let x_decades = (finite_x.ceil() as u32).clamp(3, 7);
    let x_max = x_decades as f64;
    let values = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|&(v, _)| v)
        .filter(|&v| v > 0.0);
    let (v_min, v_max) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y_lo, y_hi) = if v_max <= 0.0 {
        (0.0, 3.0)
    } else {
        let lo = v_min.log10().floor();
        let hi = v_max.log10().ceil();
        (lo, if hi > lo { hi } else { lo + 1.0 })
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x.min(x_max) / x_max * plot_w;
    let sy = |v: f64| {
        let l = v.max(10f64.powf(y_lo)).log10();
        TOP + plot_h - (l - y_lo) / (y_hi - y_lo) * plot_h
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    for decade in 0..=x_decades {
        let x = sx(decade as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            percent_label(decade)
        );
    }
    let mut exponent = y_lo;
    while exponent <= y_hi {
        let v = 10f64.powf(exponent);
        let y = sy(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            latency_label(v)
        );
        for minor in [2.0, 5.0] {
            if exponent < y_hi {
                let ym = sy(v * minor);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}" stroke="#f0f0f0"/>"##,
                    LEFT + plot_w
                );
            }
        }
        exponent += 1.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // Curves: each point at its percentile; the max row sits at the right edge.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        for &(v, q) in &s.points {
            let x = percentile_x(q).unwrap_or(x_max);
            let _ = write!(points, "{:.1},{:.1} ", sx(x), sy(v));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = TOP + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_is_log_of_inverse_tail() {
        assert_eq!(percentile_x(0.0), Some(0.0));
        assert!((percentile_x(0.9).unwrap() - 1.0).abs() < 1e-9);
        assert!((percentile_x(0.999).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(percentile_x(1.0), None);
        assert_eq!(percent_label(0), "0%");
        assert_eq!(percent_label(1), "90%");
        assert_eq!(percent_label(2), "99%");
        assert_eq!(percent_label(3), "99.9%");
        assert_eq!(percent_label(5), "99.999%");
    }

    #[test]
    fn plot_has_one_curve_per_series_and_escapes_labels() {
        let series = vec![
            Series {
                label: "ringmq <qos0>".into(),
                points: vec![(10.0, 0.0), (20.0, 0.5), (40.0, 0.99), (90.0, 1.0)],
            },
            Series {
                label: "mosquitto".into(),
                points: vec![(30.0, 0.0), (50.0, 0.9), (5_000.0, 1.0)],
            },
        ];
        let svg = percentile_plot("pairs & fanin", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("ringmq &lt;qos0&gt;"));
        assert!(svg.contains("pairs &amp; fanin"));
        assert!(
            svg.contains(">10 µs<") && svg.contains(">10 ms<"),
            "decade labels"
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_plot_is_still_a_document() {
        let svg = percentile_plot("nothing", &[]);
        assert!(svg.contains("</svg>"));
        assert!(!svg.contains("NaN"));
    }
}
