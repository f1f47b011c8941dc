//! Optimiser updates on the device: SGD (momentum, dampening, Nesterov,
//! weight decay) and Adam / AdamW, with PyTorch's formulas
//! (see `shaders/optim.wgsl`). State tensors live on the parameter's device.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::Bind;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("optim", include_str!("../../shaders/optim.wgsl"));

/// Parameter tensors one dispatch updates (`SLOTS` in `shaders/optim.wgsl`).
pub const OPTIM_SLOTS: usize = 7;

/// Per slot: parameter, gradient, first and second state; then the params.
/// `slots` slots are bound (the rest `Unused`); `second` binds the second state.
const fn bindings(slots: usize, second: bool) -> [crate::kernel::Access; 4 * OPTIM_SLOTS + 1] {
    let mut a = [Unused; 4 * OPTIM_SLOTS + 1];
    let mut s = 0;
    while s < slots {
        a[4 * s] = ReadWrite;
        a[4 * s + 1] = Read;
        a[4 * s + 2] = ReadWrite;
        if second {
            a[4 * s + 3] = ReadWrite;
        }
        s += 1;
    }
    a[4 * OPTIM_SLOTS] = Uniform;
    a
}
fn elements(p: &OptimParams) -> usize {
    p.len.iter().map(|&l| l as usize).sum()
}
fn sgd_work(p: &OptimParams) -> Work {
    Work::f32s(5 * elements(p), 6 * elements(p))
}
fn adam_work(p: &OptimParams) -> Work {
    Work::f32s(7 * elements(p), 15 * elements(p))
}
pub(crate) static OPTIM_SGD_STEP: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_sgd_step", &bindings(OPTIM_SLOTS, false)).with_work(sgd_work);
pub(crate) static OPTIM_ADAM_STEP: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_adam_step", &bindings(OPTIM_SLOTS, true)).with_work(adam_work);
/// Two tensors a dispatch (6 and 8 storage buffers): for adapters that allow
/// fewer storage buffers per stage than the seven-tensor kernels bind (21 and
/// 28), WebGPU's default of 8 among them.
pub(crate) static OPTIM_SGD_STEP_TWO: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_sgd_step_two", &bindings(2, false)).with_work(sgd_work);
pub(crate) static OPTIM_ADAM_STEP_TWO: Kernel<OptimParams> = Kernel::new(&SHADER, "optim_adam_step_two", &bindings(2, true)).with_work(adam_work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&OPTIM_SGD_STEP.def, &OPTIM_ADAM_STEP.def, &OPTIM_SGD_STEP_TWO.def, &OPTIM_ADAM_STEP_TWO.def];

/// Parameter tensors one optimiser dispatch updates on `dev`: [`OPTIM_SLOTS`]
/// where the device allows the storage buffers that takes, else 2 (the CPU
/// path updates them one by one).
pub fn optim_tensors_per_dispatch(dev: &Device, adam: bool) -> usize {
    match dev {
        Device::Cpu => 1,
        Device::Gpu(ctx) => kernel_for(ctx, adam).1,
    }
}

/// The kernel of a rule for this device and the tensors it takes a dispatch:
/// the multi-tensor one where the storage-buffer limit allows it.
fn kernel_for(ctx: &crate::gpu::GpuContext, adam: bool) -> (&'static Kernel<OptimParams>, usize) {
    let (multi, two) = if adam { (&OPTIM_ADAM_STEP, &OPTIM_ADAM_STEP_TWO) } else { (&OPTIM_SGD_STEP, &OPTIM_SGD_STEP_TWO) };
    // Two tensors fit kernel::NEEDS' 8 storage buffers, below which no device opens.
    if ctx.fits(&multi.def) {
        (multi, OPTIM_SLOTS)
    } else {
        (two, 2)
    }
}

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
    pub len: [u32; 8],
    pub first: [u32; 8],
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
    pub _pad1: u32,
}

const NESTEROV: u32 = 1;
const FIRST: u32 = 2;
const DECOUPLED: u32 = 4;
const MOMENTUM: u32 = 8;

/// One parameter tensor's share of an optimiser step: the parameter, its
/// gradient and the optimiser's state for it (SGD: the momentum buffer in
/// `state1`, needed when momentum > 0; Adam: `state1` = m, `state2` = v).
pub struct Slot<'a> {
    /// Updated in place.
    pub param: &'a mut Tensor,
    /// Same shape as `param`.
    pub grad: &'a Tensor,
    /// Momentum buffer (SGD) or first moment (Adam).
    pub state1: Option<&'a mut Tensor>,
    /// Second moment (Adam).
    pub state2: Option<&'a mut Tensor>,
}

/// One SGD step in place. `momentum_buf` (same shape as `param`) is needed
/// when `cfg.momentum > 0`; on `first_step` it is initialised to the gradient.
pub fn optim_sgd_step(param: &mut Tensor, grad: &Tensor, momentum_buf: Option<&mut Tensor>, first_step: bool, cfg: &SgdConfig) -> Result<()> {
    optim_sgd_step_multi(&mut [Slot { param, grad, state1: momentum_buf, state2: None }], first_step, cfg)
}

/// One Adam/AdamW step in place; `step` counts from 1; `m` and `v` start at zero.
pub fn optim_adam_step(param: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor, step: u32, cfg: &AdamConfig) -> Result<()> {
    optim_adam_step_multi(&mut [Slot { param, grad, state1: Some(m), state2: Some(v) }], step, cfg)
}

/// [`optim_sgd_step`] for many tensors at once: on the GPU one dispatch per
/// [`OPTIM_SLOTS`] tensors (multi-tensor apply) instead of one per tensor.
pub fn optim_sgd_step_multi(slots: &mut [Slot<'_>], first_step: bool, cfg: &SgdConfig) -> Result<()> {
    cfg.validate()?;
    let use_momentum = cfg.momentum > 0.0;
    for s in slots.iter() {
        if use_momentum && s.state1.is_none() {
            return Err(Error::InvalidArgument { op: "sgd", msg: "momentum > 0 needs a momentum buffer".into() });
        }
    }
    let flags = (cfg.nesterov as u32 * NESTEROV) | (first_step as u32 * FIRST) | (use_momentum as u32 * MOMENTUM);
    let q = OptimParams { flags, lr: cfg.lr, momentum: cfg.momentum, dampening: cfg.dampening, weight_decay: cfg.weight_decay, ..Default::default() };
    // Without momentum the buffer (if given) is left alone.
    apply(slots, &q, use_momentum, false)
}

/// [`optim_adam_step`] for many tensors at once (see [`optim_sgd_step_multi`]).
pub fn optim_adam_step_multi(slots: &mut [Slot<'_>], step: u32, cfg: &AdamConfig) -> Result<()> {
    cfg.validate()?;
    if step == 0 {
        return Err(Error::InvalidArgument { op: "adam", msg: "step counts from 1".into() });
    }
    for s in slots.iter() {
        if s.state1.is_none() || s.state2.is_none() {
            return Err(Error::InvalidArgument { op: "adam", msg: "Adam needs both moments (m and v) for every parameter".into() });
        }
    }
    let q = OptimParams {
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
    apply(slots, &q, true, true)
}

/// Checks every slot, then runs `kernel`'s rule over them: on the CPU slot by
/// slot (the reference), on the GPU [`OPTIM_SLOTS`] tensors a dispatch.
fn apply(slots: &mut [Slot<'_>], base: &OptimParams, use1: bool, use2: bool) -> Result<()> {
    let op = if use2 { OPTIM_ADAM_STEP.def.name } else { OPTIM_SGD_STEP.def.name };
    let Some(first) = slots.first() else { return Ok(()) };
    let dev = first.param.device();
    for s in slots.iter_mut() {
        check_shape(op, "gradient", s.grad.shape(), s.param.shape())?;
        same_device(op, &[s.param, s.grad])?;
        if !dev.same(&s.param.device()) {
            return Err(Error::DeviceMismatch { op, a: dev.to_string(), b: s.param.device().to_string() });
        }
        s.param.make_unique()?;
        for (t, used) in [(&mut s.state1, use1), (&mut s.state2, use2)] {
            if let (Some(t), true) = (t.as_deref_mut(), used) {
                check_shape(op, "optimiser state", t.shape(), s.param.shape())?;
                same_device(op, &[s.param, t])?;
                t.make_unique()?;
            }
        }
    }
    match dev {
        Device::Cpu => {
            for s in slots.iter_mut() {
                let p = s.param.host_mut(op)?;
                let g = s.grad.host(op)?;
                let s1 = s.state1.as_deref_mut().filter(|_| use1).map(|t| t.host_mut(op)).transpose()?;
                if use2 {
                    let (Some(m), Some(v)) = (s1, s.state2.as_deref_mut()) else {
                        return Err(Error::InvalidArgument { op, msg: "Adam needs both moments (m and v) for every parameter".into() });
                    };
                    optim_adam_step_cpu(p, g, m, v.host_mut(op)?, base);
                } else {
                    optim_sgd_step_cpu(p, g, s1, base);
                }
            }
        }
        Device::Gpu(ctx) => {
            // A tensor larger than one binding is updated in windows, each its own piece.
            let mut pieces: Vec<(usize, [Bind; 4])> = Vec::new();
            for s in slots.iter() {
                let len = s.param.numel();
                let s1 = match &s.state1 { Some(t) if use1 => Some(t.buffer(op)?), _ => None };
                let s2 = match &s.state2 { Some(t) if use2 => Some(t.buffer(op)?), _ => None };
                let (p, g) = (s.param.buffer(op)?, s.grad.buffer(op)?);
                for (start, n) in ctx.binding_windows(len) {
                    let state = [s1, s2].map(|t| t.map_or(Bind::from(ctx.scratch(0)), |b| b.elements(start, n, len)));
                    pieces.push((n, [p.elements(start, n, len), g.elements(start, n, len), state[0], state[1]]));
                }
            }
            let (kernel, per_dispatch) = kernel_for(&ctx, use2);
            for chunk in pieces.chunks(per_dispatch) {
                let mut q = *base;
                let groups;
                (q.first, q.len, groups) = slot_layout(chunk.iter().map(|(n, _)| *n), OPTIM_SLOTS);
                let mut bufs: Vec<Bind> = Vec::with_capacity(4 * OPTIM_SLOTS);
                for k in 0..OPTIM_SLOTS {
                    match chunk.get(k) {
                        Some((_, binds)) => bufs.extend(binds),
                        // Unused: writable slots share one scratch buffer, the read-only one the other.
                        None => bufs.extend([ctx.scratch(0), ctx.scratch(1), ctx.scratch(0), ctx.scratch(0)].map(Bind::from)),
                    }
                }
                ctx.dispatch(kernel, &q, &bufs, ctx.grid_1d(groups as usize * 256, 256))?;
            }
        }
    }
    Ok(())
}

/// The flat workgroup layout of a multi-tensor dispatch (workgroups of 256,
/// the tensors' lengths in slot order): slot k owns workgroups
/// `[first[k], first[k + 1])` and `len[k]` elements (0 when unused);
/// `first[slots]` is the total, also returned.
pub(crate) fn slot_layout(lens: impl Iterator<Item = usize>, slots: usize) -> ([u32; 8], [u32; 8], u32) {
    let (mut first, mut len, mut groups) = ([0u32; 8], [0u32; 8], 0u32);
    let mut lens = lens.take(slots);
    for k in 0..slots {
        first[k] = groups;
        if let Some(n) = lens.next() {
            len[k] = n as u32;
            groups += n.div_ceil(256) as u32;
        }
    }
    first[slots] = groups;
    (first, len, groups)
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
