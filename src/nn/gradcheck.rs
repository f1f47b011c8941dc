//! A gradient checker for any [`Layer`], built-in or written outside the
//! crate: `backward` against central finite differences of the forward, on
//! either device.

use crate::error::{Error, Result};
use crate::nn::{Layer, Mode, State};
use crate::tensor::Tensor;
use crate::tolerance::Tolerance;

/// How [`check_gradients`] probes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradCheck {
    /// The step of the central difference.
    pub eps: f32,
    /// Entries probed per tensor (spread over it; all when it has fewer).
    pub samples: usize,
    /// Allowed difference between `backward` and the finite difference.
    /// f32 forwards leave ~1e-4 of noise in a difference at eps 1e-2.
    pub tolerance: Tolerance,
    /// Seed of the random projection the loss is taken along.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> GradCheck {
        GradCheck { eps: 1e-2, samples: 12, tolerance: Tolerance::new(1e-3, 2e-2), seed: 1 }
    }
}

/// What [`check_gradients`] compared: per tensor (`"input"`, then each
/// parameter that trains), the largest difference found.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// (tensor, entries probed, largest |backward − finite difference|).
    pub tensors: Vec<(String, usize, f32)>,
}

/// Checks `layer`'s backward against finite differences at input `x`: the
/// loss is `Σ y·r` for a fixed random `r` (so dL/dy = r); dL/dx and every
/// parameter gradient are compared at `cfg.samples` entries each. The layer
/// runs in `Mode::Train`, so it must be deterministic there (no dropout).
/// Returns the report, or an error naming the first tensor and entry outside
/// `cfg.tolerance`. The layer's gradients are zeroed afterwards.
pub fn check_gradients(layer: &mut dyn Layer, x: &Tensor, cfg: GradCheck) -> Result<GradCheckReport> {
    const OP: &str = "check_gradients";
    if !(cfg.eps > 0.0 && cfg.eps.is_finite()) || cfg.samples == 0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("eps {} must be > 0 and samples {} ≥ 1", cfg.eps, cfg.samples) });
    }
    let dev = x.device();
    let y_shape = layer.output_shape(x.shape())?;
    let r = lcg(cfg.seed, y_shape.iter().product());
    let loss = |layer: &mut dyn Layer, x: &Tensor| -> Result<f64> {
        let y = layer.forward(x, Mode::Train)?;
        layer.release();
        Ok(y.to_vec()?.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum())
    };
    // Analytic gradients.
    layer.zero_grad();
    let y = layer.forward(x, Mode::Train)?;
    let dx = layer.backward(&Tensor::from_slice(&dev, y.shape(), &r)?)?.to_vec()?;
    let mut analytic: Vec<(String, Vec<f32>)> = vec![("input".to_string(), dx)];
    for p in layer.parameters("")? {
        analytic.push((p.name.clone(), p.grad.to_vec()?));
    }
    layer.zero_grad();
    let mut report = GradCheckReport { tensors: Vec::new() };
    let two_eps = 2.0 * cfg.eps as f64;
    for (name, grad) in &analytic {
        let picks = spread(grad.len(), cfg.samples);
        let mut worst = 0f32;
        for &k in &picks {
            let numeric = if name == "input" {
                let mut v = x.to_vec()?;
                let x0 = v[k];
                v[k] = x0 + cfg.eps;
                let up = loss(layer, &Tensor::from_slice(&dev, x.shape(), &v)?)?;
                v[k] = x0 - cfg.eps;
                let down = loss(layer, &Tensor::from_slice(&dev, x.shape(), &v)?)?;
                ((up - down) / two_eps) as f32
            } else {
                let up = { nudge(layer, name, k, cfg.eps)?; loss(layer, x)? };
                let down = { nudge(layer, name, k, -2.0 * cfg.eps)?; loss(layer, x)? };
                nudge(layer, name, k, cfg.eps)?;
                ((up - down) / two_eps) as f32
            };
            if let Err(msg) = cfg.tolerance.check(&format!("{name}[{k}]: backward vs finite difference"), &[grad[k]], &[numeric]) {
                return Err(Error::InvalidArgument { op: OP, msg });
            }
            worst = worst.max((grad[k] - numeric).abs());
        }
        report.tensors.push((name.clone(), picks.len(), worst));
    }
    Ok(report)
}

/// Adds `delta` to entry `k` of parameter `name`.
fn nudge(layer: &mut dyn Layer, name: &str, k: usize, delta: f32) -> Result<()> {
    for e in layer.state("") {
        if let (true, State::Param { value, .. }) = (e.name == name, e.state) {
            let mut v = value.to_vec()?;
            v[k] += delta;
            return value.write(&v);
        }
    }
    Err(Error::InvalidArgument { op: "check_gradients", msg: format!("parameter `{name}` vanished from the layer's state") })
}

/// `n` indices spread over `0..len` (all of them when `len ≤ n`).
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..n).map(|i| i * (len - 1) / (n - 1).max(1)).collect();
    v.dedup();
    v
}

/// Values in [-1, 1) from a 64-bit LCG: the same projection on every device.
fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
