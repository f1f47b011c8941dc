//! Training curves as SVG (plotters): loss per epoch, and test accuracy.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{file_err, FileErrorKind, Result};
use crate::train::EpochStats;

/// Two panels: train/test loss and test accuracy against the epoch.
pub fn training_curves(path: &Path, history: &[EpochStats]) -> Result<()> {
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(450);
        let n = history.len().max(2) as f32;
        let max_loss = history.iter().flat_map(|s| [s.train_loss, s.val_loss.unwrap_or(0.0)]).fold(0.0f32, f32::max).max(1e-3) * 1.1;
        let mut c = ChartBuilder::on(&left).caption("loss", ("sans-serif", 18)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(1f32..n, 0f32..max_loss)?;
        c.configure_mesh().x_desc("epoch").draw()?;
        c.draw_series(LineSeries::new(history.iter().map(|s| (s.epoch as f32, s.train_loss)), &BLUE))?.label("train").legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
        c.draw_series(LineSeries::new(history.iter().filter_map(|s| Some((s.epoch as f32, s.val_loss?))), &RED))?.label("test").legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        c.configure_series_labels().border_style(BLACK).draw()?;
        let lo = history.iter().filter_map(|s| s.val_accuracy).fold(1.0f32, f32::min).min(0.9) * 100.0;
        let mut a = ChartBuilder::on(&right).caption("test accuracy (%)", ("sans-serif", 18)).margin(10).x_label_area_size(30).y_label_area_size(45).build_cartesian_2d(1f32..n, lo..100f32)?;
        a.configure_mesh().x_desc("epoch").draw()?;
        a.draw_series(LineSeries::new(history.iter().filter_map(|s| Some((s.epoch as f32, 100.0 * s.val_accuracy?))), &GREEN))?;
        root.present()?;
        Ok(())
    };
    draw().or_else(|e| file_err(path, FileErrorKind::Io, format!("plotting failed: {e}")))
}
