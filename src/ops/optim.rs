//! Optimiser updates on the device: SGD (momentum, dampening, Nesterov,
//! weight decay) and Adam / AdamW, with PyTorch's formulas
//! (see `shaders/optim.wgsl`). State tensors live on the parameter's device.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("optim", include_str!("../../shaders/optim.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[ReadWrite, Read, ReadWrite, ReadWrite, Uniform];
pub(crate) static OPTIM_SGD_STEP: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_sgd_step", BINDINGS).with_work(|p| Work::f32s(5 * p.len as usize, 6 * p.len as usize));
pub(crate) static OPTIM_ADAM_STEP: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_adam_step", BINDINGS).with_work(|p| Work::f32s(7 * p.len as usize, 15 * p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&OPTIM_SGD_STEP.def, &OPTIM_ADAM_STEP.def];

/// SGD settings, PyTorch's `torch.optim.SGD`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0: none).
    pub momentum: f32,
    /// Dampening of the momentum update.
    pub dampening: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD at `lr`.
    pub fn new(lr: f32) -> SgdConfig {
        SgdConfig { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }

    /// Checks the settings (finite, in range, Nesterov's requirements).
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        let bad = |msg: String| Err(Error::InvalidArgument { op: "sgd", msg });
        if !(self.momentum >= 0.0) || !(self.weight_decay >= 0.0) || !(0.0..=1.0).contains(&self.dampening) {
            return bad(format!("momentum {} and weight_decay {} must be ≥ 0, dampening {} in [0, 1]", self.momentum, self.weight_decay, self.dampening));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return bad("Nesterov momentum needs momentum > 0 and dampening 0".into());
        }
        Ok(())
    }
}

/// Adam/AdamW settings, PyTorch's `torch.optim.Adam` and `AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f32,
    /// AdamW: decay the weights directly instead of adding wd·p to the gradient.
    pub decoupled: bool,
}

impl AdamConfig {
    /// PyTorch's `Adam` defaults.
    pub fn adam(lr: f32) -> AdamConfig {
        AdamConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
    }

    /// PyTorch's `AdamW` defaults (weight decay 0.01).
    pub fn adamw(lr: f32) -> AdamConfig {
        AdamConfig { weight_decay: 0.01, decoupled: true, ..AdamConfig::adam(lr) }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.lr)?;
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || !(self.eps >= 0.0) || !(self.weight_decay >= 0.0) {
            return Err(Error::InvalidArgument {
                op: "adam",
                msg: format!("betas ({}, {}) must be in [0, 1), eps {} and weight_decay {} ≥ 0", self.beta1, self.beta2, self.eps, self.weight_decay),
            });
        }
        Ok(())
    }
}

fn check_lr(lr: f32) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument { op: "optimizer", msg: format!("learning rate {lr} must be finite and ≥ 0") })
    }
}

/// Matches `OptimParams` in `shaders/optim.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct OptimParams {
    pub len: u32,
    pub flags: u32,
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bc1: f32,
    pub bc2_sqrt: f32,
    pub _pad0: u32,
}

const NESTEROV: u32 = 1;
const FIRST: u32 = 2;
const DECOUPLED: u32 = 4;
const MOMENTUM: u32 = 8;

/// One SGD step in place. `momentum_buf` (same shape as `param`) is needed
/// when `cfg.momentum > 0`; on `first_step` it is initialised to the gradient.
pub fn optim_sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, first_step: bool, cfg: &SgdConfig) -> Result<()> {
    cfg.validate()?;
    check_shape("sgd", "gradient", grad.shape(), param.shape())?;
    same_device("sgd", &[param, grad])?;
    let use_momentum = cfg.momentum > 0.0;
    let mut buf = match (use_momentum, momentum_buf) {
        (true, Some(b)) => {
            check_shape("sgd", "momentum buffer", b.shape(), param.shape())?;
            same_device("sgd", &[param, b])?;
            Some(b)
        }
        (true, None) => return Err(Error::InvalidArgument { op: "sgd", msg: "momentum > 0 needs a momentum buffer".into() }),
        (false, _) => None,
    };
    param.make_unique()?;
    if let Some(b) = buf.as_mut() {
        b.make_unique()?;
    }
    let flags = (cfg.nesterov as u32 * NESTEROV) | (first_step as u32 * FIRST) | (use_momentum as u32 * MOMENTUM);
    let q = OptimParams {
        len: param.numel() as u32,
        flags,
        lr: cfg.lr,
        momentum: cfg.momentum,
        dampening: cfg.dampening,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    const OP: &str = "optim_sgd_step";
    match param.device() {
        Device::Cpu => {
            let b = buf.map(|b| b.host_mut(OP)).transpose()?;
            optim_sgd_step_cpu(param.host_mut(OP)?, grad.host(OP)?, b, &q);
        }
        Device::Gpu(ctx) => {
            let s1 = buf.as_ref().map_or(Ok(ctx.scratch(0)), |b| b.buffer(OP))?;
            ctx.dispatch(&OPTIM_SGD_STEP, &q, &[param.buffer(OP)?, grad.buffer(OP)?, s1, ctx.scratch(1)], ctx.grid_1d(q.len as usize, 256))?;
        }
    }
    Ok(())
}

/// One Adam/AdamW step in place; `step` counts from 1; `m` and `v` start at zero.
pub fn optim_adam_step(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, step: u32, cfg: &AdamConfig) -> Result<()> {
    cfg.validate()?;
    if step == 0 {
        return Err(Error::InvalidArgument { op: "adam", msg: "step counts from 1".into() });
    }
    for (what, t) in [("gradient", grad), ("m", &*m), ("v", &*v)] {
        check_shape("adam", what, t.shape(), param.shape())?;
    }
    same_device("adam", &[param, grad, m, v])?;
    for t in [&mut *param, &mut *m, &mut *v] {
        t.make_unique()?;
    }
    let q = OptimParams {
        len: param.numel() as u32,
        flags: cfg.decoupled as u32 * DECOUPLED,
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        bc1: 1.0 - cfg.beta1.powi(step as i32),
        bc2_sqrt: (1.0 - cfg.beta2.powi(step as i32)).sqrt(),
        ..Default::default()
    };
    const OP: &str = "optim_adam_step";
    match param.device() {
        Device::Cpu => optim_adam_step_cpu(param.host_mut(OP)?, grad.host(OP)?, m.host_mut(OP)?, v.host_mut(OP)?, &q),
        Device::Gpu(ctx) => {
            let bufs = [param.buffer(OP)?, grad.buffer(OP)?, m.buffer(OP)?, v.buffer(OP)?];
            ctx.dispatch(&OPTIM_ADAM_STEP, &q, &bufs, ctx.grid_1d(q.len as usize, 256))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- CPU reference

/// One SGD step on host slices (the spec for the kernel).
pub fn optim_sgd_step_cpu(p: &mut [f32], grad: &[f32], mut buf: Option<&mut [f32]>, q: &OptimParams) {
    for i in 0..p.len() {
        let mut g = grad[i] + q.weight_decay * p[i];
        if let Some(b) = buf.as_deref_mut() {
            b[i] = if q.flags & FIRST != 0 { g } else { q.momentum * b[i] + (1.0 - q.dampening) * g };
            g = if q.flags & NESTEROV != 0 { g + q.momentum * b[i] } else { b[i] };
        }
        p[i] -= q.lr * g;
    }
}

/// One Adam/AdamW step on host slices.
pub fn optim_adam_step_cpu(p: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], q: &OptimParams) {
    for i in 0..p.len() {
        let mut g = grad[i];
        if q.flags & DECOUPLED != 0 {
            p[i] *= 1.0 - q.lr * q.weight_decay;
        } else {
            g += q.weight_decay * p[i];
        }
        m[i] = q.beta1 * m[i] + (1.0 - q.beta1) * g;
        v[i] = q.beta2 * v[i] + (1.0 - q.beta2) * g * g;
        p[i] -= (q.lr / q.bc1) * m[i] / (v[i].sqrt() / q.bc2_sqrt + q.eps);
    }
}
