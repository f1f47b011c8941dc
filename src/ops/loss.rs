//! Regression losses (PyTorch's `MSELoss`, `L1Loss`, `SmoothL1Loss`) and the
//! negative log-likelihood of log-probabilities (`NLLLoss`, class weights and
//! `ignore_index`), mean- or sum-reduced, each returning the loss as a `[1]`
//! tensor on the device and its gradient with respect to the prediction.
//! The fused softmax cross-entropy is in `softmax_xent`.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::ops::reduce::reduce_rows_gpu;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("loss", include_str!("../../shaders/loss.wgsl"));
pub(crate) static LOSS_REGRESSION: Kernel<LossParams> =
    Kernel::new(&SHADER, "loss_regression", &[Read, Read, ReadWrite, ReadWrite, Uniform]).with_work(|p| Work::f32s(6 * p.len as usize, 4 * p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&LOSS_REGRESSION.def];

pub use crate::ops::softmax_xent::Reduction;

/// Which regression loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RegressionLoss {
    /// (p − t)²
    Mse,
    /// |p − t|
    L1,
    /// 0.5 (p − t)² / β where |p − t| < β, else |p − t| − 0.5 β (PyTorch's default β = 1).
    SmoothL1 {
        /// Where the quadratic part ends (> 0).
        beta: f32,
    },
}

/// Matches `LossParams` in `shaders/loss.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LossParams {
    pub len: u32,
    pub kind: u32,
    pub beta: f32,
    pub scale: f32,
}

/// Mean squared error and its gradient.
pub fn loss_mse(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<(Tensor, Tensor)> {
    loss_regression(pred, target, RegressionLoss::Mse, reduction)
}

/// Mean absolute error and its gradient.
pub fn loss_l1(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<(Tensor, Tensor)> {
    loss_regression(pred, target, RegressionLoss::L1, reduction)
}

/// Smooth L1 (Huber-like, with PyTorch's `beta`) and its gradient.
pub fn loss_smooth_l1(pred: &Tensor, target: &Tensor, beta: f32, reduction: Reduction) -> Result<(Tensor, Tensor)> {
    loss_regression(pred, target, RegressionLoss::SmoothL1 { beta }, reduction)
}

/// The loss `[1]` and dL/dpred for any of the regression losses.
pub fn loss_regression(pred: &Tensor, target: &Tensor, loss: RegressionLoss, reduction: Reduction) -> Result<(Tensor, Tensor)> {
    const OP: &str = "loss_regression";
    check_shape(OP, "target", target.shape(), pred.shape())?;
    let (kind, beta) = match loss {
        RegressionLoss::Mse => (0, 0.0),
        RegressionLoss::L1 => (1, 0.0),
        RegressionLoss::SmoothL1 { beta } if beta > 0.0 && beta.is_finite() => (2, beta),
        RegressionLoss::SmoothL1 { beta } => return Err(Error::InvalidArgument { op: OP, msg: format!("smooth L1 beta {beta} must be finite and > 0") }),
    };
    let len = pred.numel();
    let scale = if reduction == Reduction::Mean { 1.0 / len as f32 } else { 1.0 };
    run(OP, pred, target, &LossParams { len: len as u32, kind, beta, scale })
}

/// Negative log-likelihood of `logp` (`[n, c]` or `[n, c, d…]` log-probabilities,
/// e.g. from `softmax_forward(x, 1, true)`) at `labels` (`n·d…` class indices),
/// as PyTorch's `NLLLoss`: each term weighted by `weights[label]`, rows labelled
/// `ignore_index` left out, the mean dividing by the sum of the weights used.
pub fn loss_nll(logp: &Tensor, labels: &[i64], weights: Option<&[f32]>, ignore_index: Option<i64>, reduction: Reduction) -> Result<(Tensor, Tensor)> {
    const OP: &str = "loss_nll";
    let s = logp.shape();
    if s.len() < 2 {
        return crate::error::shape_err(OP, format!("log-probabilities must be [n, c] or [n, c, d…], got {s:?}"));
    }
    let (n, c, inner) = (s[0], s[1], s[2..].iter().product::<usize>());
    if labels.len() != n * inner {
        return crate::error::shape_err(OP, format!("log-probabilities {s:?} need {} labels, got {}", n * inner, labels.len()));
    }
    if let Some(w) = weights {
        if w.len() != c || w.iter().any(|v| !(*v >= 0.0 && v.is_finite())) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("weights need one finite value ≥ 0 per class ({c}), got {} values", w.len()) });
        }
    }
    let mut total = 0f64;
    for (pos, &l) in labels.iter().enumerate() {
        if Some(l) == ignore_index {
            continue;
        }
        if l < 0 || l >= c as i64 {
            return Err(Error::InvalidArgument { op: OP, msg: format!("label {l} at position {pos} is out of range for {c} classes") });
        }
        total += weights.map_or(1.0, |w| w[l as usize]) as f64;
    }
    let scale = if reduction == Reduction::Mean { 1.0 / total.max(f64::MIN_POSITIVE) } else { 1.0 };
    // Weighted one-hot targets: the kernel's term is −goal·logp.
    let mut goal = vec![0f32; logp.numel()];
    for (pos, &l) in labels.iter().enumerate() {
        if Some(l) != ignore_index {
            let (b, i) = (pos / inner, pos % inner);
            goal[(b * c + l as usize) * inner + i] = (weights.map_or(1.0, |w| w[l as usize]) as f64 * scale) as f32;
        }
    }
    let goal = Tensor::from_vec(&logp.device(), s, goal)?;
    let q = LossParams { len: logp.numel() as u32, kind: 3, beta: 0.0, scale: 1.0 };
    run(OP, logp, &goal, &q)
}

fn run(op: &'static str, pred: &Tensor, goal: &Tensor, q: &LossParams) -> Result<(Tensor, Tensor)> {
    match same_device(op, &[pred, goal])? {
        Device::Cpu => {
            let (l, g) = loss_regression_cpu(pred.host(op)?, goal.host(op)?, q);
            Ok((Tensor::from_cpu(&[1], vec![l]), Tensor::from_cpu(pred.shape(), g)))
        }
        Device::Gpu(ctx) => {
            let len = pred.numel();
            let terms = Tensor::uninit_gpu(&ctx, op, pred.shape())?;
            let grad = Tensor::uninit_gpu(&ctx, op, pred.shape())?;
            let out = Tensor::uninit_gpu(&ctx, op, &[1])?;
            ctx.dispatch(&LOSS_REGRESSION, q, &[pred.buffer(op)?, goal.buffer(op)?, terms.buffer(op)?, grad.buffer(op)?], ctx.grid_1d(len, 256))?;
            reduce_rows_gpu(&ctx, terms.buffer(op)?, out.buffer(op)?, 1, len, 0.0)?;
            Ok((out, grad))
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// (loss, gradient) of `pred` against `target` (sums in f64).
pub fn loss_regression_cpu(pred: &[f32], target: &[f32], q: &LossParams) -> (f32, Vec<f32>) {
    let mut total = 0f64;
    let grad = pred
        .iter()
        .zip(target)
        .map(|(&p, &t)| {
            let d = p - t;
            let a = d.abs();
            let (term, g) = match q.kind {
                3 if t != 0.0 => (-t * p, -t),
                3 => (0.0, 0.0),
                0 => (d * d, 2.0 * d),
                1 => (a, sign(d)),
                _ if a >= q.beta => (a - 0.5 * q.beta, sign(d)),
                _ => (0.5 * d * d / q.beta, d / q.beta),
            };
            total += (term * q.scale) as f64;
            g * q.scale
        })
        .collect();
    (total as f32, grad)
}

/// sign(0) = 0, as PyTorch's L1 gradient.
fn sign(d: f32) -> f32 {
    if d > 0.0 {
        1.0
    } else if d < 0.0 {
        -1.0
    } else {
        0.0
    }
}
