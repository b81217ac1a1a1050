//! Charts of the dashboard, drawn on the server as SVG with plotters' SVG backend: no script
//! and no image request; the markup goes straight into the page and scales with it.

use plotters::prelude::*;

/// One line of a chart: `(x, y)` points in time order.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub points: Vec<(i64, f64)>,
}

/// Colours of the series, distinguishable also in grey.
pub const GREEN: RGBColor = RGBColor(0x1b, 0x7f, 0x3b);
pub const RED: RGBColor = RGBColor(0xc0, 0x39, 0x2b);
pub const BLUE: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);
pub const ORANGE: RGBColor = RGBColor(0xd3, 0x7a, 0x00);

/// A line chart over `x_range` (unix ms) with a time axis labelled by `x_label` and a legend;
/// `None` when plotters fails (the page then says so instead).
pub fn lines(
    series: &[Series],
    x_range: (i64, i64),
    y_label: &str,
    x_label: fn(i64) -> String,
    size: (u32, u32),
) -> Option<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let top = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let y_max = nice_ceiling(top);
        let (start, end) = (x_range.0, x_range.1.max(x_range.0 + 1));
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(start..end, 0f64..y_max)
            .ok()?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|x| x_label(*x))
            .y_label_formatter(&|y| format_count(*y))
            .y_desc(y_label)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .label_style(("sans-serif", 12))
            .draw()
            .ok()?;
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .ok()?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0xcc, 0xcc, 0xcc))
                .label_font(("sans-serif", 12))
                .draw()
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(responsive(svg, size, "xMidYMid meet"))
}

/// A small line without axes: the shape of a listener's runs over time.
pub fn sparkline(values: &[f64], failures: &[f64]) -> Option<String> {
    let size = (120u32, 28u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let top = values
            .iter()
            .chain(failures)
            .copied()
            .fold(0.0f64, f64::max)
            .max(1.0);
        let n = values.len().max(2) as f64 - 1.0;
        let mut chart = ChartBuilder::on(&root)
            .margin(2)
            .build_cartesian_2d(0f64..n, 0f64..top)
            .ok()?;
        chart
            .draw_series(LineSeries::new(
                values.iter().enumerate().map(|(i, v)| (i as f64, *v)),
                BLUE.stroke_width(1),
            ))
            .ok()?;
        if failures.iter().any(|f| *f > 0.0) {
            chart
                .draw_series(LineSeries::new(
                    failures.iter().enumerate().map(|(i, v)| (i as f64, *v)),
                    RED.stroke_width(1),
                ))
                .ok()?;
        }
        root.present().ok()?;
    }
    // A sparkline stretches to whatever box the page gives it.
    Some(responsive(svg, size, "none"))
}

/// Lets the SVG scale with the page (CSS sets its width): keeps the view box, drops the
/// fixed size, and names it as an image for screen readers.
fn responsive(svg: String, (w, h): (u32, u32), aspect: &str) -> String {
    svg.replacen(
        &format!("width=\"{w}\" height=\"{h}\""),
        &format!("role=\"img\" preserveAspectRatio=\"{aspect}\""),
        1,
    )
}

/// A round upper bound for the y axis (1, 2 or 5 times a power of ten).
fn nice_ceiling(top: f64) -> f64 {
    if !top.is_finite() || top <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(top.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if top <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_count(y: f64) -> String {
    if y >= 1000.0 {
        format!("{:.1}k", y / 1000.0)
    } else if y.fract().abs() < 1e-9 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_that_scales() {
        let series = [Series {
            label: "ok".into(),
            color: GREEN,
            points: vec![(0, 1.0), (60_000, 3.0), (120_000, 2.0)],
        }];
        let svg = lines(
            &series,
            (0, 120_000),
            "events/min",
            |x| x.to_string(),
            (600, 200),
        )
        .expect("chart drawn");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("viewBox=\"0 0 600 200\""), "{svg}");
        let tag = svg.lines().next().unwrap_or_default();
        assert!(
            !tag.contains("width="),
            "the size comes from the page: {tag}"
        );
        let spark = sparkline(&[1.0, 4.0, 2.0], &[0.0, 1.0, 0.0]).expect("sparkline drawn");
        assert!(spark.contains("<polyline"), "{spark}");
    }

    #[test]
    fn round_axis_tops() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
    }
}
