//! Latency histograms and the arithmetic of a run's figures. Latency is recorded in
//! nanoseconds (3 significant digits, up to an hour) and reported in microseconds. The `.hgrm`
//! text is HdrHistogram's percentile-distribution format, so HdrHistogram's own plotter and
//! the `plot` subcommand both read it.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded: an hour. Longer ones are clamped (`saturating_record`).
pub const LATENCY_MAX_NS: u64 = 3_600_000_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Percentile rows per halving of the distance to 100 %, as HdrHistogram's default output.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Events per second over `duration_ns`; 0 for an empty interval.
pub fn rate_per_sec(count: u64, duration_ns: u64) -> f64 {
    if duration_ns == 0 {
        return 0.0;
    }
    count as f64 * 1e9 / duration_ns as f64
}

fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1_000.0
}

/// The latency figures quoted everywhere, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_us: ns_to_us(h.min()),
            mean_us: h.mean() / 1_000.0,
            p50_us: ns_to_us(h.value_at_quantile(0.50)),
            p90_us: ns_to_us(h.value_at_quantile(0.90)),
            p99_us: ns_to_us(h.value_at_quantile(0.99)),
            p99_9_us: ns_to_us(h.value_at_quantile(0.999)),
            p99_99_us: ns_to_us(h.value_at_quantile(0.9999)),
            max_us: ns_to_us(h.max()),
        }
    }
}

/// Human form of a latency in microseconds: "850 µs", "12.3 ms", "1.20 s".
pub fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// Human form of a rate: "950", "12.3k", "1.25M".
pub fn format_rate(per_sec: f64) -> String {
    if per_sec < 10_000.0 {
        format!("{per_sec:.0}")
    } else if per_sec < 1e6 {
        format!("{:.1}k", per_sec / 1e3)
    } else {
        format!("{:.2}M", per_sec / 1e6)
    }
}

/// HdrHistogram's percentile-distribution text (as `outputPercentileDistribution` writes it),
/// values divided by `unit_ratio` (1000: ns recorded, µs printed).
pub fn percentile_distribution(h: &Histogram<u64>, unit_ratio: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / unit_ratio;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            h.mean() / unit_ratio,
            h.stdev() / unit_ratio,
            h.max() as f64 / unit_ratio,
        )
    };
    let sub_buckets = (2 * 10u64.pow(h.sigfig() as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {sub_buckets:>12}]",
        h.buckets()
    );
    out
}

/// The (value, percentile as a fraction) rows of a percentile-distribution text; header,
/// comment and malformed lines are skipped.
pub fn parse_percentile_distribution(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let value = fields.next()?.parse::<f64>().ok()?;
            let quantile = fields.next()?.parse::<f64>().ok()?;
            (0.0..=1.0).contains(&quantile).then_some((value, quantile))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(rate_per_sec(1_000, 2_000_000_000), 500.0);
        assert_eq!(rate_per_sec(3, 1_500_000_000), 2.0);
        assert_eq!(rate_per_sec(5, 0), 0.0);
        assert_eq!(format_rate(950.0), "950");
        assert_eq!(format_rate(12_345.0), "12.3k");
        assert_eq!(format_rate(1_250_000.0), "1.25M");
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_histogram();
        // 1..=10000 µs, one each.
        for us in 1..=10_000u64 {
            h.record(us * 1_000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
        assert!(close(s.p50_us, 5_000.0), "p50 {}", s.p50_us);
        assert!(close(s.p90_us, 9_000.0), "p90 {}", s.p90_us);
        assert!(close(s.p99_us, 9_900.0), "p99 {}", s.p99_us);
        assert!(close(s.p99_9_us, 9_990.0), "p99.9 {}", s.p99_9_us);
        assert!(close(s.max_us, 10_000.0), "max {}", s.max_us);
        assert!(close(s.min_us, 1.0));
        assert!(close(s.mean_us, 5_000.5));
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        let h = new_histogram();
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        let text = percentile_distribution(&h, 1_000.0);
        assert!(text.contains("Total count    =            0"));
        assert!(parse_percentile_distribution(&text).is_empty());
    }

    #[test]
    fn percentile_distribution_round_trips_through_the_parser() {
        let mut h = new_histogram();
        for ns in [10_000u64, 20_000, 20_000, 30_000, 1_000_000] {
            h.record(ns).unwrap();
        }
        let text = percentile_distribution(&h, 1_000.0);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        let rows = parse_percentile_distribution(&text);
        assert!(rows.len() >= 4, "{text}");
        assert_eq!(rows.first().unwrap().1, 0.0);
        let (last_value, last_q) = *rows.last().unwrap();
        assert_eq!(last_q, 1.0);
        assert!(
            (last_value - 1_000.0).abs() < 1.0,
            "max in µs: {last_value}"
        );
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        // The TotalCount column ends at the number of samples.
        let last_line = text
            .lines()
            .find(|l| l.contains(" 1.000000000000 "))
            .unwrap();
        assert_eq!(last_line.split_whitespace().nth(2), Some("5"));
        assert!(text.contains("Total count    =            5]"), "{text}");
    }
}
