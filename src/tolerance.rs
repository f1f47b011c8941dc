//! Comparing results: `|got − want| ≤ abs + rel·|want|`, element by element.

/// A documented tolerance. Forward and gradient checks use separate ones; a
/// loosened tolerance carries a comment saying why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f32,
    /// Relative part (times |want|).
    pub rel: f32,
}

impl Tolerance {
    /// `|got − want| ≤ abs + rel·|want|`.
    pub const fn new(abs: f32, rel: f32) -> Tolerance {
        Tolerance { abs, rel }
    }

    /// `Ok` when every element is within tolerance and NaN appears in the same
    /// places; otherwise a message with the op, the max difference and the
    /// first mismatching indices.
    pub fn check(&self, op: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{op}: got {} elements, expected {}", got.len(), want.len()));
        }
        let mut max_diff = 0f32;
        let mut max_at = 0;
        let mut bad = Vec::new();
        let mut n_bad = 0usize;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let diff = (g - w).abs();
            let ok = if w.is_nan() || g.is_nan() { w.is_nan() && g.is_nan() } else if w.is_infinite() { g == w } else { diff <= self.abs + self.rel * w.abs() };
            if diff > max_diff || diff.is_nan() {
                max_diff = diff;
                max_at = i;
            }
            if !ok {
                n_bad += 1;
                if bad.len() < 5 {
                    bad.push(format!("[{i}] got {g} want {w}"));
                }
            }
        }
        if n_bad == 0 {
            Ok(())
        } else {
            Err(format!(
                "{op}: {n_bad} of {} elements outside abs {} + rel {}; max diff {max_diff} at [{max_at}]; first: {}",
                got.len(),
                self.abs,
                self.rel,
                bad.join(", ")
            ))
        }
    }

    /// Panics with [`Tolerance::check`]'s message on mismatch.
    #[track_caller]
    pub fn assert(&self, op: &str, got: &[f32], want: &[f32]) {
        if let Err(msg) = self.check(op, got, want) {
            panic!("{msg}");
        }
    }

    /// The largest |got − want|, for reports.
    pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max)
    }
}
