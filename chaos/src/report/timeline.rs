//! `timeline.svg`: two panels over the run's time (seconds since the start). The top one shows acknowledged
//! publishes and deliveries per second, the bottom one the p99 publish latency per second. Fault windows
//! are shaded in both, one colour per kind; violations are red vertical lines, a shade of red per promise.
//! One legend, in a column right of the panels (so it never hides data), names the series, the fault
//! kinds that occurred and the promises that were violated.

use super::buckets::Buckets;
use super::ReportError;
use crate::checker::Judgement;
use crate::history::{FaultKind, Promise, Record};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// The picture's size in pixels.
const SIZE: (u32, u32) = (1400, 700);
/// Width of the legend column, enough for "violation (bad_input_isolated)".
const LEGEND_WIDTH: u32 = 260;
/// Opacity of a fault window's shading: light enough to read the series through it.
const SHADE: f64 = 0.2;
const ACKED: RGBColor = RGBColor(0, 70, 160);
const DELIVERED: RGBColor = RGBColor(0, 140, 70);
const LATENCY: RGBColor = RGBColor(60, 60, 60);

type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawResult<T> = Result<T, DrawingAreaErrorKind<std::io::Error>>;

/// Draws the timeline of `records`, with the violations of `j`, to the SVG file `path`. An empty history,
/// or one of a single second, gives a picture with axes and little else.
pub fn timeline_svg(records: &[Record], j: &Judgement, path: &Path) -> Result<(), ReportError> {
    let buckets = Buckets::of(records, j);
    draw(&buckets, path).map_err(|e| ReportError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The shading colour of fault `kind` (never red, which marks violations).
pub(crate) fn fault_colour(kind: FaultKind) -> RGBColor {
    match kind {
        FaultKind::Kill => RGBColor(255, 140, 0),
        FaultKind::KillLeader => RGBColor(148, 0, 211),
        FaultKind::KillOwner => RGBColor(139, 90, 43),
        FaultKind::Pause => RGBColor(30, 144, 255),
        FaultKind::Partition => RGBColor(34, 139, 34),
        FaultKind::Netem => RGBColor(218, 165, 32),
        FaultKind::Rolling => RGBColor(112, 128, 144),
        FaultKind::ClockJump => RGBColor(0, 139, 139),
    }
}

/// The colour of `promise`'s violation lines: a shade of red each.
pub(crate) fn violation_colour(promise: Promise) -> RGBColor {
    match promise {
        Promise::AckedDelivered => RGBColor(220, 0, 0),
        Promise::Retained => RGBColor(140, 0, 0),
        Promise::SessionsSurvive => RGBColor(255, 80, 80),
        Promise::SingleConnection => RGBColor(200, 0, 100),
        Promise::BadInputIsolated => RGBColor(255, 40, 0),
        Promise::Rejoin => RGBColor(100, 20, 20),
    }
}

fn draw(b: &Buckets, path: &Path) -> DrawResult<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (panels, side) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let (top, bottom) = panels.split_vertically(SIZE.1 / 2);
    let span = b.span_s();

    let rates: Vec<(f64, f64, f64)> = (0..b.acked.len())
        .map(|i| {
            (
                b.x_s(i),
                b.per_second(b.acked[i]),
                b.per_second(b.delivered[i]),
            )
        })
        .collect();
    let rate_max = rates.iter().map(|&(_, a, d)| a.max(d)).fold(0.0, f64::max);
    let mut chart = panel(&top, "Throughput", "per second", span, rate_max)?;
    shade(&mut chart, b, top_of(rate_max))?;
    chart.draw_series(LineSeries::new(
        rates.iter().map(|&(x, a, _)| (x, a)),
        ACKED,
    ))?;
    chart.draw_series(LineSeries::new(
        rates.iter().map(|&(x, _, d)| (x, d)),
        DELIVERED,
    ))?;
    mark_violations(&mut chart, b, top_of(rate_max))?;

    let latency_max = b.p99_ms.iter().flatten().copied().max().unwrap_or(0) as f64;
    let mut chart = panel(&bottom, "p99 publish latency", "ms", span, latency_max)?;
    shade(&mut chart, b, top_of(latency_max))?;
    // One line per run of buckets with acknowledged publishes, so a gap (nothing acknowledged, as during
    // an outage) shows as a gap rather than as a straight line across it.
    let indexed: Vec<(usize, Option<u64>)> = b.p99_ms.iter().copied().enumerate().collect();
    for run in indexed.split(|(_, p)| p.is_none()) {
        let points = run
            .iter()
            .filter_map(|&(i, p)| p.map(|ms| (b.x_s(i), ms as f64)));
        chart.draw_series(LineSeries::new(points, LATENCY.stroke_width(2)))?;
    }
    mark_violations(&mut chart, b, top_of(latency_max))?;

    legend(&side, b)?;
    root.present()
}

/// The y axis's top for data up to `max`: some headroom, and never an empty range.
fn top_of(max: f64) -> f64 {
    (max * 1.1).max(1.0)
}

fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    y_desc: &str,
    span: f64,
    max: f64,
) -> DrawResult<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..span, 0.0..top_of(max))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Shades every fault window over the panel's height.
fn shade(chart: &mut Chart<'_, '_>, b: &Buckets, y_max: f64) -> DrawResult<()> {
    chart.draw_series(b.windows.iter().map(|w| {
        Rectangle::new(
            [
                (w.start_ms as f64 / 1000.0, 0.0),
                (w.end_ms as f64 / 1000.0, y_max),
            ],
            fault_colour(w.kind).mix(SHADE).filled(),
        )
    }))?;
    Ok(())
}

/// A vertical line at each violation, in its promise's red.
fn mark_violations(chart: &mut Chart<'_, '_>, b: &Buckets, y_max: f64) -> DrawResult<()> {
    for (&promise, times) in &b.violations {
        let colour = violation_colour(promise);
        chart.draw_series(times.iter().map(|&t| {
            let x = t as f64 / 1000.0;
            PathElement::new(vec![(x, 0.0), (x, y_max)], colour.stroke_width(2))
        }))?;
    }
    Ok(())
}

/// How a legend entry is drawn.
enum Key {
    Line(RGBColor),
    Shade(RGBColor),
    Mark(RGBColor),
}

/// The legend column: the series, then the fault kinds that occurred, then the violated promises.
fn legend(area: &Area<'_>, b: &Buckets) -> DrawResult<()> {
    let mut entries = vec![
        (Key::Line(ACKED), "acknowledged publishes/s".to_string()),
        (Key::Line(DELIVERED), "deliveries/s".to_string()),
        (Key::Line(LATENCY), "p99 publish latency (ms)".to_string()),
    ];
    for kind in FaultKind::ALL {
        if b.windows.iter().any(|w| w.kind == kind) {
            entries.push((Key::Shade(fault_colour(kind)), kind.name().to_string()));
        }
    }
    for &promise in b.violations.keys() {
        let label = format!("violation ({})", promise.name());
        entries.push((Key::Mark(violation_colour(promise)), label));
    }
    let font = ("sans-serif", 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (key, label)) in entries.into_iter().enumerate() {
        let (x, y) = (10, 50 + 24 * i as i32);
        match key {
            Key::Line(c) => area.draw(&PathElement::new(
                vec![(x, y), (x + 24, y)],
                c.stroke_width(2),
            ))?,
            Key::Shade(c) => area.draw(&Rectangle::new(
                [(x, y - 7), (x + 24, y + 7)],
                c.mix(SHADE * 2.0).filled(),
            ))?,
            Key::Mark(c) => area.draw(&PathElement::new(
                vec![(x + 12, y - 9), (x + 12, y + 9)],
                c.stroke_width(2),
            ))?,
        }
        area.draw(&Text::new(label, (x + 32, y), font.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, FaultPhase, Outcome};
    use crate::report::fixtures;

    fn publish(t: u64, sent: u64) -> Record {
        fixtures::publish(t, sent, Outcome::Ok)
    }

    fn deliver(t: u64) -> Record {
        Record {
            t,
            event: Event::Deliver {
                client: "s1".into(),
                conn: 2,
                publisher: "p1".into(),
                seq: t,
                topic: "chaos/data/p1".into(),
                qos: 1,
                dup: false,
                retain: false,
            },
        }
    }

    fn fault(t: u64, kind: FaultKind, phase: FaultPhase) -> Record {
        Record {
            t,
            event: Event::Fault {
                kind,
                phase,
                targets: vec![2],
                detail: String::new(),
            },
        }
    }

    /// The texts of the picture's `<text>` elements (the SVG backend writes each on its own line).
    fn texts(svg: &str) -> Vec<&str> {
        let lines: Vec<&str> = svg.lines().collect();
        lines
            .windows(2)
            .filter(|w| w[0].starts_with("<text"))
            .map(|w| w[1])
            .collect()
    }

    fn shaded_rects(svg: &str, kind: FaultKind) -> usize {
        let RGBColor(r, g, b) = fault_colour(kind);
        let fill = format!("fill=\"#{r:02X}{g:02X}{b:02X}\"");
        svg.lines()
            .filter(|l| l.starts_with("<rect") && l.contains(&fill))
            .filter(|l| l.contains(&format!("opacity=\"{SHADE}\"")))
            .count()
    }

    #[test]
    fn two_faults_and_a_violation_are_shaded_legended_and_marked() {
        let mut records = vec![fault(2000, FaultKind::Kill, FaultPhase::Start)];
        for s in 0..10 {
            for k in 0..20 {
                let t = s * 1000 + k * 50;
                records.push(publish(t + 5, t));
                records.push(deliver(t + 8));
            }
        }
        records.push(fault(4000, FaultKind::Kill, FaultPhase::End));
        // Never healed: shaded to the last record.
        records.push(fault(6000, FaultKind::Partition, FaultPhase::Start));
        let mut j = fixtures::judgement();
        j.verdicts[5].violations.clear();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        timeline_svg(&records, &j, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let texts = texts(&svg);
        for label in [
            "kill",
            "partition",
            "violation (acked_delivered)",
            "acknowledged publishes/s",
            "deliveries/s",
            "p99 publish latency (ms)",
            "seconds since start",
        ] {
            assert!(texts.contains(&label), "no text {label:?} in {texts:?}");
        }
        assert!(!texts.contains(&"pause"), "{texts:?}");
        assert!(!texts.contains(&"violation (rejoin)"), "{texts:?}");
        // One window per panel for each fault.
        assert_eq!(shaded_rects(&svg, FaultKind::Kill), 2);
        assert_eq!(shaded_rects(&svg, FaultKind::Partition), 2);
        let RGBColor(r, g, b) = violation_colour(Promise::AckedDelivered);
        let red = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
        assert!(
            svg.lines().any(|l| l.contains(&red)),
            "no violation line {red}"
        );
    }

    #[test]
    fn an_empty_history_gives_an_empty_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        let mut j = fixtures::judgement();
        for v in &mut j.verdicts {
            v.violations.clear();
        }
        timeline_svg(&[], &j, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(texts(&svg).contains(&"p99 publish latency"));
    }

    #[test]
    fn a_history_of_one_second_or_one_instant_draws() {
        let dir = tempfile::tempdir().unwrap();
        let j = fixtures::judgement();
        for (name, records) in [
            ("one-instant.svg", vec![publish(0, 0), deliver(0)]),
            (
                "one-second.svg",
                vec![
                    fault(10, FaultKind::Pause, FaultPhase::Start),
                    publish(300, 100),
                    deliver(400),
                    fault(900, FaultKind::Pause, FaultPhase::End),
                ],
            ),
        ] {
            let path = dir.path().join(name);
            timeline_svg(&records, &j, &path).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            assert!(svg.starts_with("<svg"), "{name}");
        }
    }

    #[test]
    fn an_unwritable_path_is_a_plot_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("timeline.svg");
        let e = timeline_svg(&[], &fixtures::judgement(), &path).unwrap_err();
        assert!(matches!(e, ReportError::Plot { .. }), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
