//! The two SVG charts, drawn with plotters: round-trip p50 and one-way bytes/s against
//! message size, both axes logarithmic, one line per row (backends solid, peers dashed, the
//! `Vec<u8>` rows dotted in a lighter shade of their backend's colour).

use std::path::Path;

use plotters::prelude::*;

use crate::names::{format_size, Kind, Name};
use crate::report::{format_bytes_rate, format_ns, Row};

const SIZE: (u32, u32) = (960, 600);

fn color(name: Name) -> RGBColor {
    match name {
        Name::Floor => RGBColor(0, 0, 0),
        Name::Thread => RGBColor(31, 119, 180),
        Name::Crossbeam => RGBColor(120, 170, 220),
        Name::Shm => RGBColor(214, 39, 40),
        Name::ShmVec => RGBColor(240, 140, 140),
        Name::Unix => RGBColor(44, 160, 44),
        Name::UnixVec => RGBColor(140, 210, 140),
        Name::ShmSealed => RGBColor(150, 20, 20),
        Name::UnixSealed => RGBColor(20, 100, 20),
        Name::Tcp => RGBColor(255, 127, 14),
        Name::Zenoh => RGBColor(255, 187, 120),
        Name::ZenohRaw => RGBColor(200, 150, 60),
        Name::Pipe => RGBColor(148, 103, 189),
        Name::RawSocketpair => RGBColor(110, 110, 110),
        Name::IpcChannel => RGBColor(140, 86, 75),
        Name::IpcBytes => RGBColor(196, 156, 148),
        Name::IpcShmem => RGBColor(227, 119, 194),
        Name::Iceoryx2 => RGBColor(23, 190, 207),
        Name::Iceoryx2Wait => RGBColor(10, 110, 125),
    }
}

/// One chart's series: the name, and (log2 of size, value) points.
type Series = Vec<(Name, Vec<(f64, f64)>)>;

fn series(rows: &[Row], workload: &str, value: impl Fn(&Row) -> Option<f64>) -> Series {
    let mut out = Vec::new();
    for &name in Name::ALL {
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.name == name.as_str() && r.workload == workload)
            .filter_map(|r| Some(((r.size as f64).log2(), value(r).filter(|v| *v > 0.0)?)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            out.push((name, points));
        }
    }
    out
}

/// Writes `latency.svg` and `throughput.svg` into `dir`; returns their paths.
pub fn draw(rows: &[Row], sizes: &[usize], dir: &Path) -> Result<Vec<String>, String> {
    let mut sizes = sizes.to_vec();
    sizes.sort_unstable();
    let (lo, hi) = match (sizes.first(), sizes.last()) {
        (Some(&lo), Some(&hi)) => ((lo.min(8) as f64).log2(), (hi as f64).log2()),
        _ => return Ok(Vec::new()),
    };
    let x = (lo - 0.4)..(hi + 0.4);
    let mut latency = series(rows, "rtt", |r| r.p50_ns);
    // The floor is one figure (8 bytes): drawn across the chart as the bound below all.
    for (name, points) in &mut latency {
        if *name == Name::Floor {
            let y = points[0].1;
            *points = vec![(x.start, y), (x.end, y)];
        }
    }
    let throughput = series(rows, "throughput", |r| r.bytes_per_s);
    let files = [
        (
            "latency.svg",
            "Round trip (p50) against message size",
            "round trip p50",
            latency,
            &(|v: &f64| format_ns(*v)) as &dyn Fn(&f64) -> String,
        ),
        (
            "throughput.svg",
            "One-way throughput against message size (threads move values: no copy)",
            "payload bytes per second",
            throughput,
            &|v: &f64| format_bytes_rate(*v),
        ),
    ];
    let mut written = Vec::new();
    for (file, caption, y_desc, data, y_fmt) in files {
        if data.is_empty() {
            continue;
        }
        let path = dir.join(file);
        plot(&path, caption, y_desc, x.clone(), &data, y_fmt)
            .map_err(|e| format!("{file}: {e}"))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

fn plot(
    path: &Path,
    caption: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    data: &Series,
    y_fmt: &dyn Fn(&f64) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    let values = data.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    // Room above the data for the legend: 60% more decades on top.
    let (low, high) = ((min / 1.5).log10(), (max * 1.5).log10());
    let high = high + (high - low).max(1.0) * 0.6;
    let y = (10f64.powf(low)..10f64.powf(high)).log_scale();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_labels(10)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_fmt)
        .x_desc("message size")
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (name, points) in data {
        let style = color(*name).stroke_width(2);
        let series = if name.kind() == Kind::Peer {
            chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?
        } else if name.variant_of().is_some() {
            chart.draw_series(DashedLineSeries::new(points.clone(), 3, 3, style))?
        } else {
            chart.draw_series(LineSeries::new(points.clone(), style))?
        };
        let label = match name {
            Name::Floor => "floor (one cache line, 8 B)".to_string(),
            n if n.kind() == Kind::Peer => format!("{} (peer)", n.as_str()),
            n => n.as_str().to_string(),
        };
        series
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        if *name != Name::Floor {
            let dots = points
                .iter()
                .map(|&p| Circle::new(p, 3, color(*name).filled()));
            chart.draw_series(dots)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}

/// x is log2 of the size: label whole powers of two as sizes.
fn x_label(v: &f64) -> String {
    let r = v.round();
    if (v - r).abs() < 0.01 && (0.0..40.0).contains(&r) {
        format_size(1usize << r as u32)
    } else {
        String::new()
    }
}
