//! Training curves as SVG (plotters) and the per-epoch history as JSON or CSV.

use std::path::Path;

use plotters::prelude::*;

use crate::checkpoint::write_atomic;
use crate::error::{file_err, FileErrorKind, Result};
use crate::train::EpochStats;

/// The font for chart text (DejaVu Sans Mono, see `assets/DejaVu-LICENSE.txt`),
/// embedded so plots render the same on machines without fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const SIZE: (u32, u32) = (1350, 400);

/// Three panels: loss per step, train/test loss per epoch, train/test
/// accuracy per epoch; every epoch is a marked point on integer ticks, so a
/// one-epoch run draws too. SVG or PNG by the file's extension.
pub fn training_curves(path: &Path, history: &[EpochStats]) -> Result<()> {
    register_font();
    let fail = |e: Box<dyn std::error::Error>| file_err(path, FileErrorKind::Write, format!("plotting failed: {e}"));
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), history).or_else(fail)?;
            write_atomic(path, svg.as_bytes())
        }
        Some("png") => {
            let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
            draw(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(), history).or_else(fail)?;
            let img = image::RgbImage::from_raw(SIZE.0, SIZE.1, rgb).expect("the buffer is width × height × 3");
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, image::ImageFormat::Png).or_else(|e| file_err(path, FileErrorKind::Write, e.to_string()))?;
            write_atomic(path, png.get_ref())
        }
        other => file_err(path, FileErrorKind::Write, format!("plots are SVG or PNG: give a path ending in .svg or .png (got {:?})", other.unwrap_or("no extension"))),
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, history: &[EpochStats]) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    // Per-step loss across the run.
    let steps: Vec<f32> = history.iter().flat_map(|s| s.step_losses.iter().copied()).collect();
    let top = steps.iter().copied().fold(0.0f32, f32::max).max(1e-3) * 1.1;
    let mut c = ChartBuilder::on(&panels[0]).caption("loss per step", ("sans-serif", 18)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(0..steps.len().max(1), 0f32..top)?;
    c.configure_mesh().x_desc("step").draw()?;
    c.draw_series(LineSeries::new(steps.iter().enumerate().map(|(i, &l)| (i, l)), &BLUE))?;
    // Per epoch: integer ticks from the first epoch to the last.
    let (first, last) = (history.first().map_or(1, |s| s.epoch), history.last().map_or(1, |s| s.epoch));
    let span = first as i32 - 1..last as i32 + 1;
    let max_loss = history.iter().flat_map(|s| [s.train_loss, s.val_loss.unwrap_or(0.0)]).fold(0.0f32, f32::max).max(1e-3) * 1.1;
    let mut l = ChartBuilder::on(&panels[1]).caption("loss per epoch", ("sans-serif", 18)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(span.clone(), 0f32..max_loss)?;
    l.configure_mesh().x_desc("epoch").x_labels((last - first + 3).min(12)).draw()?;
    let series = |v: Vec<(i32, f32)>, color: RGBColor| (LineSeries::new(v.clone(), color), PointSeries::of_element(v, 4, color, &|p, s, st| Circle::new(p, s, st.filled())));
    for (name, color, points) in [
        ("train", BLUE, history.iter().map(|s| (s.epoch as i32, s.train_loss)).collect::<Vec<_>>()),
        ("test", RED, history.iter().filter_map(|s| Some((s.epoch as i32, s.val_loss?))).collect()),
    ] {
        let (line, dots) = series(points, color);
        l.draw_series(line)?.label(name).legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        l.draw_series(dots)?;
    }
    l.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    let accs = history.iter().flat_map(|s| [s.train_accuracy, s.val_accuracy]).flatten();
    let lo = accs.fold(1.0f32, f32::min).min(0.9) * 100.0;
    let mut a = ChartBuilder::on(&panels[2]).caption("accuracy (%)", ("sans-serif", 18)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(span, lo..100f32)?;
    a.configure_mesh().x_desc("epoch").x_labels((last - first + 3).min(12)).draw()?;
    for (name, color, points) in [
        ("train", BLUE, history.iter().filter_map(|s| Some((s.epoch as i32, 100.0 * s.train_accuracy?))).collect::<Vec<_>>()),
        ("test", GREEN, history.iter().filter_map(|s| Some((s.epoch as i32, 100.0 * s.val_accuracy?))).collect()),
    ] {
        let (line, dots) = series(points, color);
        a.draw_series(line)?.label(name).legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        a.draw_series(dots)?;
    }
    a.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}

/// Writes the per-epoch history atomically: CSV when `path` ends in `.csv`
/// (one row per epoch), else JSON (an array of objects, step losses included).
pub fn write_history(path: &Path, history: &[EpochStats]) -> Result<()> {
    let opt = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
    let text = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        let mut s = String::from("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,images_per_sec,seconds\n");
        for e in history {
            s += &format!("{},{},{},{},{},{},{:.1},{:.3}\n", e.epoch, e.lr, e.train_loss, opt(e.train_accuracy), opt(e.val_loss), opt(e.val_accuracy), e.images_per_sec, e.seconds);
        }
        s
    } else {
        let rows: Vec<serde_json::Value> = history
            .iter()
            .map(|e| {
                serde_json::json!({
                    "epoch": e.epoch, "lr": e.lr, "train_loss": e.train_loss, "train_accuracy": e.train_accuracy,
                    "val_loss": e.val_loss, "val_accuracy": e.val_accuracy, "images_per_sec": e.images_per_sec,
                    "seconds": e.seconds, "step_losses": e.step_losses,
                })
            })
            .collect();
        serde_json::to_string_pretty(&rows).expect("numbers serialise") + "\n"
    };
    write_atomic(path, text.as_bytes())
}
