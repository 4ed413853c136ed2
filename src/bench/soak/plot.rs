//! `soak.png`: throughput, p99 latency, depth, dead tuples and size over time, one
//! line per system, the phases shaded.

use std::path::Path;

use plotters::prelude::*;

use super::{Phase, SystemResult, sample::Sample};

/// A TrueType font for the labels (plotters draws text through ab_glyph, which needs
/// the font's bytes: Debian's DejaVu, as `fonts-dejavu-core` installs it).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        FONT_PATHS.iter().any(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                plotters::style::register_font(
                    "sans-serif",
                    FontStyle::Normal,
                    Box::leak(bytes.into_boxed_slice()),
                )
                .is_ok()
            })
        })
    });
    anyhow::ensure!(
        ok,
        "no TrueType font for the plot's labels (looked for {FONT_PATHS:?}; apt-get install fonts-dejavu-core)"
    );
    Ok(())
}

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

struct Panel {
    title: &'static str,
    /// Log10 of the value on a linear axis, labelled with the value.
    log: bool,
    value: fn(&Sample) -> Option<f64>,
}

const PANELS: [Panel; 5] = [
    Panel {
        title: "completed jobs/s (5 s)",
        log: false,
        value: |s| Some(s.completed_per_s),
    },
    Panel {
        title: "p99 enqueue-to-start latency, ms (rolling 30 s, log scale)",
        log: true,
        value: |s| s.p99_ms,
    },
    Panel {
        title: "queue depth (enqueued, not yet run)",
        log: false,
        value: |s| Some(s.depth as f64),
    },
    Panel {
        title: "dead tuples in the queue's tables",
        log: false,
        value: |s| Some(s.dead_tuples as f64),
    },
    Panel {
        title: "queue tables + indexes, MB",
        log: false,
        value: |s| Some((s.table_bytes + s.index_bytes) as f64 / 1e6),
    },
];

pub fn draw(path: &Path, phases: &[Phase], results: &[SystemResult]) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1400, 1900)).into_drawing_area();
    root.fill(&WHITE)?;
    let total_min = phases.iter().map(|p| p.duration.as_secs_f64()).sum::<f64>() / 60.0;
    for (area, panel) in root.split_evenly((PANELS.len(), 1)).iter().zip(&PANELS) {
        let points = |r: &SystemResult| -> Vec<(f64, f64)> {
            r.samples
                .iter()
                .filter_map(|s| {
                    let v = (panel.value)(s)?;
                    let v = if panel.log { v.max(0.1).log10() } else { v };
                    Some((s.t / 60.0, v))
                })
                .collect()
        };
        let series: Vec<Vec<(f64, f64)>> = results.iter().map(points).collect();
        let top = series
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(if panel.log { 2.0 } else { 1.0 }, f64::max)
            * 1.1;
        let bottom = if panel.log { -1.0 } else { 0.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..total_min.max(0.1), bottom..top)?;
        let log = panel.log;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_label_formatter(&move |v| {
                if log {
                    let ms = 10f64.powf(*v);
                    if ms >= 10.0 {
                        format!("{ms:.0}")
                    } else {
                        format!("{ms:.1}")
                    }
                } else if v.abs() >= 1e6 {
                    format!("{:.1}M", v / 1e6)
                } else if v.abs() >= 1e3 {
                    format!("{:.1}k", v / 1e3)
                } else {
                    format!("{v:.0}")
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        // The phases: alternate shading, the name at the top.
        let mut start = 0.0;
        for (i, phase) in phases.iter().enumerate() {
            let end = start + phase.duration.as_secs_f64() / 60.0;
            let shade = if i % 2 == 0 {
                RGBColor(240, 240, 240)
            } else {
                RGBColor(225, 232, 245)
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(start, bottom), (end, top)],
                shade.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                phase.kind.name().to_string(),
                (start + 0.05, top * 0.97 + bottom * 0.03),
                ("sans-serif", 14).into_font().color(&BLACK.mix(0.6)),
            )))?;
            start = end;
        }
        for ((result, points), color) in results.iter().zip(series).zip(COLORS.iter().cycle()) {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(result.system.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
