//! Charts for BENCHMARKS.md, as SVG: the text is left to the viewer's fonts,
//! so drawing needs no font library on the machine that runs the benchmark.

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

use crate::statements::Cell;
use crate::throughput::Point;

const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(0, 0, 0),
];

type Series = (String, Vec<(f64, f64)>);
/// File, title, x label, y label, series, logarithmic y axis.
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Vec<Series>,
    bool,
);

/// Draws every chart into `dir`; returns the Markdown that shows them (or
/// says which failed).
pub fn draw(dir: &Path, cells: &[Cell], points: &[Point]) -> String {
    let mut md = String::from("## Charts\n\n");
    let providers = ["aws", "azure", "gcp"];
    let per_provider = |f: &dyn Fn(&Point) -> f64| -> Vec<Series> {
        providers
            .iter()
            .map(|p| {
                let data = points
                    .iter()
                    .filter(|x| x.provider == *p)
                    .map(|x| (x.clients as f64, f(x)))
                    .collect();
                (p.to_string(), data)
            })
            .collect()
    };
    let mut statements: Vec<Series> = [1usize, 2, 5, 50]
        .iter()
        .map(|&n| {
            let data = cells
                .iter()
                .filter(|c| c.agents == n)
                .map(|c| (c.builds as f64 + 1.0, c.baseline_statements.max(1) as f64))
                .collect();
            (format!("baseline, {n} agent{}", if n == 1 { "" } else { "s" }), data)
        })
        .collect();
    statements.push((
        "idgate, any number of agents".into(),
        cells
            .iter()
            .filter(|c| c.agents == 50)
            .map(|c| (c.builds as f64 + 1.0, c.idgate_statements.max(1) as f64))
            .collect(),
    ));
    let charts: [Spec; 3] = [
        (
            "statements.svg",
            "Statements per authentication (PostgreSQL's count)",
            "builds of the workspace (latest + earlier, log)",
            "statements (log)",
            statements,
            true,
        ),
        (
            "throughput.svg",
            "Authentications per second vs concurrent clients",
            "concurrent clients (log)",
            "authentications / s",
            per_provider(&|p| p.outcome.rate()),
            false,
        ),
        (
            "latency.svg",
            "p99 latency vs concurrent clients",
            "concurrent clients (log)",
            "p99 latency, ms (log)",
            per_provider(&|p| p.outcome.quantile(0.99).as_secs_f64() * 1000.0),
            true,
        ),
    ];
    for (file, title, x, y, series, log_y) in charts {
        match line_chart(&dir.join(file), title, x, y, &series, log_y) {
            Ok(()) => md.push_str(&format!("![{title}](bench/charts/{file})\n\n")),
            Err(e) => md.push_str(&format!("({file} could not be drawn: {e})\n\n")),
        }
    }
    md
}

fn line_chart(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series],
    log_y: bool,
) -> Result<(), Box<dyn Error>> {
    let all = series.iter().flat_map(|(_, d)| d.iter());
    let (x_max, y_max, y_min) = all.fold((1.0f64, 1.0f64, f64::MAX), |(a, b, c), &(x, y)| {
        (a.max(x), b.max(y), c.min(y))
    });
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70);
    let x_range = (1.0..x_max * 1.2).log_scale();
    if log_y {
        let mut chart = builder.build_cartesian_2d(x_range, (y_min.max(1e-3) / 1.5..y_max * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        plot(&mut chart, series)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x_range, 0.0..y_max * 1.15)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        plot(&mut chart, series)?;
    }
    root.present()?;
    Ok(())
}

fn plot<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
) -> Result<(), Box<dyn Error>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, (name, data)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(data.iter().copied(), colour.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(data.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
