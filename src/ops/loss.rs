//! Regression losses (PyTorch's `MSELoss`, `L1Loss`, `SmoothL1Loss`), mean- or
//! sum-reduced, each returning the loss as a `[1]` tensor on the device and
//! its gradient with respect to the prediction. Cross-entropy is in `softmax_xent`.

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

/// How the per-element terms become one loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    #[default]
    Mean,
    Sum,
}

/// Which regression loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RegressionLoss {
    /// (p − t)²
    Mse,
    /// |p − t|
    L1,
    /// 0.5 (p − t)² / β where |p − t| < β, else |p − t| − 0.5 β (PyTorch's default β = 1).
    SmoothL1 { beta: f32 },
}

/// Matches `LossParams` in `shaders/loss.wgsl`.
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
    let q = LossParams { len: len as u32, kind, beta, scale };
    match same_device(OP, &[pred, target])? {
        Device::Cpu => {
            let (l, g) = loss_regression_cpu(pred.host(OP)?, target.host(OP)?, &q);
            Ok((Tensor::from_cpu(&[1], vec![l]), Tensor::from_cpu(pred.shape(), g)))
        }
        Device::Gpu(ctx) => {
            let terms = Tensor::uninit_gpu(&ctx, OP, pred.shape())?;
            let grad = Tensor::uninit_gpu(&ctx, OP, pred.shape())?;
            let out = Tensor::uninit_gpu(&ctx, OP, &[1])?;
            ctx.dispatch(&LOSS_REGRESSION, &q, &[pred.buffer(OP)?, target.buffer(OP)?, terms.buffer(OP)?, grad.buffer(OP)?], ctx.grid_1d(len, 256))?;
            reduce_rows_gpu(&ctx, terms.buffer(OP)?, out.buffer(OP)?, 1, len, 0.0)?;
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
