//! `--plot FILE.svg`: throughput over time (top) and the latency CDF
//! (bottom, log-scale latency) of every workload of a run.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Quantiles drawn on the CDF.
const CDF_POINTS: usize = 200;

/// Writes the picture of `reports` to `path`.
pub fn write_svg(path: &Path, reports: &[Report]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (top, bottom) = root.split_vertically(450);

    let data_reports: Vec<&Report> = reports.iter().filter(|r| r.bytes > 0).collect();
    let max_t = reports
        .iter()
        .flat_map(|r| r.per_second.last().map(|s| s.second))
        .fold(1.0, f64::max);
    let max_mib = data_reports
        .iter()
        .flat_map(|r| r.per_second.iter().map(|s| s.throughput_mib_s))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("throughput over time", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_t * 1.05, 0.0..max_mib * 1.1)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the workload started")
        .y_desc("MiB/s")
        .draw()
        .map_err(draw_error)?;
    for (i, r) in data_reports.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(steps(r), color.stroke_width(2)))
            .map_err(draw_error)?
            .label(r.workload.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;

    let max_us = reports
        .iter()
        .map(|r| r.histogram.max())
        .max()
        .unwrap_or(1)
        .max(10);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency CDF", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1u64..max_us * 2).log_scale(), 0.0..100.0)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("percent of operations at or below")
        .draw()
        .map_err(draw_error)?;
    for (i, r) in reports.iter().enumerate() {
        if r.histogram.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        let points = (0..=CDF_POINTS).map(|k| {
            let q = k as f64 / CDF_POINTS as f64;
            (r.histogram.value_at_quantile(q).max(1), q * 100.0)
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw_error)?
            .label(r.workload.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

/// Each sample as a flat step over the interval it measured, so even a
/// workload shorter than a second shows up.
fn steps(r: &Report) -> Vec<(f64, f64)> {
    let mut from = 0.0;
    let mut out = Vec::with_capacity(2 * r.per_second.len());
    for s in &r.per_second {
        out.push((from, s.throughput_mib_s));
        out.push((s.second, s.throughput_mib_s));
        from = s.second;
    }
    out
}

fn draw_error<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
